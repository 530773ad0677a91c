"""The CPUs and memory this process may really use: its CPU affinity and its cgroup's CPU quota and memory limit.

``os.cpu_count()`` counts the host's cores. A process pinned to some of them (``taskset``, a cpuset), or in a
container whose cgroup allows it 4 CPUs' worth of time on a 64-core host, may use far fewer: one spaCy child per
host core there would be 64 children of some 200 MiB each, most of them waiting for CPU time and all of them
in a memory limit sized for 4. :func:`measure` reads what the kernel will actually grant:

- the affinity mask (``os.sched_getaffinity``), which a cpuset also narrows;
- the CPU quota of the process's own cgroup and of every cgroup above it (a parent's quota limits its whole
  subtree): cgroup v2 ``cpu.max`` (``"max 100000"``, ``"200000 100000"``), cgroup v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (``-1``: none); the smallest, in cores, rounded down, at least 1;
- the memory limit, the same way: v2 ``memory.max`` (``"max"``), v1 ``memory.limit_in_bytes`` (an
  "unlimited" v1 group reports a huge page-rounded number, taken as no limit).

Which hierarchy holds a controller, and where this process sits in it, comes from ``/proc/self/cgroup`` and the
mount points of ``/proc/self/mountinfo`` (a container usually sees its own cgroup as ``/``, at the mount's root).
Both the proc directory and the filesystem root are parameters, so tests read fake trees.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

#: v1 reports "no limit" as the largest page-aligned 63-bit number; anything this large is no limit.
UNLIMITED_BYTES = 2**62


@dataclass(frozen=True)
class Budget:
    """What :func:`measure` found. ``cpus`` is the count to size a CPU-bound pool by."""

    cpus: int
    cpu_source: str
    affinity: int
    cpu_quota: float | None
    memory_limit_bytes: int | None
    memory_source: str | None

    def as_json(self) -> dict:
        return {
            "cpus": self.cpus,
            "cpu_source": self.cpu_source,
            "affinity": self.affinity,
            "cpu_quota": None if self.cpu_quota is None else round(self.cpu_quota, 3),
            "memory_limit_bytes": self.memory_limit_bytes,
            "memory_source": self.memory_source,
        }


@dataclass(frozen=True)
class _Limit:
    value: float
    source: str


def measure(proc: str = "/proc/self", root: str = "/", affinity: int | None = None) -> Budget:
    """The CPU and memory budget of the process whose proc directory is *proc*, its filesystem at *root*."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0))
    hierarchies = _Hierarchies.read(proc, root)
    quota = hierarchies.smallest("cpu", _cpu_quota)
    memory = hierarchies.smallest("memory", _memory_limit)
    if quota is not None and math.floor(quota.value) < affinity:
        cpus, cpu_source = max(1, math.floor(quota.value)), quota.source
    else:
        cpus, cpu_source = affinity, f"affinity: {affinity} CPUs"
    return Budget(
        cpus=cpus,
        cpu_source=cpu_source,
        affinity=affinity,
        cpu_quota=quota.value if quota else None,
        memory_limit_bytes=int(memory.value) if memory else None,
        memory_source=memory.source if memory else None,
    )


def cgroup_of(controller: str, proc: str = "/proc/self", root: str = "/") -> tuple[int, str, str] | None:
    """Where this process's cgroup for *controller* (``cpu``, ``memory``) is: ``(cgroup version, its directory,
    the directory at the top of its hierarchy)``, or None when no cgroup hierarchy is mounted."""
    return _Hierarchies.read(proc, root).locate(controller)


class _Hierarchies:
    """This process's cgroup directories: for each v1 controller, and for the v2 unified hierarchy."""

    def __init__(self, v1: dict, v2: str | None, v2_mount: str | None):
        self.v1 = v1  # controller -> (directory of our cgroup, directory of the mount)
        self.v2 = (v2, v2_mount) if v2 is not None else None

    @classmethod
    def read(cls, proc: str, root: str) -> _Hierarchies:
        mounts_v1, mount_v2, v2_mount = {}, None, None
        for fields in _lines(os.path.join(proc, "mountinfo")):
            parts = fields.split()
            if "-" not in parts:
                continue
            dash = parts.index("-")
            mount_root, mount_point = _unescape(parts[3]), _unescape(parts[4])
            fstype, super_options = parts[dash + 1], parts[dash + 3] if len(parts) > dash + 3 else ""
            if fstype == "cgroup2":
                mount_v2 = (mount_root, mount_point)
            elif fstype == "cgroup":
                for option in super_options.split(","):
                    mounts_v1.setdefault(option, (mount_root, mount_point))
        v1, v2 = {}, None
        for line in _lines(os.path.join(proc, "cgroup")):
            number, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if number == "0" and controllers == "" and mount_v2 is not None:
                v2 = _directory(root, *mount_v2, path)
                v2_mount = _directory(root, *mount_v2, mount_v2[0])
            for controller in filter(None, controllers.split(",")):
                if controller in mounts_v1:
                    mount = mounts_v1[controller]
                    v1[controller] = (_directory(root, *mount, path), _directory(root, *mount, mount[0]))
        return cls(v1, v2, v2_mount)

    def locate(self, controller: str) -> tuple[int, str, str] | None:
        """``(version, our cgroup's directory, the hierarchy's top directory)`` for *controller*: its v1
        hierarchy if one holds it, else the v2 one; None without cgroups."""
        if controller in self.v1:
            return (1, *self.v1[controller])
        if self.v2 is not None:
            return (2, *self.v2)
        return None

    def smallest(self, controller: str, reader) -> _Limit | None:
        """The tightest limit *reader* finds in this process's cgroup or any above it."""
        located = self.locate(controller)
        if located is None:
            return None
        version, directory, top = located
        found = None
        while True:
            try:
                limit = reader(directory, version, top)
            except ValueError:  # not a number where the kernel writes one: no limit known here
                limit = None
            if limit is not None and (found is None or limit.value < found.value):
                found = limit
            if directory == top or not directory.startswith(top):
                return found
            directory = os.path.dirname(directory)


def _cpu_quota(directory: str, version: int, top: str) -> _Limit | None:
    where = _relative(directory, top)
    if version == 2:
        text = _read(os.path.join(directory, "cpu.max"))
        if text is None:
            return None
        quota, _, period = text.partition(" ")
        if quota == "max" or not period:
            return None
        return _Limit(int(quota) / int(period), f"cgroup v2 cpu.max {quota}/{period} at {where}")
    quota, period = _read(os.path.join(directory, "cpu.cfs_quota_us")), _read(
        os.path.join(directory, "cpu.cfs_period_us"))
    if quota is None or period is None or int(quota) <= 0:
        return None
    return _Limit(int(quota) / int(period), f"cgroup v1 cpu.cfs_quota_us/cfs_period_us {quota}/{period} at {where}")


def _memory_limit(directory: str, version: int, top: str) -> _Limit | None:
    name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    text = _read(os.path.join(directory, name))
    if text is None or text == "max" or int(text) >= UNLIMITED_BYTES:
        return None
    return _Limit(int(text), f"cgroup v{version} {name} {text} at {_relative(directory, top)}")


def _directory(root: str, mount_root: str, mount_point: str, path: str) -> str:
    """Where cgroup *path* of a hierarchy mounted at *mount_point* (showing *mount_root*) lies under *root*."""
    inside = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
    if inside.startswith(".."):
        inside = "."
    return os.path.normpath(os.path.join(root, mount_point.lstrip("/"), inside))


def _relative(directory: str, top: str) -> str:
    inside = os.path.relpath(directory, top)
    return "/" if inside == "." else "/" + inside


def _read(path: str) -> str | None:
    try:
        with open(path) as stream:
            return stream.read().strip()
    except OSError:
        return None


def _lines(path: str) -> list[str]:
    text = _read(path)
    return text.splitlines() if text else []


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
