"""Liveness, readiness and status: what ``/health``, ``/ready`` and ``/status`` say.

* ``/health`` answers 200 while the reactor turns (liveness).
* ``/ready`` answers 200 only once every service has started and the startup
  status tests have passed, and 503 (with the reason) before, after a failure,
  and while stopping.
* ``/status`` shows the status-test report and whatever each component
  reports about itself (pools, stores, pending requests).
"""
from __future__ import annotations

from typing import Callable, Optional

from pipedingest.statustest.runner import Report

STARTING, READY, FAILED, STOPPING = "starting", "ready", "failed", "stopping"


class DaemonStatus:
    def __init__(self, clock):
        self.clock = clock
        self.started_at = clock.seconds()
        self.state = STARTING
        self.reason = "services are starting"
        self.report: Optional[Report] = None
        self.components: dict[str, Callable[[], dict]] = {}

    def add_component(self, name: str, state: Callable[[], dict]) -> None:
        """Show ``state()`` under *name* in ``/status``."""
        self.components[name] = state

    @property
    def ready(self) -> bool:
        return self.state == READY

    def set(self, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = reason

    def as_json(self) -> dict:
        components = {}
        for name, state in self.components.items():
            try:
                components[name] = state()
            except Exception as exc:  # a broken reporter must not break /status
                components[name] = {"error": repr(exc)}
        return {
            "state": self.state,
            "ready": self.ready,
            "reason": self.reason,
            "uptime_seconds": round(self.clock.seconds() - self.started_at, 3),
            "status_tests": self.report.as_json() if self.report else None,
            "components": components,
        }

    def endpoints(self) -> dict:
        """The built-in routes every site serves, by path segment."""
        return {"health": self._health, "ready": self._ready, "status": self._status}

    def _health(self, request) -> None:
        request.respond_json(200, {"alive": True, "uptime_seconds": round(self.clock.seconds() - self.started_at, 3)})

    def _ready(self, request) -> None:
        body = {"ready": self.ready, "state": self.state, "reason": self.reason}
        request.respond_json(200 if self.ready else 503, body, None if self.ready else {"retry-after": "1"})

    def _status(self, request) -> None:
        request.respond_json(200, self.as_json())
