"""The pending-request table and its reaper.

Every baton that waits on slow work (NER in a child process, a remote worker)
is entered in a :class:`PendingTable` with a deadline: the deadline its request
carries (``baton["deadline"]``, see :mod:`pipedingest.deadline`), else the table's
``timeout`` from now.  The entry leaves the table in exactly one of three ways:

* the work completes — it is removed as the result is passed on;
* its client goes away — the waiter's Deferred is cancelled, which removes it;
* the deadline passes — the reaper removes it, runs the table's fallback
  pipeline on the baton (which answers the client, as the Piped tutorial's
  reaper does) and cancels the work.

So no entry outlives its request, and no request waits past its deadline.  The
table is a service: its reaper looks every ``reap_interval`` seconds on an
injected clock (tests drive it with ``task.Clock``), and stopping it waits for
the fallbacks of a reaping in progress.
"""
from __future__ import annotations

import itertools
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from pipedingest.deadline import Deadline
from pipedingest.metrics import count, gauge
from pipedingest.periodic import PeriodicService

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


class PendingTable(PeriodicService):
    """Batons waiting on work, by key, with deadlines; reaped every *reap_interval* seconds."""

    def __init__(self, name: str, clock, timeout: float, reap_interval: float = 0.5, fallback=None):
        super().__init__(reap_interval, clock)
        self.setName(f"pending.{name}")
        self.table = name
        self.timeout = timeout
        self.fallback = fallback  # a Reference to the pipeline that answers a reaped baton
        self.entries: dict[Any, PendingEntry] = {}
        self._keys = itertools.count(1)
        self.completed = 0
        self.reaped = 0
        self.cancelled = 0
        self.unclaimed = 0

    def __len__(self) -> int:
        return len(self.entries)

    def deadline_of(self, baton: Any) -> float:
        """When an entry for *baton* must be answered: its request's deadline, else ``timeout`` from now."""
        deadline = baton.get("deadline") if isinstance(baton, dict) else None
        if isinstance(deadline, Deadline):
            return deadline.at
        return self.clock.seconds() + self.timeout

    def track(self, baton: Any, work: Deferred, deadline: Optional[float] = None, key: Any = None) -> Deferred:
        """Enter *baton* as waiting on *work* until *deadline* (absolute, on the clock); return the work's result.

        Without *deadline*, :meth:`deadline_of` decides.  Cancelling the returned
        Deferred (a client disconnect) cancels *work* and removes the entry; so does
        the reaper, after answering with the fallback.  *key* names the entry for
        :meth:`deliver` (remote work answered by a message); by default it is a number.
        """
        key = next(self._keys) if key is None else key
        entry = PendingEntry(key, baton, work, self.clock.seconds(),
                             self.deadline_of(baton) if deadline is None else deadline)
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

    def deliver(self, key: Any, outcome: Any) -> bool:
        """Complete the work of the entry named *key* with *outcome* (remote work's answer); False if none waits.

        An answer that nobody waits for (its request was reaped, answered, or made by a daemon that has
        restarted since) is counted as ``unclaimed`` and dropped.
        """
        entry = self.entries.get(key)
        if entry is None or entry.work.called:
            self.unclaimed += 1
            return False
        entry.work.callback(outcome)
        return True

    def expired(self, now: Optional[float] = None) -> list[PendingEntry]:
        now = self.clock.seconds() if now is None else now
        return [entry for entry in self.entries.values() if entry.deadline <= now]

    def run_once(self):
        return self.reap()

    def reap(self) -> Deferred:
        """Answer and remove every entry past its deadline, cancel its work; fires when the fallbacks are done."""
        answering = []
        for entry in self.expired():
            if self.entries.pop(entry.key, None) is None:
                continue
            self.reaped += 1
            waited = self.clock.seconds() - entry.added
            log.warn("reaping a request that waited {waited:.3f}s in {table!r}", waited=waited, table=self.table)
            if self.fallback is not None and isinstance(entry.baton, dict):
                entry.baton["reaped"] = {"table": self.table, "waited_seconds": round(waited, 3)}
                answering.append(self.fallback.value(entry.baton).addErrback(
                    lambda failure: log.failure("the fallback pipeline failed for a reaped request", failure)))
            entry.work.cancel()
        return DeferredList(answering)

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
            "unclaimed": self.unclaimed,
        }

    def metrics(self) -> list:
        """For /metrics: the entries now, the oldest one's age, and how entries left the table."""
        state, table = self.state(), self.table
        return [
            gauge("pipedingest_pending_entries", "Requests waiting in the pending table", state["pending"],
                  table=table),
            gauge("pipedingest_pending_oldest_age_seconds", "Seconds the oldest entry has waited (0: none waits)",
                  state["oldest_age_seconds"] or 0.0, table=table),
            count("pipedingest_pending_completed", "Entries whose work completed", self.completed, table=table),
            count("pipedingest_pending_reaped", "Entries answered by the reaper at their deadline", self.reaped,
                  table=table),
            count("pipedingest_pending_cancelled", "Entries whose client went away", self.cancelled, table=table),
            count("pipedingest_pending_unclaimed", "Answers that arrived for no waiting entry", self.unclaimed,
                  table=table),
        ]
