"""Reading a stream into a pipeline: work queues through a consumer group, broadcast streams from the last id.

A :class:`StreamConsumer` is the service behind ``redis: streams: <name>: {processor: pipeline.x}``. It reads
on a connection of its own (a blocking read stalls its connection), in bounded ``BLOCK`` reads, and never takes
more entries than it has free slots (``concurrency``). Each entry's message is the baton of one run of the
pipeline.

**Work queues** (a ``group``): the consumer is named after the daemon's node, so a restarted daemon finds its
own pending entries: it reads those first, then new ones. An entry is acknowledged (``XACK``) once its
pipeline has finished, whatever the pipeline answered; a pipeline that fails leaves it pending. The reclaimer
(every ``claim_idle / 2`` seconds) takes over entries idle longer than ``claim_idle`` from any consumer
(``XAUTOCLAIM``: a dead worker's jobs, or a failed run of its own), renews the claim on the entries it is
still working on (so a long job is not taken from it), and gives up on an entry delivered more than
``max_deliveries`` times: the entry goes to the dead-letter stream ``<key>:dead``, its ``dead_letter``
pipeline (if any) runs on it (to answer its request), and it is acknowledged. Acknowledged entries are
trimmed (``XTRIM MINID`` below the oldest entry still pending or undelivered), so trimming never loses work.

**Broadcast streams**: the consumer reads everything added after it started (``XREAD`` from the last id
seen), so nothing is missed between two reads and nothing needs acknowledging.

Stopping stops reading at once (the blocking connection is closed), lets the runs in progress finish, and
acknowledges them; entries read but not started do not exist (reads take only what there are slots for).
"""
from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from pipedingest.idle import WhenIdle
from pipedingest.metrics import count, gauge
from pipedingest.redis.client import RedisClient, RedisError, RedisUnavailable
from pipedingest.redis.streams import DATA, Entry, Stream, entry_from, parse_entries

log = Logger()

#: Seconds to wait before reading again after Redis did not answer.
RETRY_WAIT = 0.5
#: Seconds between two looks at the stream for /status (length, lag, pending, dead letters).
OBSERVE_EVERY = 2.0


class StreamConsumer(Service):
    """Feeds the entries of one stream to a pipeline; registered as ``redis.consumer.<name>``."""

    #: A reload that replaces it stops it before its successor starts: under one consumer name, the
    #: successor's first read (its own pending entries) would take the entries this one is working on.
    exclusive = True

    def __init__(self, stream: Stream, pipeline, clock, concurrency: int = 8, block: float = 1.0,
                 claim_idle: float = 30.0, max_deliveries: int = 3, dead_letter=None, reactor=None):
        self.setName(f"redis.consumer.{stream.name}")
        self.stream = stream
        self.pipeline = pipeline  # a Reference
        self.dead_letter = dead_letter  # a Reference, or None
        self.clock = clock
        self.reactor = reactor if reactor is not None else clock
        self.concurrency = concurrency
        self.block = block
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.in_progress: dict[str, Deferred] = {}
        self._idle = WhenIdle(lambda: not self.in_progress)
        self._slot: Optional[Deferred] = None
        self._reading: Optional[Deferred] = None
        self._connection = None
        self._reclaimer: Optional[LoopingCall] = None
        self._reclaiming: Optional[Deferred] = None
        self._counts = {"done": 0, "failed": 0, "reclaimed": 0, "dead": 0}
        self._last_reclaim = float("-inf")
        #: What Redis said of the stream at the last look (every few seconds): for /status.
        self.observed: dict = {}

    @property
    def client(self) -> RedisClient:
        return self.stream.client.value

    @property
    def consumer(self) -> str:
        return self.client.node

    # -- the service -------------------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._connection = self.client.blocking()
        self._reading = self._read_forever()
        self._reading.addErrback(lambda failure: log.failure("reading {stream} stopped", failure,
                                                             stream=self.stream.name))
        interval = min(max(0.05, self.claim_idle / 2), OBSERVE_EVERY) if self.stream.work_queue else OBSERVE_EVERY
        self._reclaimer = LoopingCall(self._reclaim)
        self._reclaimer.clock = self.clock
        self._reclaimer.start(interval, now=False).addErrback(
            lambda failure: log.failure("reclaiming {stream} stopped", failure, stream=self.stream.name))

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._reclaimer is not None and self._reclaimer.running:
            self._reclaimer.stop()
        connection, self._connection = self._connection, None
        if connection is not None:
            yield self.client.release(connection)  # ends a read blocked in Redis at once
        if self._slot is not None and not self._slot.called:
            self._slot.callback(None)
        if self._reading is not None:
            yield self._reading
        if self._reclaiming is not None:
            yield self._reclaiming
        yield self._idle.wait()

    # -- reading -----------------------------------------------------------------------------------------------

    @inlineCallbacks
    def _read_forever(self):
        stream = self.stream
        if stream.work_queue:
            yield self._ensure_group()
            position = "0"  # our own pending entries first (a restart after a crash)
        else:
            position = yield self._last_id()
        log.info("reading {stream} ({key}) {how}", stream=stream.name, key=stream.key,
                 how=f"in group {stream.group} as {self.consumer}" if stream.work_queue else "from its end")
        while self.running:
            free = self.concurrency - len(self.in_progress)
            if free <= 0:
                self._slot = Deferred()
                yield self._slot
                continue
            try:
                reply = yield self._read(position, free)
            except (RedisUnavailable, RedisError, CancelledError) as error:
                if not self.running:
                    break
                log.debug("reading {stream} failed ({error}); again soon", stream=stream.name, error=error)
                yield deferLater(self.clock, RETRY_WAIT, lambda: None)
                if stream.work_queue:
                    yield self._ensure_group()
                continue
            if not self.running:
                break
            entries = parse_entries(reply)
            if stream.work_queue and position != ">":
                if not entries:
                    position = ">"
                    continue
                position = entries[-1].id
            elif not stream.work_queue and entries:
                position = entries[-1].id
            for entry in entries:
                self._run(entry)

    def _read(self, position: str, count: int) -> Deferred:
        stream = self.stream
        block = ["BLOCK", int(self.block * 1000)] if position in (">",) or not stream.work_queue else []
        if stream.work_queue:
            args = ["XREADGROUP", "GROUP", stream.group, self.consumer, "COUNT", count, *block,
                    "STREAMS", stream.key, position]
        else:
            args = ["XREAD", "COUNT", count, *block, "STREAMS", stream.key, position]
        return self.client.command(*args, timeout=self.block + self.client.command_timeout,
                                   connection=self._connection)

    @inlineCallbacks
    def _ensure_group(self):
        while self.running:
            try:
                yield self.client.command("XGROUP", "CREATE", self.stream.key, self.stream.group, "0", "MKSTREAM")
                return
            except RedisError as error:
                if "BUSYGROUP" in str(error):
                    return
                raise
            except RedisUnavailable:
                yield deferLater(self.clock, RETRY_WAIT, lambda: None)

    @inlineCallbacks
    def _last_id(self):
        while self.running:
            try:
                newest = yield self.client.command("XREVRANGE", self.stream.key, "+", "-", "COUNT", 1)
                return entry_from(newest[0]).id if newest else "0-0"
            except RedisUnavailable:
                yield deferLater(self.clock, RETRY_WAIT, lambda: None)
        return "0-0"

    # -- running entries ---------------------------------------------------------------------------------------

    def _run(self, entry: Entry) -> None:
        if entry.id in self.in_progress:
            return  # reclaimed while we already run it
        if entry.data is None:  # deleted (trimmed) while pending: nothing to do but forget it
            self._acknowledge(entry.id)
            return
        running = maybeDeferred(self.pipeline.value, entry.data)
        self.in_progress[entry.id] = running
        running.addCallbacks(self._finished, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))
        running.addBoth(self._settled, entry)

    def _finished(self, _, entry: Entry):
        self._counts["done"] += 1
        if self.stream.work_queue:
            return self._acknowledge(entry.id)
        return None

    def _failed(self, failure, entry: Entry):
        self._counts["failed"] += 1
        log.failure("{pipeline} failed on entry {id} of {stream}; it stays pending", failure,
                    pipeline=self.pipeline.name, id=entry.id, stream=self.stream.name)
        return None

    def _settled(self, _, entry: Entry):
        self.in_progress.pop(entry.id, None)
        self._idle.check()
        if self._slot is not None and not self._slot.called:
            slot, self._slot = self._slot, None
            slot.callback(None)

    def _acknowledge(self, entry_id: str) -> Deferred:
        acked = self.client.command("XACK", self.stream.key, self.stream.group, entry_id)
        return acked.addErrback(lambda failure: log.warn(
            "could not acknowledge {id} of {stream} ({error}); it will be delivered again",
            id=entry_id, stream=self.stream.name, error=failure.getErrorMessage()))

    # -- reclaiming (work queues) --------------------------------------------------------------------------------

    def _reclaim(self):
        self._reclaiming = self._observe()
        if self.stream.work_queue and self.clock.seconds() - self._last_reclaim >= self.claim_idle / 2:
            self._last_reclaim = self.clock.seconds()
            self._reclaiming.addCallback(lambda _: self._reclaim_once())
        return self._reclaiming.addErrback(lambda failure: log.debug(
            "reclaiming {stream} failed: {error}", stream=self.stream.name, error=failure.getErrorMessage()))

    @inlineCallbacks
    def _reclaim_once(self):
        stream, client = self.stream, self.client
        idle_ms = int(self.claim_idle * 1000)
        if self.in_progress:  # still ours: renew the claim (JUSTID does not count as a delivery)
            yield client.command("XCLAIM", stream.key, stream.group, self.consumer, 0, *self.in_progress, "JUSTID")
        free = self.concurrency - len(self.in_progress)
        if free > 0 and self.running:
            reply = yield client.command("XAUTOCLAIM", stream.key, stream.group, self.consumer, idle_ms, "0-0",
                                         "COUNT", free)
            claimed = [entry_from(item) for item in (reply[1] if reply else ()) if item]
            for entry in claimed:
                details = yield client.command("XPENDING", stream.key, stream.group, entry.id, entry.id, 1)
                entry.deliveries = int(details[0][3]) if details else 1
                if entry.deliveries > self.max_deliveries:
                    yield self._give_up(entry)
                else:
                    self._counts["reclaimed"] += 1
                    log.info("took over entry {id} of {stream} (delivery {n})", id=entry.id, stream=stream.name,
                             n=entry.deliveries)
                    self._run(entry)
        yield self._trim()

    @inlineCallbacks
    def _give_up(self, entry: Entry):
        self._counts["dead"] += 1
        stream, client = self.stream, self.client
        log.error("entry {id} of {stream} was delivered {n} times; moved to {dead}", id=entry.id,
                  stream=stream.name, n=entry.deliveries, dead=f"{stream.key}:dead")
        yield client.command("XADD", f"{stream.key}:dead", "*", DATA, entry.data or "", "id", entry.id,
                             "deliveries", entry.deliveries)
        if self.dead_letter is not None and entry.data is not None:
            try:
                yield self.dead_letter.value(entry.data)
            except Exception:
                log.failure("the dead-letter pipeline of {stream} failed on {id}", stream=stream.name, id=entry.id)
        yield client.command("XACK", stream.key, stream.group, entry.id)

    @inlineCallbacks
    def _trim(self):
        """Remove acknowledged entries: everything older than the oldest entry not yet done by every group."""
        stream, client = self.stream, self.client
        oldest = None
        summary = yield client.command("XPENDING", stream.key, stream.group)
        if summary and int(summary[0] or 0) > 0:
            oldest = summary[1]
        groups = yield client.command("XINFO", "GROUPS", stream.key)
        for fields in groups or ():
            info = dict(zip((f.decode() if isinstance(f, bytes) else f for f in fields[::2]), fields[1::2]))
            last = info.get("last-delivered-id")
            if last is not None:
                last = last.decode() if isinstance(last, bytes) else str(last)
                following = _next_id(last)
                if oldest is None or _id_key(following) < _id_key(oldest):
                    oldest = following
        if oldest is not None:
            oldest = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
            yield client.command("XTRIM", stream.key, "MINID", "~", oldest)

    # -- status ------------------------------------------------------------------------------------------------

    @inlineCallbacks
    def _observe(self):
        """Length, lag, pending entries and their age, consumers and dead letters, as Redis sees them."""
        stream, client = self.stream, self.client
        observed = {"length": int((yield client.command("XLEN", stream.key)) or 0)}
        if stream.work_queue:
            groups = yield client.command("XINFO", "GROUPS", stream.key)
            for fields in groups or ():
                info = dict(zip(fields[::2], fields[1::2]))
                if info.get("name") == stream.group:
                    observed.update(lag=info.get("lag"), pending=info.get("pending"), consumers=info.get("consumers"))
            summary = yield client.command("XPENDING", stream.key, stream.group)
            oldest = summary[1] if summary and summary[0] else None
            now_ms = self.clock.seconds() * 1000
            observed["oldest_pending_age_seconds"] = (
                round(max(0.0, now_ms - _id_key(str(oldest))[0]) / 1000, 3) if oldest else None)
            observed["dead_letters"] = int((yield client.command("XLEN", f"{stream.key}:dead")) or 0)
        self.observed = observed

    def state(self) -> dict:
        return {"stream": self.stream.name, "key": self.stream.key, "group": self.stream.group,
                "consumer": self.consumer if self.running else None, "in_progress": len(self.in_progress),
                "concurrency": self.concurrency, **self._counts, "redis": self.observed}

    def metrics(self) -> list:
        """For /metrics: this consumer's runs, and its stream as Redis showed it at the last look (every few
        seconds; what Redis did not give, such as the lag of a broadcast stream, has no sample)."""
        stream, observed, counts = self.stream.name, self.observed, self._counts
        families = [gauge("pipedingest_redis_entries_in_progress", "Entries this consumer is running now",
                          len(self.in_progress), stream=stream)]
        for key, name, documentation in CONSUMER_COUNTS:
            families.append(count(name, documentation, counts[key], stream=stream))
        for key, name, documentation in STREAM_GAUGES:
            value = observed.get(key)
            if value is None and key == "oldest_pending_age_seconds" and key in observed:
                value = 0.0  # looked, and nothing was pending
            families.append(gauge(name, documentation, value if isinstance(value, (int, float)) else None,
                                  stream=stream))
        return families


#: The consumer's counts as counters: (its key in ``state()``, the metric, what it counts).
CONSUMER_COUNTS = (
    ("done", "pipedingest_redis_entries_done", "Entries whose pipeline finished (then acknowledged)"),
    ("failed", "pipedingest_redis_entries_failed", "Entries whose pipeline failed (left pending, claimed again)"),
    ("reclaimed", "pipedingest_redis_entries_reclaimed", "Entries taken over from a consumer that left them idle"),
    ("dead", "pipedingest_redis_entries_dead_lettered",
     "Entries given up after max_deliveries and moved to the dead-letter stream"),
)
#: What the last look at the stream found: (its key in ``state()["redis"]``, the metric, what it is).
STREAM_GAUGES = (
    ("length", "pipedingest_redis_stream_length", "Entries in the stream (XLEN)"),
    ("lag", "pipedingest_redis_stream_lag", "Entries in the stream not yet delivered to the group"),
    ("pending", "pipedingest_redis_stream_pending", "Entries delivered to the group and not yet acknowledged"),
    ("oldest_pending_age_seconds", "pipedingest_redis_stream_oldest_pending_age_seconds",
     "Age of the oldest entry delivered and not yet acknowledged"),
    ("consumers", "pipedingest_redis_stream_consumers", "Consumers in the group"),
    ("dead_letters", "pipedingest_redis_stream_dead_letters", "Entries in the dead-letter stream (<key>:dead)"),
)


def _id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _next_id(entry_id: str) -> str:
    milliseconds, sequence = _id_key(entry_id)
    return f"{milliseconds}-{sequence + 1}"
