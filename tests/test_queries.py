"""``query-articles`` over SQLite: which stored articles mention an entity, newest first, page by page.

Real corpus articles go through a daemon (real children, real SQLite); what the route answers is compared with
a direct scan of the stored documents, read from the database file with sqlite3.
"""
from __future__ import annotations

import base64
import json
import sqlite3
from urllib.parse import urlencode

import pytest_twisted
import treq

from pipedingest.article import entity_key
from pipedingest.load import read_articles
from tests.conftest import url
from tests.corpus import corpus_path

CONFIG = """
web:
  main:
    port: 0
    routing:
      articles: {__config__: {processor: pipeline.create, methods: [POST]}}
      find: {__config__: {processor: pipeline.find, methods: [GET], query: [entity, label, source, since, until, limit, cursor]}}
ner: {min_children: 1}
stores:
  articles: {kind: sqlite, path: store.sqlite, entity_counters: true}
pipelines:
  create:
    - validate-article
    - extract-entities
    - store-article
    - write-web-response: {input_path: result, status_path: status}
  find:
    - query-articles: {pools: [ner.pool], max_limit: 50}
    - write-web-response
"""
JSON = {"content-type": ["application/json"]}
SOURCES = ("wire", "desk", "blog")


def corpus_articles(start: int, count: int) -> list[dict]:
    articles = [a for a in read_articles(corpus_path(), start + count + 50) if a["body"].strip()][start:start + count]
    return [{**article, "source": SOURCES[n % 3]} for n, article in enumerate(articles)]


async def post(daemon, article) -> int:
    response = await treq.post(url(daemon, "/articles"), json.dumps(article).encode(), headers=JSON)
    await response.content()
    return response.code


async def find(daemon, **query) -> tuple[int, dict]:
    response = await treq.get(url(daemon, "/find?" + urlencode(query)))
    return response.code, json.loads(await response.content())


def scan(path, key: str = "", source=None, since=None, until=None) -> list[str]:
    """The ids a direct scan of the stored documents finds, newest first."""
    found = []
    with sqlite3.connect(path) as db:
        for article_id, ingested_at, document in db.execute("SELECT id, ingested_at, document FROM articles"):
            document = json.loads(document)
            keys = {""} | {entity_key(e["text"]) for e in document["entities"]} | \
                {entity_key(e["text"], e["label"]) for e in document["entities"]}
            sort_at = document.get("published_at") or ingested_at
            if key in keys and (source is None or document["source"] == source) \
                    and (since is None or sort_at >= since) and (until is None or sort_at < until):
                found.append((sort_at, article_id))
    return [article_id for _, article_id in sorted(found, reverse=True)]


async def walk(daemon, between=None, **query) -> list[str]:
    ids, cursor, page = [], None, 0
    while True:
        status, answer = await find(daemon, **query, **({"cursor": cursor} if cursor else {}))
        assert status == 200, answer
        ids += [article["id"] for article in answer["articles"]]
        cursor = answer["next_cursor"]
        page += 1
        if cursor is None:
            return ids
        if between is not None:
            await between(page)


@pytest_twisted.ensureDeferred
async def test_entity_queries_answer_what_a_scan_of_the_stored_documents_finds(daemons, tmp_path):
    daemon = await daemons(CONFIG)
    articles = corpus_articles(0, 60)
    assert [await post(daemon, article) for article in articles] == [201] * len(articles)
    store = tmp_path / "store.sqlite"

    assert await walk(daemon, limit=7) == scan(store)
    by_count = {}
    with sqlite3.connect(store) as db:
        for (document,) in db.execute("SELECT document FROM articles"):
            for entity in json.loads(document)["entities"]:
                by_count[(entity["text"], entity["label"])] = by_count.get((entity["text"], entity["label"]), 0) + 1
    popular = sorted(by_count, key=lambda pair: -by_count[pair])[:4]
    for text, label in popular:
        expected = scan(store, entity_key(text))
        assert len(expected) >= 2
        # Case and whitespace do not matter; the label narrows.
        assert await walk(daemon, entity=f"  {text.upper()}  ", limit=3) == expected
        assert await walk(daemon, entity=text, label=label, limit=50) == scan(store, entity_key(text, label))
        assert await walk(daemon, entity=text, source="wire") == scan(store, entity_key(text), source="wire")
    window = scan(store, since="2016-06-01T00:00:00.000000Z", until="2017-02-07T00:00:00.000000Z")
    assert 0 < len(window) < len(articles)
    assert await walk(daemon, since="2016-06-01", until="2017/2/7", limit=2) == window


@pytest_twisted.ensureDeferred
async def test_pages_neither_repeat_nor_miss_while_articles_are_stored(daemons, tmp_path):
    daemon = await daemons(CONFIG)
    first = corpus_articles(0, 30)
    assert [await post(daemon, article) for article in first] == [201] * 30
    before = scan(tmp_path / "store.sqlite")
    more = iter(corpus_articles(30, 30))

    async def store_some(page):
        for _ in range(5):
            article = next(more, None)
            if article is not None:
                assert await post(daemon, article) == 201

    walked = await walk(daemon, between=store_some, limit=4)
    assert len(walked) == len(set(walked)), "an article was answered twice"
    assert set(before) <= set(walked), "an article stored before the walk was missed"
    assert len(scan(tmp_path / "store.sqlite")) == 60


@pytest_twisted.ensureDeferred
async def test_bad_queries_get_a_json_400_with_the_reason(daemons):
    daemon = await daemons(CONFIG)
    assert await post(daemon, {"id": "one", "body": "Apple hired Tim Cook.", "published": "2017/2/7"}) == 201
    forged = base64.urlsafe_b64encode(b'["yesterday", "one"]').decode()
    cases = {
        "since=last+week": "since 'last week' is not a date",
        "until=2017-02-30": "until '2017-02-30' is not a date",
        "limit=0": "limit must be a whole number from 1 to 50",
        "limit=51": "limit must be a whole number from 1 to 50",
        "limit=ten": "limit must be a whole number from 1 to 50",
        "entity=Apple&label=FRUIT": "unknown label 'FRUIT'",
        "label=ORG": "label narrows an entity",
        "entity=+++": "entity must be 1 to 512 characters",
        "cursor=%%%": "the cursor does not decode",
        f"cursor={forged}": "the cursor names no position",
        "cursor=bm90IGpzb24": "the cursor does not decode",
    }
    for query, reason in cases.items():
        response = await treq.get(url(daemon, "/find?" + query))
        answer = json.loads(await response.content())
        assert response.code == 400 and reason in answer["error"]["message"], (query, answer)
    response = await treq.get(url(daemon, "/find?entity=Apple&label=FRUIT"))
    assert "ORG" in json.loads(await response.content())["error"]["labels"]
    assert (await find(daemon, entity="apple", label="ORG"))[1]["articles"][0]["id"] == "one"


@pytest_twisted.ensureDeferred
async def test_articles_stored_before_the_index_are_found_and_sort_by_when_they_were_ingested(tmp_path):
    from pipedingest.store.sqlite import SQLiteStore

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema and documents of an earlier version: no keys, no published_at
        db.execute("CREATE TABLE articles (id TEXT PRIMARY KEY, source TEXT NOT NULL, ingested_at TEXT NOT NULL, "
                   "document TEXT NOT NULL)")
        for n, (ingested_at, published) in enumerate([("2026-01-01T00:00:00.000000Z", "yesterday"),
                                                      ("2026-01-02T00:00:00.000000Z", None)]):
            document = {"source": "wire", "body": "Tim Cook.", "entities": [
                {"text": "Tim Cook", "label": "PERSON", "start": 0, "end": 8}], "entity_counts": {"PERSON": 1},
                "words": 2, "model": {"name": "m", "version": "1"}, **({"published": published} if published else {})}
            db.execute("INSERT INTO articles VALUES (?, 'wire', ?, ?)", (f"old-{n}", ingested_at, json.dumps(document)))
    store = SQLiteStore(str(path))
    await store.startService()
    try:
        documents, last = await store.query(entity_key("tim  COOK"), limit=10)
        assert [document["id"] for document in documents] == ["old-1", "old-0"] and last is None
        documents, _ = await store.query(entity_key("Tim Cook", "PERSON"), source="wire", limit=10)
        assert len(documents) == 2
    finally:
        await store.stopService()
