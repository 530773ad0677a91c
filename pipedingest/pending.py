"""The pending-request table and its reaper.

Every baton that waits on slow work (NER in a child process, a remote worker)
is entered in a :class:`PendingTable` with a deadline.  The entry leaves the
table in exactly one of three ways:

* the work completes — it is removed as the result is passed on;
* its client goes away — the waiter's Deferred is cancelled, which removes it;
* the deadline passes — the :class:`Reaper` removes it, runs the table's
  fallback pipeline on the baton (which answers the client, as the Piped
  tutorial's reaper does) and cancels the work.

So no entry outlives its request, and no request waits past its deadline.
Time comes from an injected clock (``IReactorTime``), so tests drive it with
``task.Clock``.
"""
from __future__ import annotations

import itertools
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class PendingEntry:
    """One waiting baton: what it waits on, since when, and until when."""

    __slots__ = ("key", "baton", "work", "added", "deadline")

    def __init__(self, key, baton, work: Deferred, added: float, deadline: float):
        self.key = key
        self.baton = baton
        self.work = work
        self.added = added
        self.deadline = deadline


class PendingTable:
    """Batons waiting on work, by key, with deadlines."""

    def __init__(self, name: str, clock, timeout: float, fallback=None):
        self.name = name
        self.clock = clock
        self.timeout = timeout
        self.fallback = fallback  # a Reference to the pipeline that answers a reaped baton
        self.entries: dict[Any, PendingEntry] = {}
        self._keys = itertools.count(1)
        self.completed = 0
        self.reaped = 0
        self.cancelled = 0

    def __len__(self) -> int:
        return len(self.entries)

    def track(self, baton: Any, work: Deferred, timeout: Optional[float] = None) -> Deferred:
        """Enter *baton* as waiting on *work*; return a Deferred of the work's result.

        Cancelling the returned Deferred (a client disconnect) cancels *work* and
        removes the entry; so does the reaper, after answering with the fallback.
        """
        key = next(self._keys)
        now = self.clock.seconds()
        entry = PendingEntry(key, baton, work, now, now + (self.timeout if timeout is None else timeout))
        self.entries[key] = entry

        def cancel(_):
            if self.entries.pop(key, None) is not None:
                self.cancelled += 1
            work.cancel()

        result = Deferred(cancel)

        def finished(outcome):
            if self.entries.pop(key, None) is not None:
                self.completed += 1
            if result.called:
                return None  # already reaped or cancelled: nobody waits for this outcome
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            return None

        work.addBoth(finished)
        return result

    def remove(self, key) -> Optional[PendingEntry]:
        return self.entries.pop(key, None)

    def expired(self, now: Optional[float] = None) -> list[PendingEntry]:
        now = self.clock.seconds() if now is None else now
        return [entry for entry in self.entries.values() if entry.deadline <= now]

    def reap(self) -> list[PendingEntry]:
        """Answer and remove every entry past its deadline; cancel its work."""
        reaped = []
        for entry in self.expired():
            if self.entries.pop(entry.key, None) is None:
                continue
            self.reaped += 1
            reaped.append(entry)
            waited = self.clock.seconds() - entry.added
            log.warn("reaping a request that waited {waited:.3f}s in {table!r}", waited=waited, table=self.name)
            if self.fallback is not None and isinstance(entry.baton, dict):
                entry.baton["reaped"] = {"table": self.name, "waited_seconds": round(waited, 3)}
                self.fallback.value(entry.baton).addErrback(
                    lambda failure: log.failure("the fallback pipeline failed for a reaped request", failure))
            entry.work.cancel()
        return reaped

    def state(self) -> dict:
        now = self.clock.seconds()
        oldest = min((entry.added for entry in self.entries.values()), default=None)
        return {
            "pending": len(self.entries),
            "oldest_age_seconds": round(now - oldest, 3) if oldest is not None else None,
            "timeout_seconds": self.timeout,
            "completed": self.completed,
            "reaped": self.reaped,
            "cancelled": self.cancelled,
        }


class Reaper(Service):
    """Reaps a pending table every *interval* seconds (a LoopingCall on an injectable clock)."""

    def __init__(self, table: PendingTable, interval: float, clock):
        self.table = table
        self.interval = interval
        self.loop = LoopingCall(table.reap)
        self.loop.clock = clock

    def startService(self):
        super().startService()
        self.loop.start(self.interval, now=False).addErrback(
            lambda failure: log.failure("the reaper of {table!r} stopped", failure, table=self.table.name))

    def stopService(self):
        super().stopService()
        if self.loop.running:
            self.loop.stop()
