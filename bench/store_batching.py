"""The batched Firestore sink against one ``set()`` per document, on the emulator.

    .venv/bin/python bench/store_batching.py [--articles 2000] [--runs 3] [--body-bytes 2000]
                                             [--entity-counters [--own-entities 5]]

Starts its own emulator on a free port, warms it up (a JVM) with both paths,
stores the same articles both ways (the database cleared in between), and prints
the median writes/s of the runs.  The
naive sink is what the seed app did: one blocking ``set()`` per article, in turn.
The batched sink is ``FirestoreStore``: puts from the reactor, committed in batches
on its thread pool; with ``--entity-counters`` it also counts each article's
entities (3 shared by every article, ``--own-entities`` of its own) in the
sharded counters, which the naive sink never does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from firestore_emulator import FirestoreEmulator  # noqa: E402


def articles(count: int, body_bytes: int, run: int, own_entities: int = 0) -> list[dict]:
    body = ("Ada Lovelace met Charles Babbage in London. " * (body_bytes // 44 + 1))[:body_bytes]
    shared = [{"text": "Ada Lovelace", "label": "PERSON", "start": 0, "end": 12},
              {"text": "Charles Babbage", "label": "PERSON", "start": 17, "end": 32},
              {"text": "London", "label": "GPE", "start": 36, "end": 42}]

    def entities(n):
        return shared + [{"text": f"Org {run}.{n}.{k}", "label": "ORG", "start": 0, "end": 1}
                         for k in range(own_entities)]

    return [{"id": f"bench-{run}-{n}", "title": f"Title {n}", "source": "bench",
             "url": f"https://example.com/{n}", "published": "2025-01-31T12:00:00Z", "body": body,
             "entities": entities(n), "entity_counts": {"PERSON": 2, "GPE": 1, "ORG": own_entities},
             "words": len(body.split()), "model": {"name": "en_core_web_sm", "version": "3.8.0"}}
            for n in range(count)]


def naive(project: str, batch: list[dict]) -> float:
    """One blocking set() per document; returns seconds."""
    from google.cloud import firestore

    client = firestore.Client(project=project)
    collection = client.collection("articles")
    started = time.perf_counter()
    for article in batch:
        fields = {k: v for k, v in article.items() if k != "id"}
        collection.document(article["id"]).set(dict(fields, ingested_at=firestore.SERVER_TIMESTAMP))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--body-bytes", type=int, default=2000)
    parser.add_argument("--concurrent-commits", type=int, default=2)
    parser.add_argument("--batch-writes", type=int, default=500)
    parser.add_argument("--entity-counters", action="store_true", help="the batched store counts entities")
    parser.add_argument("--own-entities", type=int, default=0, help="entities of each article's own")
    options = parser.parse_args()

    emulator = FirestoreEmulator(project="pipedingest-bench").start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = emulator.project
    from twisted.internet import defer, reactor, threads

    from pipedingest.store.firestore import FirestoreStore

    figures = {"naive set()": [], "batched store": []}

    @defer.inlineCallbacks
    def measure():
        try:
            # The emulator is a JVM: both paths run once untimed so that neither pays its warm-up.
            yield threads.deferToThread(naive, emulator.project, articles(300, options.body_bytes, -1))
            store = FirestoreStore(project=emulator.project, entity_counters=options.entity_counters)
            store.startService()
            yield defer.gatherResults([store.put(a) for a in
                                       articles(2000, options.body_bytes, -2, options.own_entities)])
            yield store.stopService()
            for run in range(options.runs):
                emulator.clear()
                figures["naive set()"].append(
                    options.articles / (yield threads.deferToThread(
                        naive, emulator.project, articles(options.articles, options.body_bytes, run))))
                emulator.clear()
                store = FirestoreStore(project=emulator.project, max_batch_writes=options.batch_writes,
                                       max_concurrent_commits=options.concurrent_commits,
                                       threads=options.concurrent_commits + 2,
                                       entity_counters=options.entity_counters)
                store.startService()
                batch = articles(options.articles, options.body_bytes, run, options.own_entities)
                started = time.perf_counter()
                results = yield defer.gatherResults([store.put(article) for article in batch])
                elapsed = time.perf_counter() - started
                assert results == [True] * options.articles, "some articles were not created"
                state = store.state()
                yield store.stopService()
                figures["batched store"].append(options.articles / elapsed)
                counted = (f", {state['counter_writes']} shard-document writes carrying "
                           f"{state['counter_increments']} increments" if options.entity_counters else "")
                print(f"run {run + 1}: naive {figures['naive set()'][-1]:8.0f} writes/s, batched "
                      f"{figures['batched store'][-1]:8.0f} writes/s ({state['commits']} commits, "
                      f"largest {state['largest_commit']['writes']} writes{counted})", flush=True)
        finally:
            reactor.stop()

    reactor.callWhenRunning(measure)
    try:
        reactor.run()
    finally:
        emulator.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    counting = (f", counting {3 + options.own_entities} entities each" if options.entity_counters else "")
    print(f"\n{options.articles} articles of {options.body_bytes}-byte bodies{counting}, "
          f"median of {options.runs} runs:")
    for name, value in medians.items():
        print(f"  {name:14} {value:8.0f} writes/s")
    if medians["naive set()"]:
        print(f"  speed-up       {medians['batched store'] / medians['naive set()']:8.1f}x")


if __name__ == "__main__":
    main()
