"""Waiting for work to be over: one shape shared by the sites, the stores and the NER pool.

Each of them stops by refusing new work and then waiting until what it accepted
is done.  :class:`WhenIdle` holds the Deferreds of whoever waits and fires them
together, the first time the owner reports a change and its condition holds.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed


class WhenIdle:
    """Deferreds waiting for *idle()* to become true; the owner calls :meth:`check` after each change."""

    def __init__(self, idle: Callable[[], bool]):
        self._idle = idle
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        """Fires (with None) once idle: at once if it is idle now."""
        if self._idle():
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def check(self) -> None:
        """Fire every waiter if the owner is idle now."""
        if self._waiters and self._idle():
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
