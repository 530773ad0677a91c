"""Re-extraction throughput: ``ingest-reextract`` over stored articles after a model upgrade (SQLite).

    .venv/bin/python bench/reextract.py [--articles 500] [--runs 3] [--concurrency 8] [--children 2]

Stores the first N real news articles through a ``twistd ingest`` daemon on the shipped model
(``ingest-load``, timed as the first ingest), stops it and keeps that SQLite file. Each run then starts
from a copy of it: a daemon on the upgraded model (``tests/models.py``: same name, version 3.8.1) with
``find-stored-article: {reextract: when-model-differs}`` (the shipped articles API), and ``ingest-reextract``
walks every article through it; its articles/s and words/s are the run's. Prints each run, the medians, and
the first ingest beside them: re-extraction costs one store read, one extraction and one replace (the
counters corrected in its commit) per article, against one extraction and one insert.
Not a test: nothing here asserts a speed. The daemons' start-up is not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from ner_http import free_port, load, wait_ready  # noqa: E402
from raw_vs_pool import corpus  # noqa: E402
from tests.models import upgraded_model  # noqa: E402

CONFIG = """\
includes: [{articles}]
stores:
  articles: {{kind: sqlite, path: data/articles.sqlite, entity_counters: true}}
  statustests: {{kind: sqlite, path: data/articles.sqlite, table: statustest_articles}}
"""
SOURCES = ("wire", "blog", "paper")


def daemon(workdir: str, port: int, children: int, *overrides: str) -> subprocess.Popen:
    """``twistd ingest`` on the bench configuration, ready (its /ready answers 200)."""
    args = [os.path.join(BIN, "twistd"), "--pidfile=", "-n", "ingest", "-c", os.path.join(workdir, "conf.yaml"),
            "-O", f"web.main.port={port}", "-O", f"ner.min_children={children}",
            "-O", f"ner.max_children={children}"]
    for override in overrides:
        args += ["-O", override]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    wait_ready(f"http://127.0.0.1:{port}/ready", process)
    return process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def copy_database(source: str, target: str) -> None:
    """The SQLite file (and its WAL files, if a stop left any) from folder *source* to folder *target*."""
    os.makedirs(target, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        path = os.path.join(source, "articles.sqlite" + suffix)
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(target, "articles.sqlite" + suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--children", type=int, default=2, help="NER children of each daemon (default 2)")
    options = parser.parse_args()

    texts = corpus(options.articles)
    words = sum(len(t.split()) for t in texts)
    workdir = tempfile.mkdtemp(prefix="pipedingest-reextract-bench-")
    with open(os.path.join(workdir, "conf.yaml"), "w", encoding="utf-8") as stream:
        stream.write(CONFIG.format(articles=os.path.join(ROOT, "conf", "articles.yaml")))
    articles = os.path.join(workdir, "articles.jsonl")
    with open(articles, "w", encoding="utf-8") as stream:
        for index, text in enumerate(texts):
            stream.write(json.dumps({"id": f"news-{index:05d}", "source": SOURCES[index % 3], "body": text}) + "\n")
    model = upgraded_model(workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}/articles"
    print(f"{len(texts)} articles, {words} words; {options.children} NER children, {options.concurrency} in flight",
          flush=True)

    process = daemon(workdir, port, options.children)
    try:
        first = load(url, articles, options.concurrency)
    finally:
        stop(process)
    print(f"first ingest (shipped model): {first['articles_per_second']} articles/s, "
          f"{first['words_per_second']} words/s", flush=True)
    pristine = os.path.join(workdir, "pristine")
    copy_database(os.path.join(workdir, "data"), pristine)

    rows = []
    for number in range(1, options.runs + 1):
        shutil.rmtree(os.path.join(workdir, "data"))
        copy_database(pristine, os.path.join(workdir, "data"))
        process = daemon(workdir, port, options.children, f"ner.model={model}")
        try:
            result = subprocess.run([os.path.join(BIN, "ingest-reextract"), "-c", "conf.yaml", "--url", url,
                                     "-n", str(options.concurrency), "--state", f"run{number}.state",
                                     "--failed", os.devnull, "--json", "--quiet"],
                                    capture_output=True, text=True, cwd=workdir, check=False)
        finally:
            stop(process)
        if result.returncode:
            raise SystemExit(f"ingest-reextract failed ({result.returncode}): {result.stdout}{result.stderr}")
        report = json.loads(result.stdout)
        rows.append(report)
        print(f"run {number}: {report['articles_per_second']} articles/s, {report['words_per_second']} words/s, "
              f"{report['changed']} changed, {report['unchanged']} unchanged, {report['failed']} failed, "
              f"p50 {report['requests']['latency_p50_ms']} ms, p99 {report['requests']['latency_p99_ms']} ms",
              flush=True)
    articles_per_second = statistics.median(r["articles_per_second"] for r in rows)
    words_per_second = statistics.median(r["words_per_second"] for r in rows)
    print(f"median re-extraction: {articles_per_second} articles/s, {words_per_second} words/s "
          f"({words_per_second / first['words_per_second']:.2f} × the first ingest's words/s)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
