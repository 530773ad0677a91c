"""Stream declarations (the ``redis: streams:`` section), the entry format, and sending.

A declaration names one end of a stream: ``key`` is the Redis key (default: the name), so two names can be the
two ends of one stream, as the Piped tutorial's ``server_sum_out`` and ``worker_sum_in`` were the two ends of
one ZeroMQ address. A declaration with a ``group`` is a **work queue** (each entry goes to one consumer of the
group: PUSH/PULL); one without is a **broadcast** stream (every reader sees every entry: PUB/SUB).

An entry carries the message in one field, ``data``: the text a pipeline sent (JSON, as the tutorial's
pipelines send it), and the consuming pipeline's baton is that text again.

Work queues are never trimmed by ``MAXLEN`` (that could drop entries nobody has read): a send fails with
:class:`StreamBacklogged` (an HTTP layer answers 503) once the group's backlog (undelivered plus unacknowledged
entries) passes ``max_backlog``; acknowledged entries are trimmed by the consumers. Broadcast streams are
capped at ``maxlen`` entries (approximately), and may expire when nobody writes to them (``expire``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet.defer import Deferred, inlineCallbacks

from pipedingest.redis.client import RedisClient, RedisError

DATA = "data"


class StreamBacklogged(Exception):
    """The work queue holds more undone work than ``max_backlog``: nothing was sent; retry later."""

    def __init__(self, stream: str, backlog: int, limit: int):
        super().__init__(f"stream {stream!r} has {backlog} entries not yet done (limit {limit})")
        self.stream = stream
        self.backlog = backlog
        self.limit = limit


@dataclass
class Entry:
    """One stream entry: its id, its message, and (for a work queue) how often it was delivered."""

    id: str
    data: Optional[str]
    deliveries: int = 1


def parse_entries(reply: Any) -> list[Entry]:
    """The entries of an ``XREAD``/``XREADGROUP`` reply for one stream (``[[key, [[id, [f, v, ...]], ...]]]``)."""
    if not reply:
        return []
    entries = []
    for _key, items in reply:
        entries.extend(entry_from(item) for item in items or ())
    return entries


def entry_from(item) -> Entry:
    """``[id, [field, value, ...]]`` (fields nil for an entry deleted while pending) as an :class:`Entry`."""
    entry_id, fields = item[0], item[1]
    values = dict(zip(fields[::2], fields[1::2])) if fields else {}
    return Entry(_text(entry_id), _text(values[DATA]) if DATA in values else None)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def message_text(value: Any) -> str:
    """What goes into an entry: text as it is, bytes decoded, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Stream:
    """One declared stream end; registered as ``redis.stream.<name>``."""

    name: str
    key: str
    client: object  # a Reference to the RedisClient
    #: The declared key, ``{node}`` not yet replaced: the keys a job may name as its reply stream.
    pattern: str = ""
    group: Optional[str] = None
    maxlen: Optional[int] = 100_000
    max_backlog: Optional[int] = 10_000
    expire: Optional[float] = None
    _backlog_checked: float = -1.0
    _backlog: int = 0

    @property
    def work_queue(self) -> bool:
        return self.group is not None

    def accepts_key(self, key: str) -> bool:
        """Whether *key* is this stream's key for some node (what a reply stream named by a job must be)."""
        if "{node}" not in self.pattern:
            return key == self.key
        before, _, after = self.pattern.partition("{node}")
        node = key[len(before):len(key) - len(after)] if after else key[len(before):]
        return key.startswith(before) and key.endswith(after) and bool(node) and ":" not in node

    @inlineCallbacks
    def send(self, message: Any, key: Optional[str] = None, timeout: Optional[float] = None) -> Deferred:
        """Add *message* to the stream (or to *key*, the same stream of another node); the entry's id.

        *timeout* bounds each command (default: the client's ``command_timeout``).
        """
        client: RedisClient = self.client.value
        if key is not None and not self.accepts_key(key):
            raise ValueError(f"{key!r} is not a key of stream {self.name!r} ({self.pattern or self.key})")
        key = key or self.key
        if self.work_queue and self.max_backlog is not None:
            backlog = yield self.backlog(timeout)
            if backlog >= self.max_backlog:
                raise StreamBacklogged(self.name, backlog, self.max_backlog)
        args = ["XADD", key]
        if not self.work_queue and self.maxlen is not None:
            args += ["MAXLEN", "~", self.maxlen]
        entry_id = yield client.command(*args, "*", DATA, message_text(message), timeout=timeout)
        if self.expire is not None:
            yield client.command("EXPIRE", key, int(self.expire), timeout=timeout)
        return _text(entry_id)

    @inlineCallbacks
    def backlog(self, timeout: Optional[float] = None) -> Deferred:
        """Entries of the group not yet delivered or not yet acknowledged (looked up at most every 0.1 s)."""
        client: RedisClient = self.client.value
        now = client.clock.seconds()
        if now - self._backlog_checked < 0.1:
            return self._backlog
        try:
            groups = yield client.command("XINFO", "GROUPS", self.key, timeout=timeout)
        except RedisError:  # no such key yet: nothing is waiting
            groups = []
        backlog = 0
        for fields in groups or ():
            info = dict(zip(map(_text, fields[::2]), fields[1::2]))
            if _text(info.get("name", "")) == self.group:
                lag = info.get("lag")
                backlog = int(info.get("pending") or 0) + (int(lag) if lag is not None else 0)
        self._backlog, self._backlog_checked = backlog, now
        return backlog

    def state(self) -> dict:
        return {"key": self.key, "group": self.group, "backlog": self._backlog}
