"""What /proc tells the benchmarks about a process: CPU used, memory, preemptions, children."""
from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (from /proc); 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    """Resident memory of a process now, in MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def preempted(pid: int) -> int:
    """Times the process was taken off a core while it still had work (nonvoluntary context switches)."""
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (gunicorn's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as stream:
        return [int(field) for field in stream.read().split()]
