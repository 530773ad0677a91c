"""The article store: one interface, the stored document's shape, and the errors.

Two implementations plug in behind :class:`IArticleStore`: SQLite (the
embedded default) and Cloud Firestore.  Both keep the same document shape and
the same promises, so a pipeline never knows which one it talks to:

* ``put`` is idempotent: an article id is stored at most once, and its entity
  counters are applied at most once, however often and however concurrently
  it is posted.  The Deferred says whether this call created it.
* ``replace`` overwrites an article stored with another model (a model upgrade
  re-extracts it).  Its Deferred says ``"created"`` (the id was not stored: as
  ``put``), ``"unchanged"`` (the stored document's ``model`` has the new one's
  name and version: nothing is written) or ``"replaced"``: in one transaction,
  the document takes the new fields (keeping its ``ingested_at``), the old
  document's entity tally is taken off its source's counters and the new one
  added to the new source's.  So concurrent re-posts of one id, in one process
  or several, change the counters once; a failed replace changes nothing.  A
  counter that falls to 0 is no longer listed by ``entity_counters``.
* Every ``put`` and ``replace`` ends: its Deferred fires or fails with a
  :class:`StoreError`.  Nothing is dropped without a report.
* Documents returned by ``get``/``recent`` are JSON-able; timestamps are
  ISO 8601 UTC strings ending in ``Z``.
* No call blocks the reactor thread: each store runs its client on its own
  thread pool, started and stopped with the service.

Huge bodies are refused, not split: a document whose Firestore storage size
(see :func:`document_size`) exceeds ``max_document_bytes`` (default: Firestore's
1 MiB) fails with :class:`DocumentTooLarge` before anything is sent, in both
stores, so that the HTTP layer can answer 413 and dev behaves like prod.  Likewise
an article with more than ``MAX_DISTINCT_ENTITIES`` distinct entities fails with
:class:`TooManyEntities` (422) in both stores, whether or not they count entities.

Entity counters key an entity by its text and label (:func:`entity_tally`), in
every store alike; a text longer than ``MAX_COUNTED_TEXT_BYTES`` (a label longer
than ``MAX_COUNTED_LABEL_BYTES``) is counted under its beginning followed by
``…``, because Firestore keeps the counts in map fields and a field path may
not exceed 1,500 bytes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute

from pipedingest.article import MAX_DISTINCT_ENTITIES, ArticleError, check_document
from pipedingest.idle import WhenIdle
from pipedingest.metrics import COMMIT_BUCKETS, count, counts, gauge, histogram, reported

#: Firestore's limit on one document, the default limit for every store.
MAX_DOCUMENT_BYTES = 1_048_576
#: Entity texts and labels are counted under at most this many UTF-8 bytes, so that the
#: Firestore field path of a count (``counts``, text, label, each quoted and escaped)
#: stays within the 1,500 bytes Firestore allows.
MAX_COUNTED_TEXT_BYTES = 512
MAX_COUNTED_LABEL_BYTES = 128
#: How writes end, as ``state()`` counts them: ``put`` creates or finds the id stored,
#: ``replace`` creates, replaces or finds the same model.
WRITE_OUTCOMES = ("created", "existing", "replaced", "unchanged")


class StoreError(Exception):
    """An article could not be stored or read; ``article_id`` says which (or None)."""

    def __init__(self, message: str, article_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.article_id = article_id


class PermanentStoreError(StoreError):
    """The store refused this article; sending it again unchanged will fail again."""


class InvalidArticle(PermanentStoreError):
    """The article dict does not have the shape the store keeps (bad id, unknown keys)."""


class DocumentTooLarge(PermanentStoreError):
    """The document would exceed the per-document limit (Firestore: 1 MiB); answer 413."""

    def __init__(self, article_id: str, size: int, limit: int):
        super().__init__(
            f"article {article_id!r} would be a {size}-byte document, over the "
            f"{limit}-byte limit; shorten its body", article_id)
        self.size = size
        self.limit = limit


class TooManyEntities(PermanentStoreError):
    """The article has more distinct entities than ``MAX_DISTINCT_ENTITIES``; answer 422."""

    def __init__(self, article_id: str, count: int, limit: int = MAX_DISTINCT_ENTITIES):
        super().__init__(
            f"article {article_id!r} has {count} distinct entities (text and label); "
            f"the limit is {limit}", article_id)
        self.count = count
        self.limit = limit


class QueryUnsupported(PermanentStoreError):
    """This store cannot answer that query (yet): HTTP 501."""


class IndexMissing(QueryUnsupported):
    """The database lacks the index this query needs (Firestore's composite indexes): HTTP 501, naming it.

    Not a server fault to retry: the query fails until an operator deploys the index, so the error says
    which one (*collection*, *fields* in order, ``__name__`` included) and carries Firestore's *link* to create
    it, when Firestore gave one.
    """

    def __init__(self, message: str, collection: str | None, fields: list[str], link: str | None = None):
        super().__init__(message)
        self.collection = collection
        self.fields = fields
        self.link = link


class StoreUnavailable(StoreError):
    """The store is not running, or kept failing transiently past the retry deadline; try later (503)."""


class IArticleStore(IService):
    """Keeps processed articles, once each, and reads them back."""

    kind = Attribute("A short name of the implementation: 'sqlite' or 'firestore'.")

    def put(article):
        """Store *article*; Deferred[bool]: True if created now, False if that id was already stored."""

    def replace(document):
        """Store *document* (checked as by ``put``) over the stored one unless that has the same model
        (name and version); Deferred[str]: ``"created"``, ``"replaced"`` or ``"unchanged"``."""

    def get(article_id):
        """Deferred[dict | None]: the stored document with its ``id``, or None."""

    def recent(source=None, limit=20):
        """Deferred[list[dict]]: the latest stored documents (by ``ingested_at``), newest first."""

    def query(key="", source=None, since=None, until=None, limit=20, after=None):
        """Deferred[(documents, last)]: the articles found by entity *key* (``pipedingest.article.entity_key``;
        "" for every article), of *source*, sorting at or after *since* and before *until* (fixed-width UTC
        text), newest first by ``published_at`` else ``ingested_at``, then by id; at most *limit*, after the
        ``(sort_at, id)`` *after*. *last* is the ``(sort_at, id)`` to go on from, None on the last page."""

    def top_entities(source, since, until, label=None, limit=50):
        """Deferred[dict]: ``{"entities": [{"key": "apple|ORG", "count": n}, ...], "as_of": text or None}``: the
        labelled keys (``"text|LABEL"``) of *source* with the most articles in the day buckets from *since* (a
        day ``"YYYY-MM-DD"``, inclusive) to *until* (exclusive), most first then key ascending, at most *limit*;
        *label* keeps that label only. ``as_of``: the moment up to which the counts are complete (None: exact,
        counted in the write's own transaction, as SQLite does; Firestore rolls buckets up on a tick and says
        how far).

        A day bucket ``(source, day, key)`` counts the articles of *source* whose sort time (``published_at``,
        else ``ingested_at``) falls on that UTC day and whose ``entity_keys`` hold *key*: once per article id,
        however often it names the entity; ``replace`` moves an article's counts with it. A store that keeps no
        entity counters fails with :class:`QueryUnsupported`."""

    def timeline(key, source=None, since=None, until=None):
        """Deferred[dict]: ``{"days": {"YYYY-MM-DD": n, ...}, "as_of": ...}`` (days with n > 0 only): the
        articles mentioning *key* (either form: ``apple`` or ``apple|ORG``) per UTC day from *since* (inclusive)
        to *until* (exclusive), of *source*, or of every source when None; ``as_of`` as for
        :meth:`top_entities`."""

    def entity_counters(source):
        """Deferred[dict]: ``{entity text: {"count": n, "labels": {label: n}}}`` for *source*."""

    def state():
        """A JSON-able dict for /status: queued, in_flight, commits, retries, errors, threads."""


def article_fields(article: Any) -> dict:
    """The stored fields of *article* (without ``id``), or :class:`InvalidArticle` (see ``check_document``)."""
    try:
        return check_document(article)
    except ArticleError as error:
        article_id = article.get("id") if isinstance(article, dict) and isinstance(article.get("id"), str) else None
        raise InvalidArticle(error.message, article_id) from None


def entity_tally(entities) -> dict[str, dict[str, int]]:
    """Occurrences per entity text and label: ``{text: {label: n}}``, for the counters.

    Texts and labels are clipped (:func:`counted_as`) so that every store counts alike.
    """
    tally: dict[str, dict[str, int]] = {}
    for entity in entities or ():
        text = entity.get("text") if isinstance(entity, dict) else None
        label = entity.get("label") if isinstance(entity, dict) else None
        if not isinstance(text, str) or not text or not isinstance(label, str) or not label:
            raise InvalidArticle(f"an entity needs a non-empty 'text' and 'label' to be counted: {entity!r:.100}")
        labels = tally.setdefault(counted_as(text, MAX_COUNTED_TEXT_BYTES), {})
        label = counted_as(label, MAX_COUNTED_LABEL_BYTES)
        labels[label] = labels.get(label, 0) + 1
    return tally


def model_of(document: dict) -> tuple | None:
    """What ``replace`` compares: the name and version of the document's ``model``, or None."""
    model = document.get("model")
    return (model.get("name"), model.get("version")) if isinstance(model, dict) else None


def counter_changes(old_source: str, old_tally: dict, new_source: str, new_tally: dict) -> dict:
    """What replacing a document changes in the entity counters: ``{source: {text: {label: n}}}``.

    The old tally is taken from the old source, the new one added to the new source;
    counts that cancel out (same source, text and label) are left out.
    """
    changes: dict[str, dict[str, dict[str, int]]] = {}
    for source, tally, sign in ((old_source, old_tally, -1), (new_source, new_tally, 1)):
        for text, labels in tally.items():
            for label, n in labels.items():
                counts = changes.setdefault(source, {}).setdefault(text, {})
                counts[label] = counts.get(label, 0) + sign * n
    for source, tally in list(changes.items()):
        for text, labels in list(tally.items()):
            for label in [label for label, n in labels.items() if n == 0]:
                del labels[label]
            if not labels:
                del tally[text]
        if not tally:
            del changes[source]
    return changes


def counted_as(text: str, limit: int) -> str:
    """*text*, or when longer than *limit* UTF-8 bytes its beginning (whole characters) and ``…``."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit - 3].decode("utf-8", "ignore") + "…"


def distinct_entities(entities) -> int:
    """How many distinct entities (text and label) *entities* holds; a malformed one counts alone."""
    if not isinstance(entities, (list, tuple)):
        return 0
    seen = set()
    for position, entity in enumerate(entities):
        text = entity.get("text") if isinstance(entity, dict) else None
        label = entity.get("label") if isinstance(entity, dict) else None
        seen.add((text, label) if isinstance(text, str) and isinstance(label, str) else (position,))
    return len(seen)


def value_size(value: Any) -> int:
    """Firestore's storage size of one value (https://firebase.google.com/docs/firestore/storage-size)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, datetime)):
        return 8
    if isinstance(value, str):
        return len(value.encode("utf-8")) + 1
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k).encode("utf-8")) + 1 + value_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(value_size(v) for v in value)
    raise InvalidArticle(f"a value of type {type(value).__name__} cannot be stored: {value!r:.60}")


def document_size(collection: str, article_id: str, fields: dict) -> int:
    """Firestore's storage size of the article's document, ``ingested_at`` included.

    This is the measure the 1 MiB limit applies to; both stores use it so that an
    article accepted in development is accepted in production.
    """
    name = len(collection.encode("utf-8")) + 1 + len(article_id.encode("utf-8")) + 1 + 16
    ingested_at = len("ingested_at") + 1 + 8
    return name + value_size(fields) + ingested_at + 32


def iso_utc(moment: datetime) -> str:
    """``2025-01-31T12:00:00.123456Z``: sortable as text, and what the JSON API shows."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """*value* with every timestamp turned into an ISO 8601 UTC string."""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def check_limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be an integer from 1 to 1000, not {limit!r}")
    return limit


class ThreadedStore(Service):
    """A service that runs a blocking client on its own sized thread pool.

    The pool starts with the service.  ``stopService`` first lets subclasses flush
    (:meth:`flush`), then waits for every call still in a thread, and only then
    stops the pool, so joining its threads never blocks the reactor for long.

    :meth:`put` and :meth:`replace` do what every store does before writing: check
    the document's shape, size and number of entities (:class:`InvalidArticle`,
    :class:`DocumentTooLarge`, :class:`TooManyEntities`, counted as errors), tally
    its entities when the store counts them, and refuse work while not running;
    subclasses :meth:`prepare` the write (more checks of their own), then
    :meth:`write` or :meth:`rewrite` it.
    """

    kind = "store"
    #: Where documents go (the SQLite table, the Firestore collection): part of a document's size.
    container = ""
    #: Whether the store keeps per-source entity counters (set by the subclass).
    entity_counters_enabled = False

    def __init__(self, threads: int, reactor=None, clock=None, max_document_bytes: int = MAX_DOCUMENT_BYTES):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._threads = threads
        self.max_document_bytes = max_document_bytes
        self._pool = self._new_pool()
        self._busy = 0
        self._idle = WhenIdle(lambda: not self._busy)
        self._stats = {"errors": 0}
        self._commit_seconds = histogram("pipedingest_store_commit_seconds",
                                         "Seconds one commit took, from being handed to the store's threads to "
                                         "its outcome", buckets=COMMIT_BUCKETS)

    def _new_pool(self) -> ThreadPool:
        return ThreadPool(minthreads=1, maxthreads=self._threads, name=f"store-{self.kind}")

    def startService(self):
        super().startService()
        if self._pool.joined:  # a stopped pool cannot take work again
            self._pool = self._new_pool()
        self._pool.start()

    def stopService(self):
        super().stopService()
        done = self.flush()
        done.addCallback(lambda _: self._idle.wait())
        done.addCallback(lambda _: self.closing())
        done.addBoth(self._stop_pool)
        return done

    def flush(self) -> Deferred:
        """Deferred that fires when every accepted write has been settled."""
        return succeed(None)

    def closing(self) -> Deferred | None:
        """Last work on the pool before it stops (closing a connection)."""
        return None

    def _stop_pool(self, result):
        if self._pool.started:
            self._pool.stop()
        return result

    # -- writes ----------------------------------------------------------------------------------------

    def put(self, article) -> Deferred:
        """Store *article*; Deferred[bool]: True if created now, False if that id was already stored."""
        return self._checked(article, self.write)

    def replace(self, document) -> Deferred:
        """Store *document* over a stored one of another model; Deferred[str]: ``"created"``,
        ``"replaced"`` or ``"unchanged"`` (see the module docstring)."""
        return self._checked(document, self.rewrite)

    def _checked(self, article, write) -> Deferred:
        """Check and :meth:`prepare` *article*, then hand it to *write* (:meth:`write` or :meth:`rewrite`)."""
        try:
            fields = article_fields(article)
            article_id = article["id"]
            size = document_size(self.container, article_id, fields)
            if size > self.max_document_bytes:
                raise DocumentTooLarge(article_id, size, self.max_document_bytes)
            distinct = distinct_entities(fields.get("entities"))
            if distinct > MAX_DISTINCT_ENTITIES:
                raise TooManyEntities(article_id, distinct)
            tally = entity_tally(fields.get("entities")) if self.entity_counters_enabled else {}
            prepared = self.prepare(article_id, fields, tally)
        except StoreError:
            self._stats["errors"] += 1
            return fail()
        if not self.running:
            return fail(StoreUnavailable(f"the {self.kind} store is not running", article_id))
        return write(prepared)

    def query(self, key="", source=None, since=None, until=None, limit=20, after=None) -> Deferred:
        """See :meth:`IArticleStore.query`; a store that cannot answer it fails with :class:`QueryUnsupported`."""
        return fail(QueryUnsupported(f"the {self.kind} store cannot find articles by entity yet"))

    def top_entities(self, source, since, until, label=None, limit=50) -> Deferred:
        """See :meth:`IArticleStore.top_entities`; here it fails with :meth:`counts_unsupported`."""
        return fail(self.counts_unsupported())

    def timeline(self, key, source=None, since=None, until=None) -> Deferred:
        """See :meth:`IArticleStore.timeline`; here it fails with :meth:`counts_unsupported`."""
        return fail(self.counts_unsupported())

    def counts_unsupported(self) -> QueryUnsupported:
        """Why this store cannot answer :meth:`top_entities` and :meth:`timeline`: it keeps no entity
        counters (the fix is the operator's), or it cannot read them per day yet."""
        name = self.name.partition(".")[2] if self.name else self.kind
        if not self.entity_counters_enabled:
            return QueryUnsupported(f"the store {name!r} keeps no entity counts: set entity_counters: true "
                                    f"under stores: {name} to count entities per day")
        return QueryUnsupported(f"the {self.kind} store {name!r} cannot count entities per day yet")

    def prepare(self, article_id: str, fields: dict, tally: dict[str, dict[str, int]]):
        """What :meth:`write` needs for one checked document and its :func:`entity_tally`
        (empty when the store keeps no counters); raise a :class:`StoreError` to refuse it."""
        raise NotImplementedError

    def write(self, prepared) -> Deferred:
        """Write what :meth:`prepare` made; Deferred[bool] as for :meth:`put`."""
        raise NotImplementedError

    def rewrite(self, prepared) -> Deferred:
        """Replace with what :meth:`prepare` made; Deferred[str] as for :meth:`replace`."""
        raise NotImplementedError

    # -- the thread pool ------------------------------------------------------------------------------

    def in_thread(self, function, *args, **kwargs) -> Deferred:
        """Run *function* on this store's pool; the Deferred fires on the reactor thread."""
        if not self._pool.started:
            return fail(StoreUnavailable(f"the {self.kind} store is not running"))
        self._busy += 1

        def settled(result):
            self._busy -= 1
            self._idle.check()
            return result

        call = deferToThreadPool(self._reactor, self._pool, function, *args, **kwargs)
        return call.addBoth(settled)

    def commit_took(self, result, started: float):
        """Record the duration of a commit that began at *started* (a callback: passes *result* on)."""
        self._commit_seconds.observe(max(0.0, self._clock.seconds() - started))
        return result

    def calls_state(self) -> dict:
        """Calls waiting for a thread, and calls running in one."""
        working = len(self._pool.working)
        return {"queued": max(0, self._busy - working), "in_flight": working}

    def thread_state(self) -> dict:
        return {"size": self._pool.max, "busy": len(self._pool.working)}

    def metrics(self) -> list:
        """For /metrics: what waits now, the counts ``state()`` keeps, and how long commits take."""
        state = self.state()
        name = self.name.partition(".")[2] if self.name else self.kind
        labels = {"store": name, "kind": self.kind}
        return [
            gauge("pipedingest_store_queued", "Work waiting: Firestore writes not yet in a commit, SQLite calls "
                  "waiting for its thread", state["queued"], **labels),
            gauge("pipedingest_store_in_flight", "Writes (SQLite: calls) being carried out", state["in_flight"],
                  **labels),
            counts("pipedingest_store_writes", "Articles written: created, found already stored (put), "
                   "replaced, or found with the same model (replace)",
                   [*labels, "outcome"], [((name, self.kind, outcome), state.get(outcome, 0))
                                          for outcome in WRITE_OUTCOMES]),
            count("pipedingest_store_commits", "Commits (transactions, batches) that succeeded",
                  state.get("commits", 0), **labels),
            count("pipedingest_store_retries", "Commits retried after a transient error", state.get("retries", 0),
                  **labels),
            count("pipedingest_store_failures", "Articles not stored: refused, or failed for good",
                  state.get("errors", 0), **labels),
            *reported((self._commit_seconds,), **labels),
        ]
