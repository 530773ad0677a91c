"""The SQLite store's entity day buckets: ``top_entities`` and ``timeline``, against a real database file.

Every bucket check compares the whole ``{table}_entity_days`` table with a recount of the stored documents read
with sqlite3 (:func:`recount`), so a bucket counted twice, left behind by a replace, or left at 0 shows.
"""
from __future__ import annotations

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.article import document_keys, split_key
from pipedingest.dates import day_of
from pipedingest.store.base import QueryUnsupported
from pipedingest.store.sqlite import SQLiteStore

OLD_MODEL = {"name": "en_core_web_sm", "version": "3.8.0"}
NEW_MODEL = {"name": "en_core_web_sm", "version": "3.8.1"}
FEB_1 = "2025-02-01T08:00:00.000000Z"


def entity(text: str, label: str) -> dict:
    return {"text": text, "label": label, "start": 0, "end": len(text)}


def recount(path, table: str = "articles") -> dict[tuple, int]:
    """``{(source, day, key): articles}`` from the stored documents, as the counting rule says."""
    counts: dict[tuple, int] = {}
    with sqlite3.connect(path) as db:
        for source, ingested_at, document in db.execute(f"SELECT source, ingested_at, document FROM {table}"):
            document = json.loads(document)
            day = day_of(document.get("published_at") or ingested_at)
            for key in document_keys(document):
                counts[(source, day, key)] = counts.get((source, day, key), 0) + 1
    return counts


def buckets(path, table: str = "articles") -> dict[tuple, int]:
    """The day buckets as stored, each row's label checked against its key."""
    found = {}
    with sqlite3.connect(path) as db:
        for source, day, key, label, count in db.execute(
                f"SELECT source, day, key, label, count FROM {table}_entity_days"):
            assert label == (split_key(key)[1] or ""), key
            found[(source, day, key)] = count
    return found


def assert_buckets_recount(path, table: str = "articles") -> dict[tuple, int]:
    expected = recount(path, table)
    assert buckets(path, table) == expected
    assert all(n > 0 for n in expected.values())
    return expected


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "articles.sqlite")


@pytest_twisted.async_yield_fixture
async def opened(path):
    """``await opened(entity_counters)``: a store of *path*, started (and stopped after the test, even when its
    start failed); a start after a stop is the daemon restarting."""
    started = []

    async def start(entity_counters: bool) -> SQLiteStore:
        store = SQLiteStore(path, entity_counters=entity_counters)
        started.append(store)
        await store.startService()
        return store

    yield start
    for store in started:
        if store.running:
            await store.stopService()


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(1_738_800_000)  # 2025-02-06T00:00:00Z
    return clock


@pytest_twisted.ensureDeferred
async def test_an_article_counts_once_per_key_on_the_day_it_sorts_by(sqlite_stores, make_article, path, clock):
    store = sqlite_stores(path=path, entity_counters=True, clock=clock)
    apple_twice = [entity("Apple", "ORG"), entity("APPLE ", "ORG"), entity("Apple", "PERSON")]
    puts = [store.put(make_article(1, entities=apple_twice, published_at=FEB_1)) for _ in range(20)]
    assert (await defer.gatherResults(puts)).count(True) == 1
    assert await store.put(make_article(2, entities=apple_twice[:1], published_at=FEB_1)) is True
    clock.advance(3600)
    # No published_at: counted on the day it was ingested (the clock's).
    assert await store.put(make_article(3, entities=apple_twice[:1], source="blog")) is True

    assert assert_buckets_recount(path) == {
        ("wire", "2025-02-01", "apple"): 2, ("wire", "2025-02-01", "apple|ORG"): 2,
        ("wire", "2025-02-01", "apple|PERSON"): 1,
        ("blog", "2025-02-06", "apple"): 1, ("blog", "2025-02-06", "apple|ORG"): 1}
    assert await store.top_entities("wire", "2025-02-01", "2025-02-02") == {
        "entities": [{"key": "apple|ORG", "count": 2}, {"key": "apple|PERSON", "count": 1}], "as_of": None}
    assert await store.timeline("apple") == {"days": {"2025-02-01": 2, "2025-02-06": 1}, "as_of": None}
    assert await store.timeline("apple|PERSON", source="wire") == {"days": {"2025-02-01": 1}, "as_of": None}
    assert await store.timeline("apple|ORG", source="blog") == {"days": {"2025-02-06": 1}, "as_of": None}
    assert await store.timeline("pear") == {"days": {}, "as_of": None}


@pytest_twisted.ensureDeferred
async def test_windows_include_since_and_exclude_until(sqlite_stores, make_article, path):
    store = sqlite_stores(path=path, entity_counters=True)
    for n, day in enumerate(["2025-01-31", "2025-02-01", "2025-02-02", "2025-02-03"]):
        await store.put(make_article(n, entities=[entity("Oslo", "GPE")], published_at=f"{day}T23:59:59.999999Z"))
    assert await store.timeline("oslo|GPE", since="2025-02-01", until="2025-02-03") == {
        "days": {"2025-02-01": 1, "2025-02-02": 1}, "as_of": None}
    assert (await store.top_entities("wire", "2025-02-01", "2025-02-03"))["entities"] == [
        {"key": "oslo|GPE", "count": 2}]
    assert (await store.top_entities("wire", "2025-02-04", "2025-03-01"))["entities"] == []
    assert (await store.top_entities("nobody", "2025-01-01", "2025-03-01"))["entities"] == []


@pytest_twisted.ensureDeferred
async def test_top_entities_most_first_then_key_the_label_narrows_the_limit_cuts(sqlite_stores, make_article, path):
    store = sqlite_stores(path=path, entity_counters=True)
    mentions = [["Zeta", "Alpha", "Mid"], ["Zeta", "Alpha", "Mid"], ["Zeta", "Alpha"], ["Beta"], ["Beta"], ["Beta"]]
    for n, texts in enumerate(mentions):
        labels = {"Mid": "GPE", "Beta": "PERSON"}
        await store.put(make_article(n, entities=[entity(text, labels.get(text, "ORG")) for text in texts],
                                     published_at=FEB_1))
    top = await store.top_entities("wire", "2025-02-01", "2025-02-02")
    # Ties (3 each) by key ascending; only labelled keys, never "zeta" alone.
    assert top["entities"] == [{"key": "alpha|ORG", "count": 3}, {"key": "beta|PERSON", "count": 3},
                               {"key": "zeta|ORG", "count": 3}, {"key": "mid|GPE", "count": 2}]
    assert (await store.top_entities("wire", "2025-02-01", "2025-02-02", limit=2))["entities"] == top["entities"][:2]
    assert (await store.top_entities("wire", "2025-02-01", "2025-02-02", label="ORG"))["entities"] == [
        {"key": "alpha|ORG", "count": 3}, {"key": "zeta|ORG", "count": 3}]
    assert (await store.top_entities("wire", "2025-02-01", "2025-02-02", label="DATE"))["entities"] == []
    with pytest.raises(ValueError, match="limit"):
        await store.top_entities("wire", "2025-02-01", "2025-02-02", limit=0)


@pytest_twisted.ensureDeferred
async def test_a_replace_moves_the_counts_with_the_article(sqlite_stores, make_article, path, clock):
    store = sqlite_stores(path=path, entity_counters=True, clock=clock)
    old = make_article(1, entities=[entity("Ada Lovelace", "PERSON"), entity("London", "GPE")],
                       published_at=FEB_1, model=OLD_MODEL)
    await store.put(old)
    await store.put(make_article(2, entities=[entity("London", "GPE")], published_at=FEB_1))
    assert_buckets_recount(path)

    # Keys change: Ada gone (its buckets at 0 deleted), London kept, Babbage new.
    keys_changed = {**old, "entities": [entity("London", "GPE"), entity("Charles Babbage", "PERSON")],
                    "model": NEW_MODEL}
    assert await store.replace(keys_changed) == "replaced"
    counted = assert_buckets_recount(path)
    assert ("wire", "2025-02-01", "london|GPE") in counted and counted[("wire", "2025-02-01", "london|GPE")] == 2
    assert not any("ada" in key for _, _, key in counted)

    # Source and day change: its keys leave wire's 1 February for blog's 3 February.
    moved = {**keys_changed, "source": "blog", "published_at": "2025-02-03T10:00:00.000000Z",
             "model": {**NEW_MODEL, "version": "3.8.2"}}
    assert await store.replace(moved) == "replaced"
    counted = assert_buckets_recount(path)
    assert counted[("wire", "2025-02-01", "london|GPE")] == 1
    assert counted[("blog", "2025-02-03", "charles babbage|PERSON")] == 1
    assert await store.timeline("london") == {"days": {"2025-02-01": 1, "2025-02-03": 1}, "as_of": None}

    # No published_at any more: the article sorts, and counts, by the ingested_at it keeps.
    clock.advance(86400 * 10)
    undated = {key: value for key, value in moved.items() if key != "published_at"}
    assert await store.replace({**undated, "model": {**NEW_MODEL, "version": "3.9.0"}}) == "replaced"
    assert_buckets_recount(path)
    assert (await store.timeline("london", source="blog"))["days"] == {"2025-02-06": 1}

    # Unchanged (same model) and a put of the stored id change nothing.
    before = buckets(path)
    assert await store.replace({**undated, "model": {**NEW_MODEL, "version": "3.9.0"}, "entities": []}) == "unchanged"
    assert await store.put(old) is False
    assert buckets(path) == before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM articles_entity_days WHERE count <= 0").fetchone()[0] == 0


@pytest_twisted.ensureDeferred
async def test_a_replace_of_an_absent_id_counts_as_a_put(sqlite_stores, make_article, path):
    store = sqlite_stores(path=path, entity_counters=True)
    assert await store.replace(make_article(1, published_at=FEB_1)) == "created"
    assert assert_buckets_recount(path)[("wire", "2025-02-01", "london|GPE")] == 1


@pytest_twisted.ensureDeferred
async def test_buckets_are_built_for_articles_stored_before_them_once(opened, make_article, path):
    """A database whose articles were stored without counters gets its buckets when a counting store opens
    it; opening it again counts nothing twice; articles stored while a store did not count are counted when
    one that counts opens it again."""
    store = await opened(False)
    for n in range(5):
        await store.put(make_article(n, source=("wire", "blog")[n % 2], published_at=f"2025-02-0{n + 1}T12:00:00Z"))
    with pytest.raises(QueryUnsupported, match="entity_counters: true"):
        await store.top_entities("wire", "2025-02-01", "2025-03-01")
    with pytest.raises(QueryUnsupported, match="entity_counters: true"):
        await store.timeline("london")
    await store.stopService()

    for _ in range(2):  # the second start finds them built and leaves them
        store = await opened(True)
        assert len(assert_buckets_recount(path)) == 5 * 6
        assert await store.timeline("london|GPE", source="blog") == {"days": {"2025-02-02": 1, "2025-02-04": 1},
                                                                    "as_of": None}
        await store.stopService()

    store = await opened(False)
    await store.put(make_article(9, published_at="2025-02-01T12:00:00Z"))
    await store.stopService()
    store = await opened(True)
    assert (await store.timeline("london", since="2025-02-01", until="2025-02-02"))["days"] == {"2025-02-01": 2}
    assert len(assert_buckets_recount(path)) == 5 * 6
    await store.put(make_article(10, published_at="2025-02-01T12:00:00Z"))
    await store.stopService()
    store = await opened(True)
    assert (await store.timeline("london", since="2025-02-01", until="2025-02-02"))["days"] == {"2025-02-01": 3}
    assert_buckets_recount(path)
    await store.stopService()

    # An earlier version of the daemon stores an article (no key rows, no buckets): counted at the next start.
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO articles VALUES ('older', 'wire', '2025-02-01T13:00:00.000000Z', ?)",
                   (json.dumps({"source": "wire", "body": "London.", "entities": [entity("London", "GPE")]}),))
    store = await opened(True)
    assert (await store.timeline("london", since="2025-02-01", until="2025-02-02"))["days"] == {"2025-02-01": 4}
    assert_buckets_recount(path)


@pytest_twisted.ensureDeferred
async def test_buckets_are_built_for_a_database_of_an_earlier_version(opened, path):
    """The schema and documents of before the index table: no entity_keys, no published_at."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE articles (id TEXT PRIMARY KEY, source TEXT NOT NULL, ingested_at TEXT NOT NULL, "
                   "document TEXT NOT NULL)")
        for n, day in enumerate(["2026-01-01", "2026-01-01", "2026-01-02"]):
            document = {"source": "wire", "body": "Tim Cook.", "entities": [entity("Tim Cook", "PERSON")] * 2,
                        "entity_counts": {"PERSON": 2}, "words": 2, "model": OLD_MODEL}
            db.execute("INSERT INTO articles VALUES (?, 'wire', ?, ?)",
                       (f"old-{n}", f"{day}T10:00:00.000000Z", json.dumps(document)))
    store = await opened(True)
    assert await store.timeline("tim cook|PERSON") == {"days": {"2026-01-01": 2, "2026-01-02": 1}, "as_of": None}
    assert (await store.top_entities("wire", "2026-01-01", "2026-01-03"))["entities"] == [
        {"key": "tim cook|PERSON", "count": 3}]
    assert_buckets_recount(path)


@pytest_twisted.ensureDeferred
async def test_a_store_without_counters_keeps_no_buckets_and_says_how_to_have_them(sqlite_stores, make_article, path):
    store = sqlite_stores(path=path)
    store.setName("store.articles")
    await store.put(make_article(1))
    with pytest.raises(QueryUnsupported) as refused:
        await store.top_entities("wire", "2025-02-01", "2025-03-01")
    assert "set entity_counters: true under stores: articles" in str(refused.value)
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "articles_entity_days" not in tables
