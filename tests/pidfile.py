"""The ``stop`` half of the test servers' command lines (scripts/redis-server, scripts/firestore-emulator)."""
from __future__ import annotations

import os
import signal
import sys
import time


def stop_by_pidfile(name: str, pidfile: str, wait: float = 0.0) -> int:
    """SIGTERM the process named in *pidfile* (SIGCONT first, in case it was paused), remove the file, and
    wait up to *wait* seconds for the process to exit; the exit status for the command line."""
    try:
        with open(pidfile) as stream:
            pid = int(stream.read().strip())
    except (OSError, ValueError) as error:
        print(f"{name}: no pid in {pidfile}: {error}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"{name}: process {pid} was not running", file=sys.stderr)
    os.remove(pidfile)
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if wait:
        print(f"{name}: process {pid} did not exit within {wait:g} s of SIGTERM", file=sys.stderr)
        return 1
    return 0
