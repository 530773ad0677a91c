"""``stores:``: named article stores, SQLite (embedded) or Cloud Firestore.

::

    stores:
      articles:                        # registered as store.articles
        kind: sqlite                   # or: firestore
        path: var/articles.sqlite      # sqlite: the database file (its folder is created at start)
        table: articles
        entity_counters: true          # per-source entity counts, applied once per article id
      statustests:                     # a store kept for the status tests
        kind: sqlite
        path: var/articles.sqlite
        table: statustest_articles

Firestore takes ``project`` (default ``$GOOGLE_CLOUD_PROJECT``, else the project of the
Application Default Credentials, found when the store starts), ``database`` (default
``(default)``), ``collection``,
``entity_counters``, ``counters_collection``, ``counter_shards``, ``counter_subshards``,
``max_field_transforms``, ``rollup_interval``, ``threads``, ``batch_window``,
``max_batch_writes``, ``max_batch_bytes``, ``max_concurrent_commits``,
``rpc_timeout``, ``retry_initial``, ``retry_maximum``, ``retry_deadline`` and
``max_document_bytes``; it honours ``FIRESTORE_EMULATOR_HOST``.
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, type_name
from pipedingest.providers.base import IProvider, Provider

KIND = Option(str, doc="sqlite or firestore", choices=("sqlite", "firestore"))
MAX_DOCUMENT = Option(int, 1_048_576, "larger documents are refused (413); Firestore's limit is 1 MiB", minimum=1)
#: What Firestore accepts as a collection id.
COLLECTION_ID = (r"(?!\.\.?$)(?!__.*__$)[^/\x00]{1,1500}", "a collection id (no '/', not '.', '..' or __x__)")
#: What Firestore accepts as a database id (the store checks the same: ``store.firestore.DATABASE_ID``).
DATABASE_ID = (r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]",
               "'(default)' or a database id (4 to 63 lowercase letters, digits and hyphens, starting with a letter)")
KINDS = {
    "sqlite": {
        "kind": KIND,
        "path": Option(str, doc="the database file", pattern=(r"[^\x00]+", "a file path")),
        "table": Option(str, "articles", "the articles table",
                        pattern=(r"[A-Za-z_][A-Za-z0-9_]*", "a plain SQL identifier (letters, digits, _)")),
        "entity_counters": Option(bool, False, "keep per-source entity counts"),
        "max_document_bytes": MAX_DOCUMENT,
    },
    "firestore": {
        "kind": KIND,
        "project": Option((str, type(None)), None, "the Google Cloud project (default $GOOGLE_CLOUD_PROJECT, "
                           "else the project of the Application Default Credentials)"),
        "database": Option(str, "(default)", "the Firestore database: (default) or a named database",
                           pattern=DATABASE_ID),
        "collection": Option(str, "articles", "the articles collection", pattern=COLLECTION_ID),
        "entity_counters": Option(bool, False, "keep per-source entity counters (sharded documents)"),
        "counters_collection": Option(str, "sources", "the counters' top collection", pattern=COLLECTION_ID),
        "counter_shards": Option(int, 64, "shards an entity text is hashed among (raise it for capacity)",
                                 minimum=1, maximum=1024),
        "counter_subshards": Option(int, 8, "documents per shard that commits pick among (write rate)",
                                    minimum=1, maximum=64),
        "max_field_transforms": Option(int, 500, "increments on one document per commit (Firestore: 500)",
                                       minimum=2, maximum=500),
        "rollup_interval": Option(float, 10.0, "seconds between roll-ups of the day buckets (entity counts per "
                                  "day are complete to the last one)", above=0),
        "threads": Option(int, 4, "the store's own thread pool size", minimum=1),
        "batch_window": Option(float, 0.05, "seconds a write waits for others to share its commit", minimum=0),
        "max_batch_writes": Option(int, 500, "writes per commit (at most 500)", minimum=1, maximum=500),
        "max_batch_bytes": Option(int, 3_932_160, "request bytes per commit (the emulator caps 4 MiB)",
                                  minimum=1),
        "max_concurrent_commits": Option(int, 2, "commits in flight at once", minimum=1),
        "rpc_timeout": Option(float, 30.0, "seconds one call may take", above=0),
        "retry_initial": Option(float, 0.1, "first backoff delay (seconds)", above=0),
        "retry_maximum": Option(float, 5.0, "largest backoff delay", above=0),
        "retry_deadline": Option(float, 60.0, "give up on transient errors after this long (503)", above=0),
        "max_document_bytes": MAX_DOCUMENT,
    },
}


@implementer(IPlugin, IProvider)
class StoresProvider(Provider):
    section = "stores"
    order = 15
    entry_kind = "store"
    example = "stores: {articles: {kind: sqlite, path: var/articles.sqlite}}"
    resource_prefix = "store."

    def options_of_entry(self, name, spec, where, runtime):
        """The options of the store's kind; None (after reporting why) when it has no valid kind."""
        if not isinstance(spec, dict):
            runtime.errors.add(f"store {name!r} must be a mapping, not {type_name(spec)}", where,
                               f"for example: {self.example}")
            return None
        if "kind" not in spec:
            runtime.errors.add(f"store {name!r} needs the option 'kind'", where, KIND.doc)
            return None
        problem = KIND.problem(spec["kind"])
        if problem:
            runtime.errors.add(f"option 'kind' of store {name!r} {problem[0]}", spec.where_of("kind"), problem[1])
            return None
        return KINDS[spec["kind"]]

    def configure_entry(self, name, settings, spec, where, runtime) -> None:
        kind = settings.pop("kind")
        built_from = dict(settings, kind=kind)
        store = self._build(kind, settings, runtime, where)
        if store is not None:
            store.setName(f"store.{name}")
            runtime.register(f"store.{name}", store, where, settings=built_from)

    @staticmethod
    def _build(kind, settings, runtime, where):
        try:
            if kind == "sqlite":
                from pipedingest.store.sqlite import SQLiteStore

                return SQLiteStore(reactor=runtime.reactor, clock=runtime.clock, **settings)
            from pipedingest.store.firestore import FirestoreStore

            return FirestoreStore(reactor=runtime.reactor, clock=runtime.clock, **settings)
        except ValueError as exc:
            runtime.errors.add(str(exc), where)
            return None


provider = StoresProvider()
