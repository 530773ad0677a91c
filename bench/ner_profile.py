"""Where a request's time goes: py-spy on the daemon's reactor process and on one NER child, under load.

    .venv/bin/python bench/ner_profile.py [--articles 480] [--concurrency 8] [--seconds 12]

Starts ``twistd -n ingest -c conf/dev.yaml`` (2 children) and runs two phases, each with py-spy sampling the
reactor process and one child at the same time (``--nonblocking``, so the processes are not paused):

1. **load**: real news articles through ``POST /entities`` with ``--concurrency`` requests in flight;
2. **one word**: one-word articles, one request at a time: the fixed cost of a round trip;

then py-spy on a worker of the falcon+gunicorn peer (bench/peer_falcon.py) under the same load as phase 1.

For each process's main thread it prints the functions with the most samples, by own time (the frame that was
running) and by total time (the frame anywhere on the stack), as shares of all samples (``--idle`` is on: time
spent waiting counts, so ``doPoll`` is the process waiting for work). The reactor process's thread pools (the
stores' threads) are left out. Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
from ner_http import children_of, free_port, stop_all, wait_peer, wait_ready  # noqa: E402
from raw_vs_pool import corpus  # noqa: E402


def frame_name(frame: str) -> str:
    """``function (path/to/module.py:LINE)`` → ``function (module.py)``: lines split one function's samples."""
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.rsplit(':', 1)[0].rstrip(')'))})" if where else name


#: frames in which a process runs spaCy itself: the child's batch, the peer's ``nlp(text)``
IN_SPACY = ("pipe (language.py)", "__call__ (language.py)")


def summarise(raw_path: str, top: int) -> list[str]:
    """Own and total shares of the top functions in py-spy's raw (collapsed stack) output, and the share of
    samples inside spaCy (``IN_SPACY``) against the rest of the busy samples (not waiting in ``doPoll`` or
    ``accept``/``select``)."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    spacy, idle = 0, 0
    with open(raw_path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():  # a frame name with a line break in it
                continue
            count = int(count)
            frames = [frame_name(frame) for frame in stack.split(";")]
            if frames[0].startswith("_bootstrap ("):  # a thread pool's thread, not the main thread
                continue
            samples += count
            own[frames[-1]] += count
            if any(frame in IN_SPACY for frame in frames):
                spacy += count
            elif frames[-1].startswith(("doPoll (", "select (", "accept (", "wait (", "sleep (")):
                idle += count
            for frame in set(frames):
                total[frame] += count
    if not samples:
        return ["  (no samples)"]
    busy = samples - idle
    lines = [f"  {samples} samples: waiting {100 * idle / samples:.1f} %, busy {100 * busy / samples:.1f} %, "
             f"of which in spaCy {100 * spacy / max(1, busy):.1f} %, the rest {100 * (busy - spacy) / max(1, busy):.1f} %",
             "  own time:"]
    lines += [f"    {100 * n / samples:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("  total time (on the stack):")
    lines += [f"    {100 * n / samples:5.1f} %  {name}" for name, n in total.most_common(top)]
    return lines


def record(pid: int, seconds: float, path: str) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "250", "--nonblocking", "--idle", "--format", "raw", "--output", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load(url: str, path: str, concurrency: int) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "ingest-load"), path, "--url", url, "-n", str(concurrency),
                             "--json", "--no-progress", "--failed", os.devnull], stdout=subprocess.PIPE, text=True)


def extracted(port: int) -> tuple[int, int]:
    """Articles and words the pool has extracted so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status") as response:
        pool = json.loads(response.read())["components"]["ner.pool"]
    return pool["articles"], pool["words"]


def phase(title: str, port: int, path: str, concurrency: int, pids: dict, seconds: float, workdir: str,
          top: int) -> None:
    loader = load(f"http://127.0.0.1:{port}/entities", path, concurrency)
    time.sleep(1.0)  # past the loader's start-up
    before, started = extracted(port), time.monotonic()
    spies = {name: (record(pid, seconds, os.path.join(workdir, f"{title}-{name}.txt")), pid)
             for name, pid in pids.items()}
    for spy, _ in spies.values():
        spy.wait()
    after, elapsed = extracted(port), time.monotonic() - started
    loader.kill()
    loader.wait()
    articles, words = after[0] - before[0], after[1] - before[1]
    print(f"\n## {title}: {articles} articles ({words} words) in {elapsed:.1f} s, {concurrency} in flight: "
          f"{1000 * elapsed / max(1, articles):.2f} ms per article, {words / elapsed:.0f} words/s")
    for name, (spy, pid) in spies.items():
        print(f"\n{name} (pid {pid}):")
        print("\n".join(summarise(os.path.join(workdir, f"{title}-{name}.txt"), top)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=480)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--top", type=int, default=14)
    options = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="pipedingest-profile-")
    texts = corpus(options.articles)
    news = os.path.join(workdir, "news.jsonl")
    with open(news, "w", encoding="utf-8") as stream:
        for index in range(20 * len(texts)):  # more than the phase lasts; each text once per pass, new id
            stream.write(json.dumps({"id": f"p-{index}", "body": texts[index % len(texts)]}) + "\n")
    words = os.path.join(workdir, "word.jsonl")
    with open(words, "w", encoding="utf-8") as stream:
        for index in range(100_000):
            stream.write(json.dumps({"id": f"w-{index}", "body": f"Paris{index}"}) + "\n")

    port = free_port()
    daemon = subprocess.Popen([os.path.join(BIN, "twistd"), "--pidfile=", "-n", "ingest", "-c",
                               os.path.join(ROOT, "conf", "dev.yaml"), "-O", f"web.main.port={port}",
                               "-O", "ner.min_children=2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    processes = [daemon]
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", daemon)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status") as response:
            children = json.loads(response.read())["components"]["ner.pool"]["processes"]
        pids = {"reactor process": daemon.pid, "NER child": children[0]["pid"]}
        phase("load", port, news, options.concurrency, pids, options.seconds, workdir, options.top)
        phase("one word", port, words, 1, pids, options.seconds, workdir, options.top)
        peer_port = free_port()
        peer = subprocess.Popen([os.path.join(BIN, "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{peer_port}",
                                 "--chdir", HERE, "--log-level", "warning", "--timeout", "300", "peer_falcon:app"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(peer)
        wait_peer(f"http://127.0.0.1:{peer_port}/articles")
        loader = load(f"http://127.0.0.1:{peer_port}/articles", news, options.concurrency)
        time.sleep(1.0)
        worker = children_of(peer.pid)[0]
        path = os.path.join(workdir, "peer-worker.txt")
        record(worker, options.seconds, path).wait()
        loader.kill()
        loader.wait()
        print(f"\n## the peer under the same load: a gunicorn worker (pid {worker})")
        print("\n".join(summarise(path, options.top)))
    finally:
        stop_all(processes)


if __name__ == "__main__":
    main()
