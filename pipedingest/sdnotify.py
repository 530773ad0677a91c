"""Telling systemd how the daemon is doing: ``sd_notify`` over ``$NOTIFY_SOCKET``, without a dependency.

Under a ``Type=notify`` unit systemd passes the path of an AF_UNIX datagram socket in ``$NOTIFY_SOCKET`` (an
abstract-namespace name when it starts with ``@``) and waits for ``READY=1`` before it counts the service as
started. The daemon sends ``READY=1`` when its startup status tests pass (the moment ``/ready`` turns 200),
``STOPPING=1`` when SIGTERM begins the drain, ``RELOADING=1`` (with ``MONOTONIC_USEC``, which systemd 253 and
later want) at SIGHUP and ``READY=1`` again once the reload is over, each with a ``STATUS=`` line for
``systemctl status``.

A datagram on a non-blocking socket is sent at once or not at all, so the reactor never waits; a socket that
is gone or full is logged once and never fails the daemon. The variable is removed from the environment when
read, so nothing the daemon starts believes it may speak for it (the NER children get an empty environment
anyway).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

from twisted.logger import Logger

log = Logger()


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Sends notification lines to one ``$NOTIFY_SOCKET`` address (None: nobody listens, nothing is sent);
    *monotonic_usec* is injected for tests."""

    def __init__(self, address: Optional[str], monotonic_usec: Callable[[], int] = _monotonic_usec):
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.monotonic_usec = monotonic_usec
        self._failed = False

    @classmethod
    def from_environment(cls, environ=os.environ) -> "SystemdNotifier":
        """The notifier for ``$NOTIFY_SOCKET``, taken out of *environ* so that no process started later inherits
        it; one that sends nothing when it is unset or not a socket address."""
        address = environ.pop("NOTIFY_SOCKET", "")
        return cls(address if address.startswith(("/", "@")) else None)

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading the configuration") -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={self.monotonic_usec()}", f"STATUS={status}")

    def stopping(self, status: str = "stopping: draining what was accepted") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def send(self, *lines: str) -> bool:
        """One datagram of ``KEY=value`` lines (a newline inside a value becomes a space); whether it was sent.
        Never raises."""
        if self.address is None:
            return False
        data = "\n".join(" ".join(line.splitlines()) for line in lines).encode("utf-8", "replace")
        try:
            # A socket per message: a handful are sent in a daemon's life, and none is left open behind them.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(data, self.address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify systemd at {address}: {error}", address=self.address.replace("\0", "@"),
                         error=error)
            return False
        self._failed = False
        return True
