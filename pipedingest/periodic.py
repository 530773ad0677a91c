"""Periodic work as a service, on an injected clock, whose stop waits for the call in progress.

Twisted's ``TimerService`` always calls at once when it starts; ticks may not
want that (``run_at_start: false``), and the reaper must not reap before its
first interval.  This is the same shape with that one choice added:
a :class:`~twisted.internet.task.LoopingCall` on the given clock, so tests drive
it with ``task.Clock``; a call that returns a Deferred is waited for before the
next one (missed intervals are skipped, not queued); a failing call is logged
and the loop goes on; and ``stopService`` fires only once the call in progress,
if any, has finished, so whatever it uses is still running while it does.
"""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class PeriodicService(Service):
    """Calls :meth:`run_once` every *interval* seconds while running.

    *now*: the first call comes at once rather than after one interval; without
    *auto_start* the service runs but does not call until :meth:`start_loop`.
    """

    def __init__(self, interval: float, clock, now: bool = False, auto_start: bool = True):
        self.interval = interval
        self.clock = clock
        self.now = now
        self.auto_start = auto_start
        self.calls = 0
        self._loop: LoopingCall | None = None
        self._finished: Deferred | None = None

    def run_once(self):
        """One round of the work; may return a Deferred (the next round waits for it)."""
        raise NotImplementedError

    def _call(self):
        self.calls += 1
        return maybeDeferred(self.run_once).addErrback(self._failed)

    def _failed(self, failure):
        log.failure("{service} failed; it runs again in {interval}s", failure, service=self.name or self,
                    interval=self.interval)

    @property
    def looping(self) -> bool:
        return self._loop is not None and self._loop.running

    def start_loop(self) -> None:
        """Start calling (``startService`` does this when *auto_start*)."""
        if self.looping:
            return
        self._loop = LoopingCall(self._call)
        self._loop.clock = self.clock
        self._finished = self._loop.start(self.interval, now=self.now)

    def startService(self):
        super().startService()
        if self.auto_start:
            self.start_loop()

    def stopService(self):
        super().stopService()
        if not self.looping:
            return succeed(None)
        self._loop.stop()  # with a call in progress, the loop's Deferred fires when that call ends
        finished, self._finished = self._finished, None
        return finished.addCallback(lambda _: None)
