"""The puts: queued, cut into batches, committed on the store's threads, retried, each one settled.

**Batching.**  Puts wait in a queue for up to ``batch_window`` seconds, then go
out in commits of at most ``max_batch_writes`` writes and ``max_batch_bytes``
bytes (an upper bound of the request's encoded size; the emulator refuses
requests over 4 MiB).  At most ``max_concurrent_commits`` commits run at once;
under load the queue fills while they run, so batches grow by themselves.

**Idempotency.**  Each article is written with ``create()``, a precondition that
its document does not exist, and its entity counters (``Increment``) go in the
same commit, which Firestore applies atomically.  One existing id fails the whole
commit with ALREADY_EXISTS, so the store then reads the batch's ids, settles the
ones that exist (False) and commits the rest again.  Each document carries a
private ``_ingest_token`` unique to the put (or replace) that wrote it last, so
when a commit did land but its answer was lost (a timeout, a dropped connection)
the retry recognises its own document and still reports True.  Two writes (puts
or replaces) of one id are never in flight at once in one process
(``replace.Turns``).

**Failures.**  Transient errors retry the commit (``backoff.py``); once the
deadline has passed its articles fail with :class:`StoreUnavailable`.  Any other
error splits the batch in halves until the article at fault is alone; that one
fails with :class:`PermanentStoreError` and a log line, and the rest are stored.
Credentials that fail (``access.py``) fail the whole batch at once.  Every put's
Deferred fires; no write is dropped without a report (which is why BulkWriter,
which can drop a rejected batch silently, is not used).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from pipedingest.store.base import PermanentStoreError, StoreError, StoreUnavailable
from pipedingest.store.firestore.access import AccessWatch
from pipedingest.store.firestore.backoff import Backoff
from pipedingest.store.firestore.client import describe, is_transient
from pipedingest.store.firestore.counters import CounterShards, ShardPlan
from pipedingest.store.firestore.documents import TOKEN_FIELD, Pending
from pipedingest.store.firestore.replace import Turns

log = Logger()


class Commit:
    """What one thread-side commit did, for the counters in ``state()``."""

    def __init__(self):
        self.commits = 0
        self.conflicts = 0
        self.writes = 0
        self.bytes = 0
        self.counter_writes = 0
        self.day_writes = 0
        self.counter_increments = 0


class BatchWriter:
    """The thread side of a commit: the batch's creates and counter increments, in one WriteBatch."""

    def __init__(self, collection: str, counters: CounterShards, rpc_timeout: float):
        self.collection = collection
        self.counters = counters
        self.rpc_timeout = rpc_timeout

    def commit(self, client, batch: list[Pending], first_sub: int = 0) -> Commit:
        """Create the batch's documents and counters; decide ``created`` for each put.

        Runs in a pool thread.  A commit that fails on an existing id is followed by a
        read of the batch's ids, and the still-absent ones are committed again, with
        the counts of those alone.  *first_sub* is the sub-shard its counts go to.
        """
        articles = client.collection(self.collection)
        pending = [item for item in batch if item.created is None]
        outcome = Commit()
        for _ in range(len(pending) + 1):
            writes = client.batch()
            counters = self.add_writes(client, writes, pending, first_sub)
            try:
                writes.commit(retry=None, timeout=self.rpc_timeout)
            except api_exceptions.AlreadyExists:
                outcome.conflicts += 1
                snapshots = client.get_all([articles.document(item.article_id) for item in pending],
                                           field_paths=[TOKEN_FIELD], retry=None, timeout=self.rpc_timeout)
                tokens = {snapshot.id: (snapshot.to_dict() or {}).get(TOKEN_FIELD)
                          for snapshot in snapshots if snapshot.exists}
                for item in pending:
                    if item.article_id in tokens:
                        item.created = tokens[item.article_id] == item.token
                pending = [item for item in pending if item.created is None]
                if not pending:
                    return outcome
                continue
            outcome.commits += 1
            outcome.writes = len(pending) + counters.writes
            outcome.bytes = sum(item.article_size for item in pending) + counters.bytes
            outcome.counter_writes = counters.writes
            outcome.day_writes = counters.day_writes
            outcome.counter_increments = counters.increments
            for item in pending:
                item.created = True
            return outcome
        raise api_exceptions.Aborted("documents kept appearing and vanishing during the commit")

    def add_writes(self, client, writes, items: list[Pending], first_sub: int) -> ShardPlan:
        """The articles' creates and their summed counts, into the WriteBatch *writes*; the counts' plan."""
        articles = client.collection(self.collection)
        counters = self.counters.plan()
        for item in items:
            writes.create(articles.document(item.article_id),
                          dict(item.fields, ingested_at=firestore.SERVER_TIMESTAMP, **{TOKEN_FIELD: item.token}))
            counters.add(item)
        self.counters.add_writes(client, writes, counters, first_sub)
        return counters


class Commits:
    """The reactor side of the puts: the queue, the batches cut from it, the commits in flight.

    :param writer: the thread side of a commit.
    :param client: the store's client (blocking: called in a pool thread).
    :param in_thread: runs a function on the store's pool (a Deferred).
    :param commit_took: records a commit's duration (a callback, as ``ThreadedStore.commit_took``).
    :param turns: the ids being written in this process.
    :param access: the credentials' watch: told of each call that got through or failed on them.
    :param backoff: the delays of the retries.
    :param stats: the store's counts (commits, retries, created, existing, ...).
    :param settled: called whenever work may have ended (the store's flush check).
    :param counting: whether the store keeps entity counters (the sub-shard is then drawn per attempt).
    """

    def __init__(self, writer: BatchWriter, client: Callable, in_thread: Callable, commit_took: Callable,
                 turns: Turns, access: AccessWatch, backoff: Backoff, stats: dict, settled: Callable[[], None],
                 clock, random, counting: bool, batch_window: float, max_batch_writes: int, max_batch_bytes: int,
                 max_concurrent_commits: int):
        self.writer = writer
        self._client = client
        self._in_thread = in_thread
        self._commit_took = commit_took
        self._turns = turns
        self._access = access
        self._backoff = backoff
        self._stats = stats
        self._settled = settled
        self._clock = clock
        self._random = random
        self.counting = counting
        self.batch_window = batch_window
        self.max_batch_writes = max_batch_writes
        self.max_batch_bytes = max_batch_bytes
        self.max_concurrent_commits = max_concurrent_commits
        self._queue: deque[Pending] = deque()
        self._queued_counters = writer.counters.plan()
        self._timer = None
        #: Puts in a commit now, and commits running now.
        self.in_flight = 0
        self.running = 0
        #: The largest commit so far: its writes and bytes.
        self.largest = {"writes": 0, "bytes": 0}

    @property
    def queued(self) -> int:
        return len(self._queue)

    def holds(self, article_id: str) -> bool:
        """Is a put of *article_id* queued?"""
        return any(item.article_id == article_id for item in self._queue)

    def add(self, item: Pending) -> Deferred:
        self._queue.append(item)
        self._queued_counters.add(item)
        self.schedule()
        return item.deferred

    def schedule(self):
        """Commit now if the queue fills a commit, else once the batch window is over."""
        if len(self._queue) + self._queued_counters.writes >= self.max_batch_writes:
            self.drain()
        elif self._timer is None and self._queue:
            self._timer = self._clock.callLater(self.batch_window, self.drain)

    def drain(self):
        """Start commits for what is queued, as far as the concurrency limit allows."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        while self._queue and self.running < self.max_concurrent_commits:
            batch = self._take_batch()
            if not batch:
                break  # everything queued waits for the same ids in flight
            self.running += 1
            self.in_flight += len(batch)
            self._commit(batch).addErrback(self._commit_broke, batch).addBoth(self._commit_ended)
        self._settled()

    def _take_batch(self) -> list[Pending]:
        """The oldest queued puts that fit one commit, at most one per id, none already in flight.

        A commit's writes are its articles plus the shard documents of their summed
        counts (:class:`~.counters.ShardPlan`), which grow only when a shard gets more
        distinct keys than one document may take in a commit.
        """
        batch: list[Pending] = []
        ids: set[str] = set()
        counters = self.writer.counters.plan()
        article_bytes = 0
        kept: deque[Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.article_id in ids or item.article_id in self._turns:
                kept.append(item)
                continue
            writes, size = counters.cost(item)
            fits = (len(batch) + 1 + counters.writes + writes <= self.max_batch_writes
                    and article_bytes + item.article_size + counters.bytes + size <= self.max_batch_bytes)
            if not fits:
                kept.append(item)
                if batch:
                    break
                continue
            batch.append(item)
            ids.add(item.article_id)
            counters.add(item)
            article_bytes += item.article_size
        kept.extend(self._queue)
        self._queue = kept
        self._queued_counters = self.writer.counters.plan()
        for item in kept:
            self._queued_counters.add(item)
        self._turns.take(ids)
        return batch

    def _commit_broke(self, failure, batch: list[Pending]):
        """A bug, not a Firestore answer: fail what is undecided rather than lose it."""
        log.failure("storing a batch of {count} articles broke", failure, count=len(batch))
        undecided = [item for item in batch if not item.deferred.called]
        for item in undecided:
            item.created = None
        self._fail(undecided, StoreError, f"internal error while storing: {failure.getErrorMessage()}")

    def _commit_ended(self, _):
        self.running -= 1
        if self._queue:
            self.drain()
        self._settled()

    def commit_in_thread(self, batch: list[Pending], first_sub: int = 0) -> Commit:
        """One attempt at committing *batch* (see :meth:`BatchWriter.commit`); runs in a pool thread."""
        return self.writer.commit(self._client(), batch, first_sub)

    @inlineCallbacks
    def _commit(self, batch: list[Pending]):
        """Commit *batch* until each of its puts is settled; never fails."""
        first_attempt = self._clock.seconds()
        failures = 0
        while batch:
            first_sub = self._random.randrange(self.writer.counters.subshards) if self.counting else 0
            try:
                result = yield self._in_thread(self.commit_in_thread, batch, first_sub).addBoth(
                    self._commit_took, self._clock.seconds())
            except Exception as error:
                batch = self._settle_decided(batch)
                if not batch:
                    return
                problem = self._access.problem_of(error)
                if problem is not None:  # every write of the batch would fail alike: no retry, no split
                    self._access.failed(problem)
                    self._fail(batch, StoreUnavailable, problem)
                    return
                if is_transient(error):
                    delay = self._backoff.delay(failures, first_attempt)
                    failures += 1
                    if delay is None:
                        self._fail(batch, StoreUnavailable, f"Firestore kept failing for "
                                   f"{self._backoff.deadline:g}s; last error: {describe(error)}")
                        return
                    self._stats["retries"] += 1
                    log.warn("Firestore commit of {count} articles failed ({error}); retry {n} in {delay:.2f}s",
                             count=len(batch), error=describe(error), n=failures, delay=delay)
                    yield task.deferLater(self._clock, delay, lambda: None)
                    continue
                if len(batch) == 1:
                    self._fail(batch, PermanentStoreError,
                               f"Firestore refused article {batch[0].article_id!r}: {describe(error)}")
                    return
                self._stats["split"] += 1
                middle = len(batch) // 2
                yield self._commit(batch[:middle])
                yield self._commit(batch[middle:])
                return
            else:
                self._access.ok()
                self._stats["commits"] += result.commits
                self._stats["conflicts"] += result.conflicts
                self._stats["counter_writes"] += result.counter_writes
                self._stats["day_writes"] += result.day_writes
                self._stats["counter_increments"] += result.counter_increments
                self.largest["writes"] = max(self.largest["writes"], result.writes)
                self.largest["bytes"] = max(self.largest["bytes"], result.bytes)
                self._settle_decided(batch)
                return

    def _settle_decided(self, batch: list[Pending]) -> list[Pending]:
        """Fire the Deferreds of the puts already decided; return the others."""
        undecided = []
        for item in batch:
            if item.created is None:
                undecided.append(item)
                continue
            self._stats["created" if item.created else "existing"] += 1
            self._release(item)
            item.deferred.callback(item.created)
        return undecided

    def _fail(self, batch: list[Pending], error_class, message: str):
        for item in batch:
            self._stats["errors"] += 1
            log.error("article {article_id} not stored: {message}", article_id=item.article_id,
                      message=message)
            self._release(item)
            item.deferred.errback(error_class(message, item.article_id))

    def _release(self, item: Pending):
        self.in_flight -= 1
        self._turns.give_back(item.article_id)
