"""Liveness, readiness and status: what ``/health``, ``/ready`` and ``/status`` say.

* ``/health`` answers 200 while the reactor turns (liveness).
* ``/ready`` answers 200 only once every service has started and the startup
  status tests have passed, and 503 (with the reason) before, after a failure,
  and while stopping.
* ``/status`` shows the status-test report, each service's place in its life
  (starting, running, draining, stopping, stopped) and what it needs, and
  whatever each service reports about itself (pools, stores, pending tables, sites).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from pipedingest.statustest.runner import Report

STARTING, READY, FAILED, STOPPING = "starting", "ready", "failed", "stopping"

#: The paths every site serves unless its routing claims them.
BUILTIN_ENDPOINTS = ("health", "ready", "status")


class DaemonStatus:
    """The daemon's state as its built-in endpoints show it; registered as ``daemon.status``."""

    def __init__(self, clock):
        self.clock = clock
        self.started_at = clock.seconds()
        self.state = STARTING
        self.reason = "services are starting"
        self.report: Optional[Report] = None
        self.graph = None  # the ServiceGraph, once built
        #: The configuration running: its checksum, when it was loaded, and how the last reload went.
        self.config: dict = {"sha256": None, "loaded_at": None, "reloads": 0, "last_reload": None}

    def loaded(self, sha256: str, at: float) -> None:
        self.config.update(sha256=sha256, loaded_at=_utc(at))

    def reloaded(self, outcome: str, at: float, errors: list[str]) -> None:
        """A reload was *outcome* (applied, rejected, failed), with these errors."""
        self.config["reloads"] += 1
        self.config["last_reload"] = {"at": _utc(at), "outcome": outcome, "errors": errors}

    def waiting_for(self) -> Optional[str]:
        """What a running service says keeps the daemon from being ready (Redis not answering), or None."""
        for name, node in (self.graph.nodes.items() if self.graph else ()):
            readiness = getattr(node.service, "readiness", None)
            if callable(readiness) and node.service.running:
                problem = readiness()
                if problem:
                    return f"{name}: {problem}"
        return None

    @property
    def ready(self) -> bool:
        return self.state == READY and self.waiting_for() is None

    def set(self, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = reason

    def components(self) -> dict:
        """``state()`` of every service that has one, by name."""
        found = {}
        for name, node in (self.graph.nodes.items() if self.graph else ()):
            state = getattr(node.service, "state", None)
            if not callable(state):
                continue
            try:
                found[name] = state()
            except Exception as exc:  # a broken reporter must not break /status
                found[name] = {"error": repr(exc)}
        return found

    def as_json(self) -> dict:
        return {
            "state": self.state,
            "ready": self.ready,
            "reason": self.reason,
            "uptime_seconds": round(self.clock.seconds() - self.started_at, 3),
            "config": self.config,
            "status_tests": self.report.as_json() if self.report else None,
            "services": self.graph.as_json() if self.graph else {},
            "components": self.components(),
        }

    def serve(self, endpoint: str, request) -> None:
        """Answer the built-in *endpoint* (one of :data:`BUILTIN_ENDPOINTS`)."""
        if endpoint == "health":
            request.respond_json(200, {"alive": True,
                                       "uptime_seconds": round(self.clock.seconds() - self.started_at, 3)})
        elif endpoint == "ready":
            reason = self.reason if self.state != READY else (self.waiting_for() or "")
            body = {"ready": self.ready, "state": self.state, "reason": reason}
            request.respond_json(200 if self.ready else 503, body, None if self.ready else {"retry-after": "1"})
        else:
            request.respond_json(200, self.as_json())


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
