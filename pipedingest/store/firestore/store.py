"""The Firestore store service: its settings, its start and stop, and its reads.

Every client call runs on the store's own sized thread pool (never the reactor
thread, never the reactor's default pool); the client itself is created there
(``client.py``), because finding credentials may block.  The project and the
credentials are found when the store starts; a store that cannot name a project
does not start.  Credentials that fail are watched by ``access.py``; puts go
through ``commits.py``, replaces through ``replace.py``, counters are kept as
``counters.py`` says.

**Reads** (``get``, ``recent``, ``query``, ``entity_counters``) make one attempt; a
transient failure is a :class:`StoreUnavailable` the caller may retry.  ``recent`` with
a ``source`` needs a composite index in production: ``source`` ascending,
``ingested_at`` descending, on the collection.  Documents committed together share
their server timestamp; ``recent`` then orders them by id.  ``query`` (articles by
entity) is ``queries.py``'s, with the indexes it needs; once open, the store gives
``sort_at`` to the articles stored before it existed, in the background
(``backfill.py``), so that queries find them.  With ``entity_counters``, commits also
count each article's keys in day buckets, which a tick rolls up every ``rollup_interval``
seconds for ``top_entities`` and ``timeline`` (``days.py``); ``state()["reads"]`` counts
the documents those two read.
"""
from __future__ import annotations

import math
import os
import random as _random
import re
import threading
from datetime import date, datetime, timezone

from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from twisted.application.service import Service
from twisted.internet.defer import fail
from twisted.logger import Logger
from zope.interface import implementer

from pipedingest.article import MAX_DISTINCT_ENTITIES
from pipedingest.dates import days_between
from pipedingest.idle import WhenIdle
from pipedingest.store.base import (
    MAX_DOCUMENT_BYTES,
    IArticleStore,
    PermanentStoreError,
    StoreError,
    StoreUnavailable,
    ThreadedStore,
    check_limit,
    iso_utc,
)
from pipedingest.store.firestore import queries
from pipedingest.store.firestore.access import ACCESS_CHECK_ID, AccessWatch
from pipedingest.store.firestore.backfill import SortBackfill, Walk
from pipedingest.store.firestore.backoff import Backoff
from pipedingest.store.firestore.client import (
    DATABASE_ID,
    DEFAULT_DATABASE,
    create_client,
    describe,
    is_transient,
    on_emulator,
)
from pipedingest.store.firestore.commits import BatchWriter, Commits
from pipedingest.store.firestore.counters import MAX_FIELD_TRANSFORMS, CounterShards
from pipedingest.store.firestore.days import DayCounts, DayRollup
from pipedingest.store.firestore.documents import DAYS_COUNTED_FIELD, SORT_FIELD, Pending, stored
from pipedingest.store.firestore.replace import Replacer, Replaces, Turns

log = Logger()


@implementer(IArticleStore)
class FirestoreStore(ThreadedStore):
    """Articles in a Firestore collection, document id = article id.

    :param project: the Google Cloud project; default ``$GOOGLE_CLOUD_PROJECT``, else
        the project of the Application Default Credentials (found at start).
    :param database: the Firestore database id: ``(default)`` or a named database.
    :param collection: the articles' collection.
    :param entity_counters: keep per-source entity counters in shard documents (see
        ``counters.py``), applied in the commit that creates the article.
    :param counters_collection: the top collection of the counters (``sources``).
    :param counter_shards: S, the shards an entity text is hashed among (capacity).
    :param counter_subshards: R, the documents of one shard that commits pick among (write rate).
    :param max_field_transforms: increments on one document per commit (Firestore: 500).
    :param threads: the size of the store's thread pool.
    :param batch_window: seconds a put may wait for others to share its commit.
    :param max_batch_writes: writes per commit (Firestore: 500); with counters, enough for
        an article with ``MAX_DISTINCT_ENTITIES`` entities: 1 + S + that / ``max_field_transforms``.
    :param max_batch_bytes: estimated request bytes per commit (the emulator caps 4 MiB).
    :param max_concurrent_commits: commits in flight at once (keep below ``threads``
        so reads still find a thread).
    :param rpc_timeout: seconds one call to Firestore may take.
    :param retry_initial, retry_maximum, retry_deadline: backoff of transient failures:
        the first delay, the largest, and the total time before giving up.
    :param max_document_bytes: refuse larger documents with :class:`DocumentTooLarge`.
    :param clock: IReactorTime for the batch window, the backoff and the access rechecks.
    :param random: a ``random.Random`` for the jitter.
    """

    kind = "firestore"

    def __init__(self, project: str | None = None, database: str = DEFAULT_DATABASE,
                 collection: str = "articles",
                 entity_counters: bool = False, counters_collection: str = "sources",
                 counter_shards: int = 64, counter_subshards: int = 8,
                 max_field_transforms: int = MAX_FIELD_TRANSFORMS, threads: int = 4,
                 batch_window: float = 0.05, max_batch_writes: int = 500,
                 max_batch_bytes: int = 3_932_160, max_concurrent_commits: int = 2,
                 rpc_timeout: float = 30.0, retry_initial: float = 0.1, retry_maximum: float = 5.0,
                 retry_deadline: float = 60.0, max_document_bytes: int = MAX_DOCUMENT_BYTES,
                 rollup_interval: float = 10.0,
                 reactor=None, clock=None, random: _random.Random | None = None):
        if max_concurrent_commits < 1 or threads < 1:
            raise ValueError("threads and max_concurrent_commits must be at least 1")
        if not 1 <= max_batch_writes <= 500:
            raise ValueError(f"max_batch_writes must be from 1 to 500, not {max_batch_writes}")
        if not collection or "/" in collection:
            raise ValueError(f"collection must be a collection id without '/', not {collection!r}")
        if not re.fullmatch(DATABASE_ID, database):
            raise ValueError(f"database must be '(default)' or a database id (4 to 63 lowercase letters, "
                             f"digits and hyphens, starting with a letter), not {database!r}")
        if counter_shards < 1 or counter_subshards < 1:
            raise ValueError("counter_shards and counter_subshards must be at least 1")
        if not 1 <= max_field_transforms <= MAX_FIELD_TRANSFORMS:
            raise ValueError(f"max_field_transforms must be from 1 to {MAX_FIELD_TRANSFORMS}, "
                             f"not {max_field_transforms}")
        if entity_counters and max_field_transforms < 2:
            raise ValueError("max_field_transforms must be at least 2 with entity counters (a day bucket's "
                             "updated_at takes one)")
        # the article, its entity shards, and its keys (each entity alone and with its label) in a day bucket
        most = (1 + counter_shards + math.ceil(MAX_DISTINCT_ENTITIES / max_field_transforms)
                + math.ceil(2 * MAX_DISTINCT_ENTITIES / max(1, max_field_transforms - 1)))
        if entity_counters and most > max_batch_writes:
            raise ValueError(
                f"max_batch_writes={max_batch_writes} is too small for the entity counters: an article "
                f"with {MAX_DISTINCT_ENTITIES} distinct entities may need {most} writes "
                f"(1 + counter_shards + {MAX_DISTINCT_ENTITIES} / max_field_transforms + the day bucket's "
                f"{2 * MAX_DISTINCT_ENTITIES} keys / (max_field_transforms - 1)); "
                f"raise max_batch_writes or lower counter_shards")
        super().__init__(threads=threads, reactor=reactor, clock=clock, max_document_bytes=max_document_bytes)
        #: The project: given, from the environment, or (once started) the credentials'.
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.database = database
        self.collection = self.container = collection
        self.entity_counters_enabled = entity_counters
        self.counters = CounterShards(counters_collection, counter_shards, counter_subshards, max_field_transforms)
        self.counters_collection = counters_collection
        self.counter_shards = counter_shards
        self.counter_subshards = counter_subshards
        self.max_field_transforms = max_field_transforms
        self.max_batch_bytes = max_batch_bytes
        self.rpc_timeout = rpc_timeout
        self.retry_initial = retry_initial
        self.retry_maximum = retry_maximum
        self.retry_deadline = retry_deadline
        self._random = random or _random.Random()
        self._client_lock = threading.Lock()
        self._client_instance = None
        # The longest document path prefix a write names (project, database, collections); a
        # project still to be found takes 100 bytes (ids have at most 30, domain-scoped ones more).
        self._path_bytes = len(f"projects/{self.project or 'x' * 100}/databases/{database}/documents/"
                               f"{collection}/{counters_collection}/") + 64
        self._stats.update({"commits": 0, "retries": 0, "created": 0, "existing": 0, "replaced": 0,
                            "unchanged": 0, "conflicts": 0, "split": 0,
                            "counter_writes": 0, "day_writes": 0, "counter_increments": 0, "reads": 0})
        self.access = AccessWatch(self.project, database, name=lambda: self.name, running=lambda: bool(self.running),
                                  read=self._read_access_check, clock=self._clock, stats=self._stats)
        backoff = Backoff(retry_initial, retry_maximum, retry_deadline, self._clock, self._random)
        turns = Turns()
        self.commits = Commits(
            BatchWriter(collection, self.counters, rpc_timeout), self._client, self.in_thread, self.commit_took,
            turns, self.access, backoff, self._stats, settled=self._check_flushed, clock=self._clock,
            random=self._random, counting=entity_counters, batch_window=batch_window,
            max_batch_writes=max_batch_writes, max_batch_bytes=max_batch_bytes,
            max_concurrent_commits=max_concurrent_commits)
        self.replaces = Replaces(
            Replacer(collection, self.counters, entity_counters, rpc_timeout, self._path_bytes, max_batch_bytes),
            self._client, self.in_thread, self.commit_took, turns, self.access, backoff, self._stats,
            queued=self.commits.holds, ended=self._replace_ended, clock=self._clock, random=self._random)
        self._flushed = WhenIdle(lambda: not self.commits.queued and not self.commits.running
                                 and not self.replaces.running)
        self.days = DayCounts(counters_collection, rpc_timeout, max_document_bytes)
        self.rollup = DayRollup(self.days, self._client, self.in_thread, rollup_interval, self._clock)
        self.backfill = SortBackfill(Walk(collection, rpc_timeout, max_batch_bytes), self._client, self.in_thread,
                                     running=lambda: bool(self.running), name=lambda: self.name,
                                     problem_of=self.access.problem_of)

    @property
    def batch_window(self) -> float:
        return self.commits.batch_window

    @property
    def max_batch_writes(self) -> int:
        return self.commits.max_batch_writes

    @property
    def max_concurrent_commits(self) -> int:
        return self.commits.max_concurrent_commits

    # -- starting: the project and the credentials ----------------------------

    @staticmethod
    def on_emulator() -> bool:
        return on_emulator()

    def startService(self):
        """Start the pool, then find the credentials and the project (in a thread: google-auth may
        block); fails when no project can be found.  Off the emulator, check the access in the
        background (see ``access.py``)."""
        super().startService()
        return self.in_thread(self._open).addCallbacks(self._opened, self._open_failed)

    def _open(self):
        """``(project, credentials error or None)``, in a pool thread."""
        try:
            return self._client().project, None
        except auth_exceptions.DefaultCredentialsError as error:
            if self.project is None:
                raise StoreError(
                    f"no Google Cloud project for Firestore: 'project' is not set, GOOGLE_CLOUD_PROJECT is not "
                    f"set, and no Application Default Credentials name one ({describe(error)})") from None
            return self.project, error

    def _opened(self, opened):
        self.project, error = opened
        self.access.project = self.project
        log.info("{name}: Firestore database {database} of project {project}{emulator}", name=self.name,
                 database=self.database, project=self.project,
                 emulator=" (emulator)" if self.on_emulator() else "")
        if error is not None:
            self.access.failed(self.access.problem_of(error))
        elif not self.on_emulator():
            self.access.check()
        self.backfill.start()
        if self.entity_counters_enabled:
            self.rollup.startService()

    def _open_failed(self, failure):
        Service.stopService(self)
        self._stop_pool(None)
        return failure

    def stopService(self):
        """Stop the checks and walks, wait for a roll-up in progress, then stop as every store does."""
        self.access.stop()
        self.backfill.stop()
        rolled = self.rollup.stopService() if self.rollup.running else None
        if rolled is None:
            return super().stopService()
        return rolled.addBoth(lambda _: super(FirestoreStore, self).stopService())

    # -- the client, in the pool's threads ------------------------------------

    def _client(self):
        """The client, created on first use (again after a failed attempt: credentials may appear)."""
        with self._client_lock:
            if self._client_instance is None:
                self._client_instance = create_client(self.project, self.database)
            return self._client_instance

    def closing(self):
        return self.in_thread(self._close_client)

    def _close_client(self):
        with self._client_lock:
            client, self._client_instance = self._client_instance, None
        if client is not None:
            client.close()

    # -- access: problems with the credentials ---------------------------------

    def readiness(self) -> str | None:
        """Why the daemon cannot be ready because of this store's credentials, or None."""
        return self.access.readiness()

    def _read_access_check(self):
        def read():
            (self._client().collection(self.collection).document(ACCESS_CHECK_ID)
             .get(retry=None, timeout=self.rpc_timeout))

        return self.in_thread(read)

    # -- writes: puts in batched commits, replaces in transactions --------------

    def prepare(self, article_id, fields, tally):
        """The put on its way; the constructor made sure that its writes fit one commit.

        The document gets ``sort_at`` (:data:`~.documents.SORT_FIELD`), the text its article sorts by: its
        ``published_at``, else now by the store's clock (a replace keeps the stored one).
        """
        fields = dict(fields, **{SORT_FIELD: fields.get("published_at") or self._now()})
        if self.entity_counters_enabled:
            fields[DAYS_COUNTED_FIELD] = True
        shards = self.counters.for_article(fields, tally, fields[SORT_FIELD][:10])
        item = Pending(article_id, fields, shards, self._path_bytes, self.max_field_transforms)
        if item.size > self.max_batch_bytes:
            raise PermanentStoreError(
                f"article {article_id!r} needs about {item.size} request bytes, more than "
                f"max_batch_bytes={self.max_batch_bytes}", article_id)
        return item

    def write(self, item):
        return self.commits.add(item)

    def _now(self) -> str:
        return iso_utc(datetime.fromtimestamp(self._clock.seconds(), timezone.utc))

    def rewrite(self, item):
        return self.replaces.rewrite(item)

    def _replace_ended(self):
        if self.commits.queued:  # puts of its id may have waited for it
            if self.running:
                self.commits.schedule()
            else:
                self.commits.drain()
        self._check_flushed()

    # -- stopping --------------------------------------------------------------

    def flush(self):
        """Commit everything queued now, and fire when every accepted put is settled."""
        if self.commits.queued:
            self.commits.drain()
        return self._flushed.wait()

    def _check_flushed(self):
        self._flushed.check()

    # -- reads -----------------------------------------------------------------

    def get(self, article_id):
        return self._read(self._get, article_id)

    def _get(self, article_id):
        snapshot = (self._client().collection(self.collection).document(article_id)
                    .get(retry=None, timeout=self.rpc_timeout))
        return stored(snapshot) if snapshot.exists else None

    def recent(self, source=None, limit=20):
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self._read(self._recent, source, limit)

    def _recent(self, source, limit):
        query = self._client().collection(self.collection)
        if source is not None:
            query = query.where(filter=FieldFilter("source", "==", source))
        query = (query.order_by("ingested_at", direction=firestore.Query.DESCENDING)
                 .order_by("__name__", direction=firestore.Query.DESCENDING).limit(limit))
        return [stored(snapshot) for snapshot in query.stream(retry=None, timeout=self.rpc_timeout)]

    def query(self, key="", source=None, since=None, until=None, limit=20, after=None):
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self._read(self._query, key, source, since, until, limit, after)

    def _query(self, key, source, since, until, limit, after):
        """One page of articles by entity (see ``queries.py``): ``limit + 1`` documents read."""
        return queries.run(self._client(), self.collection, self.database, self.rpc_timeout, key, source, since,
                           until, limit, after)

    def entity_counters(self, source):
        return self._read(self._entity_counters, source)

    def top_entities(self, source, since, until, label=None, limit=50):
        """See :meth:`IArticleStore.top_entities`: one rolled document read per day (``days.py``)."""
        if not self.entity_counters_enabled:
            return fail(self.counts_unsupported())
        found = self._read(self._top, source, _days(since, until), label, limit)
        return found.addCallback(self._read_side, "entities")

    def timeline(self, key, source=None, since=None, until=None):
        """See :meth:`IArticleStore.timeline`: one rolled document read (one field of it) per day."""
        if not self.entity_counters_enabled:
            return fail(self.counts_unsupported())
        found = self._read(self._timeline, key, source, _days(since, until))
        return found.addCallback(self._read_side, "days")

    def roll_up(self):
        """Roll the day buckets up now (the tick does it every ``rollup_interval``); fires when done."""
        return self.rollup.tick()

    def _top(self, *args):
        return self.days.top(self._client(), *args)

    def _timeline(self, *args):
        return self.days.timeline(self._client(), *args)

    def _read_side(self, found, name: str) -> dict:
        answer, reads = found
        self._stats["reads"] += reads
        return {name: answer, "as_of": self.rollup.state()["through"]}

    def _entity_counters(self, source):
        """The sum of every shard document of *source* (of any S and R)."""
        return self.counters.read(self._client(), source, self.rpc_timeout, self.max_document_bytes)

    def _read(self, function, *args):
        def answered(result):
            self.access.ok()
            self.backfill.resume()  # a paused walk goes on once Firestore answers again
            return result

        def translate(failure):
            error = failure.value
            if isinstance(error, StoreError):
                return failure
            problem = self.access.problem_of(error)
            if problem is not None:
                self.access.failed(problem)
                raise StoreUnavailable(problem)
            if is_transient(error):
                raise StoreUnavailable(f"Firestore read failed: {describe(error)}")
            raise StoreError(f"Firestore read failed: {describe(error)}")

        return self.in_thread(function, *args).addCallbacks(answered, translate)

    # -- status ----------------------------------------------------------------

    def state(self):
        return {
            "kind": self.kind,
            "running": bool(self.running),
            "project": self.project,
            "database": self.database,
            "collection": self.collection,
            "emulator": os.environ.get("FIRESTORE_EMULATOR_HOST"),
            "access_problem": self.access.problem,
            "queued": self.commits.queued,
            "in_flight": self.commits.in_flight + self.replaces.running,
            "commits_in_flight": self.commits.running,
            **self._stats,
            "largest_commit": dict(self.commits.largest),
            "batch": {"window": self.batch_window, "max_writes": self.max_batch_writes,
                      "max_bytes": self.max_batch_bytes},
            "rollup": self.rollup.state() if self.entity_counters_enabled else None,
            "counters": {"enabled": self.entity_counters_enabled, "shards": self.counter_shards,
                         "subshards": self.counter_subshards, "max_field_transforms": self.max_field_transforms},
            "threads": self.thread_state(),
            "backfill": self.backfill.state(),
        }


def _days(since: str, until: str) -> list[str]:
    """The days ``YYYY-MM-DD`` from *since* (inclusive) to *until* (exclusive)."""
    return days_between(date.fromisoformat(since), date.fromisoformat(until))
