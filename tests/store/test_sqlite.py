"""The SQLite store against a real database file."""
from __future__ import annotations

import json
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.store.base import DocumentTooLarge, IArticleStore, InvalidArticle, StoreUnavailable
from pipedingest.store.sqlite import SQLiteStore


@pytest_twisted.ensureDeferred
async def test_round_trip_and_recent_newest_first(sqlite_stores, make_article):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    store = sqlite_stores(clock=clock)
    assert IArticleStore.providedBy(store)
    for n, source in ((1, "wire"), (2, "wire"), (3, "blog")):
        assert await store.put(make_article(n, source=source)) is True
        clock.advance(1.5)

    got = await store.get("article-1")
    expected = make_article(1)
    assert got == {**expected, "ingested_at": "2023-11-14T22:13:20.000000Z"}
    json.dumps(got)
    assert await store.get("absent") is None
    assert [d["id"] for d in await store.recent()] == ["article-3", "article-2", "article-1"]
    assert [d["id"] for d in await store.recent(source="wire")] == ["article-2", "article-1"]
    assert [d["id"] for d in await store.recent(limit=1)] == ["article-3"]


@pytest_twisted.ensureDeferred
async def test_same_timestamp_keeps_insertion_order(sqlite_stores, make_article):
    store = sqlite_stores(clock=task.Clock())
    for n in range(5):
        await store.put(make_article(n))
    assert [d["id"] for d in await store.recent()] == [f"article-{n}" for n in (4, 3, 2, 1, 0)]


@pytest_twisted.ensureDeferred
async def test_concurrent_duplicates_make_one_row_and_count_once(sqlite_stores, make_article):
    store = sqlite_stores(entity_counters=True)
    puts = [store.put(make_article(7)) for _ in range(50)] + [store.put(make_article(8, source="other"))]
    results = await defer.gatherResults(puts)
    assert results[:50].count(True) == 1 and results[:50].count(False) == 49
    assert results[50] is True
    assert len(await store.recent(limit=1000)) == 2
    assert await store.entity_counters("wire") == {
        "Ada Lovelace": {"count": 1, "labels": {"PERSON": 1}},
        "Charles Babbage": {"count": 1, "labels": {"PERSON": 1}},
        "London": {"count": 1, "labels": {"GPE": 1}},
    }
    state = store.state()
    assert (state["created"], state["existing"], state["errors"]) == (2, 49, 0)


@pytest_twisted.ensureDeferred
async def test_counters_add_up_across_articles(sqlite_stores, make_article):
    store = sqlite_stores(entity_counters=True)
    entities = [{"text": "Paris", "label": "GPE", "start": 0, "end": 5},
                {"text": "Paris", "label": "PERSON", "start": 9, "end": 14}]
    for n in range(3):
        await store.put(make_article(n, entities=entities))
    assert await store.entity_counters("wire") == {"Paris": {"count": 6, "labels": {"GPE": 3, "PERSON": 3}}}


@pytest_twisted.ensureDeferred
async def test_every_call_runs_on_one_thread_that_is_not_the_reactors(sqlite_stores):
    store = sqlite_stores()
    idents = await defer.gatherResults([store.in_thread(threading.get_ident) for _ in range(30)])
    assert len(set(idents)) == 1
    assert idents[0] != threading.get_ident()
    assert store.state()["threads"]["size"] == 1


@pytest_twisted.ensureDeferred
async def test_wal_mode_and_data_survive_a_restart(sqlite_stores, make_article, tmp_path):
    path = str(tmp_path / "kept.sqlite")
    first = sqlite_stores(path=path)
    await first.put(make_article(1))
    await first.stopService()
    with sqlite3.connect(path) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second = sqlite_stores(path=path)
    assert (await second.get("article-1"))["title"] == "Title 1"
    assert await second.put(make_article(1)) is False
    await second.stopService()
    second.startService()  # the same service again, as a MultiService may restart it
    assert await second.put(make_article(2)) is True
    json.dumps(second.state())


@pytest_twisted.ensureDeferred
async def test_stop_settles_every_accepted_put_then_refuses(sqlite_stores, make_article):
    store = sqlite_stores()
    puts = [store.put(make_article(n)) for n in range(200)]
    await store.stopService()
    assert all(put.called for put in puts)
    assert (await defer.gatherResults(puts)).count(True) == 200
    with pytest.raises(StoreUnavailable):
        await store.put(make_article(999))


@pytest_twisted.ensureDeferred
async def test_refusals_are_permanent_and_counted(sqlite_stores, make_article):
    store = sqlite_stores()
    with pytest.raises(DocumentTooLarge) as too_large:
        await store.put(make_article(1, body="x" * 1_100_000))
    assert too_large.value.limit == 1_048_576 and too_large.value.size > 1_100_000
    with pytest.raises(InvalidArticle, match="contains '/'"):
        await store.put(make_article(2, id="a/b"))
    with pytest.raises(InvalidArticle, match="does not keep: colour"):
        await store.put(make_article(3, colour="red"))
    assert await store.get("article-1") is None
    assert store.state()["errors"] == 3


def test_memory_database_and_bad_table_name():
    with pytest.raises(ValueError, match="identifier"):
        SQLiteStore(":memory:", table="articles; DROP TABLE x")


@pytest_twisted.ensureDeferred
async def test_memory_database_works_on_its_one_connection(sqlite_stores, make_article):
    store = sqlite_stores(path=":memory:", table="status_articles")
    assert await store.put(make_article(1)) is True
    assert (await store.get("article-1"))["id"] == "article-1"


@pytest_twisted.ensureDeferred
async def test_two_stores_opening_one_new_file_at_once_both_start(tmp_path):
    """The shipped configs keep two tables in one file, and the daemon starts both stores side by side."""
    for attempt in range(40):
        path = str(tmp_path / f"shared-{attempt}.sqlite")
        stores = [SQLiteStore(path), SQLiteStore(path, table="statustest_articles")]
        try:
            await defer.gatherResults([store.startService() for store in stores], consumeErrors=True)
        finally:
            await defer.gatherResults([store.stopService() for store in stores if store.running])
    database = sqlite3.connect(path)
    tables = {row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    database.close()
    assert {"articles", "statustest_articles"} <= tables
