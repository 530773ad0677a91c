"""Stored articles/s through the daemon (conf/prod.yaml) into the Firestore emulator.

    .venv/bin/python bench/store_http.py [--articles 300] [--concurrency 8] [--rounds 3]

Starts its own emulator and a ``twistd ingest -c conf/prod.yaml`` pointed at it, then posts the same real
news articles with ``ingest-load`` (each round with fresh ids, so every article is a new document), and
prints articles/s, words/s and latency per round and their medians. Every 2xx answer is a stored document
(the daemon answers only after the commit); the script checks the count in the emulator afterwards.
Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from firestore_emulator import FirestoreEmulator  # noqa: E402
from ner_http import free_port, load, wait_ready  # noqa: E402
from raw_vs_pool import corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    texts = corpus(options.articles)
    words = sum(len(t.split()) for t in texts)
    workdir = tempfile.mkdtemp(prefix="pipedingest-store-bench-")
    emulator = FirestoreEmulator(project="pipedingest-bench").start()
    port = free_port()
    env = dict(os.environ, FIRESTORE_EMULATOR_HOST=emulator.host, GOOGLE_CLOUD_PROJECT=emulator.project)
    daemon = subprocess.Popen([os.path.join(BIN, "twistd"), "--pidfile=", "-n", "ingest", "-c",
                               os.path.join(ROOT, "conf", "prod.yaml"), "-O", f"web.main.port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", daemon)
        rows = []
        print(f"{len(texts)} articles, {words} words per round, {options.concurrency} in flight", flush=True)
        for number in range(1, options.rounds + 1):
            path = os.path.join(workdir, f"round{number}.jsonl")
            with open(path, "w", encoding="utf-8") as stream:
                for index, text in enumerate(texts):
                    stream.write(json.dumps({"id": f"r{number}-{index}", "source": "bench", "body": text}) + "\n")
            summary = load(f"http://127.0.0.1:{port}/articles", path, options.concurrency)
            rows.append(summary)
            print(f"round {number}: {summary['articles_per_second']} stored articles/s, "
                  f"{words / summary['seconds']:.0f} words/s, p50 {summary['latency_p50_ms']} ms, "
                  f"p99 {summary['latency_p99_ms']} ms, statuses {summary['statuses']}", flush=True)
        print(f"median: {statistics.median(r['articles_per_second'] for r in rows)} stored articles/s, "
              f"p99 {statistics.median(r['latency_p99_ms'] for r in rows)} ms")
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import firestore

        os.environ.update(FIRESTORE_EMULATOR_HOST=emulator.host)
        client = firestore.Client(project=emulator.project, credentials=AnonymousCredentials())
        stored = client.collection("articles").count().get()[0][0].value
        print(f"documents in the emulator: {stored} (posted {len(texts) * options.rounds})")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        emulator.stop()


if __name__ == "__main__":
    main()
