"""The replaces: one Firestore transaction each, taking turns with the puts of their id.

**Replace** is not batched: each is one Firestore transaction on the store's
threads, which reads the document, decides (created, unchanged: same model name
and version, replaced) and writes the whole document (``ingested_at`` kept, and
``sort_at`` unless the new one has a ``published_at``; a new token) with the counter
increments: negative ones for the old document's tally on its source's shards,
positive ones for the new, chosen as a commit chooses them.
Across processes the transaction serialises replaces of one id; within one, a
replace waits for the puts and replaces of its id queued or in flight before it,
and puts queued after it wait for it (:class:`Turns`).  Failures are retried and
reported as for commits (``commits.py``); a transaction whose answer was lost is
recognised by its token.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from google.cloud import firestore
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from pipedingest.article import document_keys
from pipedingest.store.base import (
    PermanentStoreError,
    StoreError,
    StoreUnavailable,
    counter_changes,
    entity_tally,
    model_of,
)
from pipedingest.store.firestore.client import describe, is_transient
from pipedingest.store.firestore.counters import CounterShards, DayShard, ShardPlan, shard_write_size
from pipedingest.store.firestore.documents import DAYS_COUNTED_FIELD, SORT_FIELD, TOKEN_FIELD, Pending, sort_text

log = Logger()


class Turns:
    """The article ids being written in this process, and the replaces waiting for one.

    A batch of puts takes its ids when it is cut, and queued puts of an id taken
    wait; a replace waits until its id is free and every put of it queued before
    it has been settled.  So one id is never written by two commits at once here.
    """

    def __init__(self):
        self._taken: set[str] = set()
        self._waiting: dict[str, deque[Deferred]] = {}

    def __contains__(self, article_id: str) -> bool:
        return article_id in self._taken

    def take(self, ids: set[str]) -> None:
        self._taken |= ids

    def wait(self, article_id: str, queued: bool) -> Deferred:
        """Fires once *article_id* is the caller's: at once unless it is taken, waited for, or *queued*."""
        if not queued and article_id not in self._taken and article_id not in self._waiting:
            self._taken.add(article_id)
            return succeed(None)
        turn: Deferred = Deferred()
        self._waiting.setdefault(article_id, deque()).append(turn)
        return turn

    def give_back(self, article_id: str) -> None:
        """The writer of *article_id* is done: hand it to the first replace waiting for it, or free it."""
        waiting = self._waiting.get(article_id)
        if not waiting:
            self._taken.discard(article_id)
            return
        turn = waiting.popleft()
        if not waiting:
            del self._waiting[article_id]
        self._taken.add(article_id)
        turn.callback(None)


class Replacement:
    """One replace on its way: the checked document (a :class:`~.documents.Pending`), and what the latest
    attempt that wrote decided, so that a retry which finds its token reports that."""

    __slots__ = ("item", "outcome", "counters")

    def __init__(self, item: Pending):
        self.item = item
        self.outcome: str | None = None
        self.counters: ShardPlan | None = None


class Replacer:
    """The thread side of a replace: one transaction.

    :param counters: where the counters are kept, or None when the store keeps none.
    :param path_bytes: the longest document path prefix a write names (for the size bound).
    """

    def __init__(self, collection: str, counters: CounterShards, counting: bool, rpc_timeout: float,
                 path_bytes: int, max_batch_bytes: int):
        self.collection = collection
        self.counters = counters
        self.counting = counting
        self.rpc_timeout = rpc_timeout
        self.path_bytes = path_bytes
        self.max_batch_bytes = max_batch_bytes

    def run(self, client, replacement: Replacement, first_sub: int):
        """``(outcome, counter plan)`` of one transaction (see the module docstring); the plan is None
        when nothing was written.  Runs in a pool thread."""
        item = replacement.item
        reference = client.collection(self.collection).document(item.article_id)

        @firestore.transactional
        def replace(transaction):
            snapshot = reference.get(transaction=transaction, retry=None, timeout=self.rpc_timeout)
            stored = (snapshot.to_dict() or {}) if snapshot.exists else None
            if stored is not None and stored.get(TOKEN_FIELD) == item.token:
                return replacement.outcome, replacement.counters  # an attempt whose answer was lost landed
            if stored is not None and model_of(stored) == model_of(item.fields):
                return "unchanged", None
            ingested_at = (stored or {}).get("ingested_at") or firestore.SERVER_TIMESTAMP
            fields = dict(item.fields, ingested_at=ingested_at, **{TOKEN_FIELD: item.token})
            if stored is not None and not item.fields.get("published_at"):
                fields[SORT_FIELD] = sort_text(stored) or fields[SORT_FIELD]
            counters = self.counters.plan()
            if self.counting:
                self._plan_changes(counters, stored, fields)
            size = item.article_size + counters.bytes
            if size > self.max_batch_bytes:
                raise PermanentStoreError(f"replacing article {item.article_id!r} needs about {size} request "
                                          f"bytes, more than max_batch_bytes={self.max_batch_bytes}",
                                          item.article_id)
            transaction.set(reference, fields)
            self.counters.add_writes(client, transaction, counters, first_sub)
            replacement.outcome = "created" if stored is None else "replaced"
            replacement.counters = counters
            return replacement.outcome, counters

        try:
            return replace(client.transaction())
        except StoreError:
            raise
        except Exception as error:
            if replacement.outcome is not None and self._written_by(reference, item.token):
                return replacement.outcome, replacement.counters
            cause = _behind(error)
            if cause is error:
                raise
            raise cause from None

    def _plan_changes(self, counters: ShardPlan, stored: dict | None, fields: dict) -> None:
        """Into *counters*: what replacing the *stored* document (None: absent) by *fields* changes in the
        entity shards and the day buckets.  Only a stored document marked ``_days_counted`` was added to a day
        bucket (not one stored before day buckets existed, or by a store without counters): only its keys are
        taken off its day."""
        source = fields["source"]
        old_source = stored.get("source") if stored is not None else source
        old_tally = entity_tally(stored.get("entities")) if stored is not None else {}
        for changed, tally in counter_changes(old_source, old_tally, source,
                                              entity_tally(fields.get("entities"))).items():
            counters.add_counts(changed, self.counters.by_shard(tally), shard_write_size(self.path_bytes, changed))
        days: dict[tuple[str, str], dict[str, int]] = {}
        if stored is not None and stored.get(DAYS_COUNTED_FIELD) and isinstance(stored.get(SORT_FIELD), str):
            for key in document_keys(stored):
                days.setdefault((old_source, stored[SORT_FIELD][:10]), {})[key] = -1
        for key in document_keys(fields):
            bucket = days.setdefault((source, fields[SORT_FIELD][:10]), {})
            bucket[key] = bucket.get(key, 0) + 1
        for (changed, day), keys in days.items():
            bucket = self.counters.by_day(day, keys)
            if bucket[DayShard(day)]:
                counters.add_counts(changed, bucket, shard_write_size(self.path_bytes, changed))

    def _written_by(self, reference, token: str) -> bool:
        """Does the document carry *token*: did a transaction whose answer was lost land?  False when
        this read fails too: the caller then reports the transaction's own error."""
        try:
            snapshot = reference.get(field_paths=[TOKEN_FIELD], retry=None, timeout=self.rpc_timeout)
        except Exception:
            return False
        return snapshot.exists and (snapshot.to_dict() or {}).get(TOKEN_FIELD) == token


class Replaces:
    """The reactor side of the replaces: each waits for its turn, runs its transaction, is retried.

    :param replacer: the thread side of a replace.
    :param queued: whether a put of an id is queued (a replace waits for it).
    :param ended: called after each replace, settled or failed (puts of its id may have waited).
    The other parameters are those of :class:`~.commits.Commits`.
    """

    def __init__(self, replacer: Replacer, client: Callable, in_thread: Callable, commit_took: Callable,
                 turns: Turns, access, backoff, stats: dict, queued: Callable[[str], bool],
                 ended: Callable[[], None], clock, random):
        self.replacer = replacer
        self._client = client
        self._in_thread = in_thread
        self._commit_took = commit_took
        self._turns = turns
        self._access = access
        self._backoff = backoff
        self._stats = stats
        self._queued = queued
        self._ended = ended
        self._clock = clock
        self._random = random
        #: Replaces accepted and not yet settled.
        self.running = 0

    def rewrite(self, item: Pending) -> Deferred:
        self.running += 1
        done = self._replace(Replacement(item))
        done.addCallbacks(self._replaced, self._replace_failed, errbackArgs=(item.article_id,))
        return done.addBoth(self._replace_ended)

    def replace_in_thread(self, replacement: Replacement, first_sub: int):
        """One attempt (see :meth:`Replacer.run`); runs in a pool thread."""
        return self.replacer.run(self._client(), replacement, first_sub)

    @inlineCallbacks
    def _replace(self, replacement: Replacement):
        """Run the replace's transaction once its id is free, retrying transient failures; the outcome."""
        article_id = replacement.item.article_id
        counting = self.replacer.counting
        yield self._turns.wait(article_id, queued=self._queued(article_id))
        try:
            first_attempt = self._clock.seconds()
            failures = 0
            while True:
                first_sub = self._random.randrange(self.replacer.counters.subshards) if counting else 0
                try:
                    outcome, counters = yield self._in_thread(
                        self.replace_in_thread, replacement, first_sub).addBoth(
                        self._commit_took, self._clock.seconds())
                except StoreError:
                    raise
                except Exception as error:
                    problem = self._access.problem_of(error)
                    if problem is not None:
                        self._access.failed(problem)
                        raise StoreUnavailable(problem, article_id) from None
                    if not is_transient(error):
                        raise PermanentStoreError(f"Firestore refused to replace article {article_id!r}: "
                                                  f"{describe(error)}", article_id) from None
                    delay = self._backoff.delay(failures, first_attempt)
                    failures += 1
                    if delay is None:
                        raise StoreUnavailable(f"Firestore kept failing for {self._backoff.deadline:g}s; "
                                               f"last error: {describe(error)}", article_id) from None
                    self._stats["retries"] += 1
                    log.warn("replacing article {article_id} failed ({error}); retry {n} in {delay:.2f}s",
                             article_id=article_id, error=describe(error), n=failures, delay=delay)
                    yield task.deferLater(self._clock, delay, lambda: None)
                    continue
                self._access.ok()
                if counters is not None:
                    self._stats["commits"] += 1
                    self._stats["counter_writes"] += counters.writes
                    self._stats["day_writes"] += counters.day_writes
                    self._stats["counter_increments"] += counters.increments
                return outcome
        finally:
            self._turns.give_back(article_id)

    def _replaced(self, outcome: str) -> str:
        self._stats[outcome] += 1
        return outcome

    def _replace_failed(self, failure, article_id: str):
        self._stats["errors"] += 1
        log.error("article {article_id} not replaced: {message}", article_id=article_id,
                  message=failure.getErrorMessage())
        return failure

    def _replace_ended(self, result):
        self.running -= 1
        self._ended()
        return result


def _behind(error: BaseException) -> BaseException:
    """The error behind one the transaction machinery raised: the client reports a contended transaction
    whose attempts ran out as a ValueError caused by the ABORTED, and a transaction that failed to begin
    as the ValueError of its rollback, raised while handling the begin's error."""
    while isinstance(error, ValueError) and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error
