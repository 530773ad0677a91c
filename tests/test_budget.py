"""The CPU and memory budget: parsing cgroup trees (fake ones under tmp), and a real twistd sized by a real cgroup.

The real tests need root and a writable cgroup hierarchy (v1 or v2), as on the CI machines; where a cgroup
cannot be made they fail and say why, they do not skip.
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from pipedingest.budget import cgroup_of, measure
from tests.conftest import DEV, ROOT
from tests.twistd_process import Daemon, twistd

# -- fake trees --------------------------------------------------------------------------------------------------

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
V1_UNLIMITED = "9223372036854771712"


def fake(tmp_path, cgroup: str, mountinfo: str, files: dict, affinity: int = 8):
    """``measure()`` of a fake system: /proc/self/{cgroup,mountinfo} and cgroup *files* under *tmp_path*."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n" + mountinfo)
    for path, text in files.items():
        target = tmp_path / "root" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
    (tmp_path / "root").mkdir(exist_ok=True)
    return measure(proc=str(proc), root=str(tmp_path / "root"), affinity=affinity)


def test_v2_a_parents_quota_limits_its_children(tmp_path):
    budget = fake(tmp_path, "0::/system.slice/ingest.service\n", V2_MOUNT, {
        "/sys/fs/cgroup/system.slice/ingest.service/cpu.max": "max 100000",
        "/sys/fs/cgroup/system.slice/cpu.max": "200000 100000",
    })
    assert (budget.cpus, budget.cpu_quota, budget.affinity) == (2, 2.0, 8)
    assert budget.cpu_source == "cgroup v2 cpu.max 200000/100000 at /system.slice"


def test_v2_the_tightest_quota_on_the_way_up_wins(tmp_path):
    budget = fake(tmp_path, "0::/a/b\n", V2_MOUNT, {
        "/sys/fs/cgroup/a/b/cpu.max": "300000 100000",
        "/sys/fs/cgroup/a/cpu.max": "600000 100000",
    })
    assert budget.cpus == 3 and budget.cpu_source.endswith("at /a/b")


@pytest.mark.parametrize("cpu_max, cpus, quota", [("150000 100000", 1, 1.5), ("50000 100000", 1, 0.5),
                                                  ("250000 50000", 5, 5.0)])
def test_v2_quota_rounds_down_and_is_at_least_one(tmp_path, cpu_max, cpus, quota):
    budget = fake(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": cpu_max})
    assert (budget.cpus, budget.cpu_quota) == (cpus, quota)


def test_affinity_below_the_quota_is_the_budget(tmp_path):
    budget = fake(tmp_path, "0::/x\n", V2_MOUNT, {"/sys/fs/cgroup/x/cpu.max": "400000 100000"}, affinity=2)
    assert (budget.cpus, budget.cpu_source, budget.cpu_quota) == (2, "affinity: 2 CPUs", 4.0)


def test_v2_memory_max_and_no_limit(tmp_path):
    limited = fake(tmp_path / "a", "0::/x\n", V2_MOUNT, {"/sys/fs/cgroup/x/memory.max": "max",
                                                          "/sys/fs/cgroup/memory.max": str(2**30)})
    assert limited.memory_limit_bytes == 2**30 and limited.memory_source == f"cgroup v2 memory.max {2**30} at /"
    unlimited = fake(tmp_path / "b", "0::/x\n", V2_MOUNT, {"/sys/fs/cgroup/x/memory.max": "max",
                                                            "/sys/fs/cgroup/x/cpu.max": "max 100000"})
    assert (unlimited.memory_limit_bytes, unlimited.cpus, unlimited.cpu_quota) == (None, 8, None)


def test_v1_hybrid_reads_the_v1_controllers_named_together(tmp_path):
    """cpu and cpuacct share one mount; the unified v2 mount beside them holds no controller files."""
    budget = fake(tmp_path, "5:memory:/pods/p1\n4:cpu,cpuacct:/pods/p1\n0::/pods/p1\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/pods/p1/cpu.cfs_quota_us": "-1",
        "/sys/fs/cgroup/cpu,cpuacct/pods/p1/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/cpu,cpuacct/pods/cpu.cfs_quota_us": "300000",
        "/sys/fs/cgroup/cpu,cpuacct/pods/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/memory/pods/p1/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/memory/pods/memory.limit_in_bytes": str(512 * 2**20),
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
    }, affinity=64)
    assert (budget.cpus, budget.cpu_quota) == (3, 3.0)
    assert budget.cpu_source == "cgroup v1 cpu.cfs_quota_us/cfs_period_us 300000/100000 at /pods"
    assert budget.memory_limit_bytes == 512 * 2**20


def test_v1_unlimited_everywhere_is_the_affinity_and_no_memory_limit(tmp_path):
    budget = fake(tmp_path, "5:memory:/\n4:cpu,cpuacct:/\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
    }, affinity=4)
    assert (budget.cpus, budget.cpu_quota, budget.memory_limit_bytes) == (4, None, None)


def test_a_container_sees_its_own_cgroup_at_the_mount_root(tmp_path):
    """Without a cgroup namespace, a container's mount shows /docker/<id> as its root: our cgroup is the mount."""
    mountinfo = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    budget = fake(tmp_path, "4:cpu:/docker/abc\n", mountinfo, {
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "400000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert (budget.cpus, budget.cpu_source) == (4, "cgroup v1 cpu.cfs_quota_us/cfs_period_us 400000/100000 at /")


def test_no_cgroups_at_all_is_the_affinity(tmp_path):
    budget = fake(tmp_path, "", "", {}, affinity=3)
    assert (budget.cpus, budget.cpu_quota, budget.memory_limit_bytes) == (3, None, None)


def test_a_garbled_limit_file_limits_nothing(tmp_path):
    budget = fake(tmp_path, "0::/x\n", V2_MOUNT, {"/sys/fs/cgroup/x/cpu.max": "lots 100000",
                                                   "/sys/fs/cgroup/x/memory.max": "12 GB"})
    assert (budget.cpus, budget.memory_limit_bytes) == (8, None)


# -- real cgroups, a real twistd ------------------------------------------------------------------------------------

@contextlib.contextmanager
def cgroup(controller: str, **limits):
    """A new cgroup for *controller* holding *limits* (v1 file names; v2 ones derived), removed afterwards.

    v1: made inside this process's own cgroup, so every limit above it still applies. v2: made at the top of the
    hierarchy (the only place a controller can be enabled for a group while processes sit beside it).
    """
    located = cgroup_of(controller)
    if located is None:
        pytest.fail(f"no cgroup hierarchy holds the {controller!r} controller (see /proc/self/mountinfo)")
    version, ours, top = located
    parent = ours if version == 1 else top
    path = os.path.join(parent, f"pipedingest-test-{os.getpid()}-{controller}")
    try:
        if version == 2:
            with open(os.path.join(top, "cgroup.subtree_control"), "w") as stream:
                stream.write(f"+{controller}")
        os.mkdir(path)
        for name, value in limits.items():
            name, value = (name, value) if version == 1 else V2_NAMES[name](value)
            with open(os.path.join(path, name), "w") as stream:
                stream.write(str(value))
    except OSError as exc:
        pytest.fail(f"cannot make a cgroup v{version} {controller!r} group at {path}: {exc} "
                    "(these tests need root and a writable cgroup hierarchy)")

    def join():
        with open(os.path.join(path, "cgroup.procs"), "w") as stream:
            stream.write(str(os.getpid()))

    try:
        yield join
    finally:
        deadline = time.monotonic() + 30
        while True:  # the daemon has exited; its children may take a moment to be reaped
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


V2_NAMES = {
    "cpu.cfs_quota_us": lambda quota: ("cpu.max", f"{quota} 100000"),
    "memory.limit_in_bytes": lambda limit: ("memory.max", limit),
}


def ner_children(pid: int) -> list[int]:
    """The processes whose parent is *pid* and that run a NER child (from /proc, not from the daemon's word)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                ppid = int(stream.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                command = stream.read().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and "-m pipedingest.ner.child" in command:
            found.append(int(entry))
    return found


def default_sized_daemon(tmp_path, preexec_fn):
    """conf/dev.yaml without its ``min_children``, started with *preexec_fn*; its pool's status once ready."""
    daemon = Daemon(DEV, "ner.min_children=null", cwd=tmp_path, preexec_fn=preexec_fn,
                    env=dict(os.environ, INGEST_DATA=str(tmp_path / "data")))
    try:
        daemon.wait_ready()
        status, body = daemon.get_json("/status")
        assert status == 200
        return body["components"]["ner.pool"], ner_children(daemon.process.pid)
    finally:
        daemon.terminate()
        assert daemon.wait() == 0, daemon.output[-3000:]


def needs_two_cpus():
    cpus = len(os.sched_getaffinity(0))
    assert cpus >= 2, f"this test tells a 1-CPU budget from the machine's; it needs 2 CPUs or more, has {cpus}"
    return cpus


def test_a_one_cpu_quota_gives_one_child_by_default(tmp_path):
    cpus = needs_two_cpus()
    with cgroup("cpu", **{"cpu.cfs_period_us": 100000, "cpu.cfs_quota_us": 100000}) as join:
        pool, children = default_sized_daemon(tmp_path, join)
    budget = pool["budget"]
    assert (budget["cpus"], budget["affinity"], budget["cpu_quota"]) == (1, cpus, 1.0)
    assert "100000/100000" in budget["cpu_source"] and budget["min_children_from"].startswith("budget: cgroup")
    assert (pool["min_children"], pool["max_children"], pool["children"]) == (1, 1, 1)
    assert len(children) == 1


def test_an_affinity_of_one_core_gives_one_child_by_default(tmp_path):
    needs_two_cpus()
    core = min(os.sched_getaffinity(0))
    pool, children = default_sized_daemon(tmp_path, lambda: os.sched_setaffinity(0, {core}))
    assert (pool["budget"]["cpus"], pool["budget"]["affinity"]) == (1, 1)
    assert pool["budget"]["cpu_source"] == "affinity: 1 CPUs"
    assert (pool["min_children"], pool["children"], len(children)) == (1, 1, 1)


def test_check_warns_when_the_children_exceed_the_memory_limit(tmp_path):
    """conf/dev.yaml asks for 2 children: 2 × 220 MiB do not fit in 256 MiB; 1 does; no limit, no warning."""
    with cgroup("memory", **{"memory.limit_in_bytes": 256 * 2**20}) as join:
        tight = twistd("-c", DEV, "--check", preexec_fn=join, cwd=ROOT)
        one = twistd("-c", DEV, "-O", "ner.min_children=1", "--check", preexec_fn=join)
    free = twistd("-c", DEV, "--check")
    assert tight.returncode == 0 and "configuration OK" in tight.stdout, tight.stderr
    warnings = [line for line in tight.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, tight.stderr
    assert warnings[0].startswith("conf/dev.yaml:17:17: warning: 2 NER children × 220 MiB each (440 MiB) exceed "
                                  "the memory limit of 256 MiB (cgroup v"), warnings[0]
    assert warnings[0].endswith("— set ner.min_children to at most 1, or raise the limit")
    for result in (one, free):
        assert result.returncode == 0 and "configuration OK" in result.stdout, result.stderr
        assert "warning" not in result.stderr


def test_max_children_caps_the_default(tmp_path):
    """Without min_children, a max_children below the CPU budget is the pool's size, not a contradiction."""
    needs_two_cpus()
    result = twistd("-c", DEV, "-O", "ner.min_children=null", "-O", "ner.max_children=1", "--check")
    assert result.returncode == 0, result.stderr
