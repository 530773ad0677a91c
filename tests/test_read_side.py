"""The read side on 500 real corpus articles, in SQLite and in the Firestore emulator alike.

Each store gets the same 500 articles through a daemon (real children, real HTTP). Then, from the client's
side, everything read is compared with what the stored documents say, read straight from the store (sqlite3;
the Firestore client): every page of several entity queries equals a scan, every top-N equals a recount, every
timeline's days equal the recount and add up to its total. Then all pages are walked while 50 more articles
are posted: no id twice, none stored before the walk missed.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import date, timedelta
from urllib.parse import quote, urlencode

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, threads

from pipedingest.article import document_keys, entity_key, split_key
from pipedingest.load import read_articles
from pipedingest.store.base import jsonable
from tests.conftest import until, url
from tests.corpus import corpus_path

ROUTES = """
web:
  main:
    port: 0
    routing:
      articles:
        __config__:
          - {processor: pipeline.create, methods: [POST]}
          - {processor: pipeline.find, methods: [GET], query: [entity, label, source, since, until, limit, cursor]}
      sources:
        "{source}":
          entities: {__config__: {processor: pipeline.top, methods: [GET], query: [since, until, label, limit]}}
      entities:
        "{key}":
          timeline:
            __config__: {processor: pipeline.timeline, methods: [GET], query: [source, since, until, label, bucket]}
ner: {min_children: 2, max_children: 2}
pipelines:
  create:
    - validate-article
    - extract-entities
    - store-article
    - write-web-response: {input_path: result, status_path: status}
  find:
    - query-articles: {pools: [ner.pool]}
    - write-web-response
  top:
    - top-entities: {pools: [ner.pool]}
    - write-web-response
  timeline:
    - entity-timeline: {pools: [ner.pool]}
    - write-web-response
"""
STORES = {
    "sqlite": "stores:\n  articles: {kind: sqlite, path: store.sqlite, entity_counters: true}\n",
    "firestore": "stores:\n  articles: {kind: firestore, entity_counters: true, rollup_interval: 0.5}\n",
}
JSON = {"content-type": ["application/json"]}
SOURCES = ("wire", "desk", "blog")
COUNT, MORE = 500, 50


def corpus_articles() -> list[dict]:
    """COUNT + MORE real articles, over three sources; every tenth without ``published`` (sorts when stored)."""
    articles = [a for a in read_articles(corpus_path(), COUNT + MORE + 100) if a["body"].strip()][:COUNT + MORE]
    articles = [{**article, "source": SOURCES[n % 3]} for n, article in enumerate(articles)]
    for article in articles[::10]:
        del article["published"]
    return articles


# -- what the stores hold, read straight from them ----------------------------------------------------------


def sqlite_documents(path) -> list[dict]:
    database = sqlite3.connect(path)
    try:
        rows = database.execute("SELECT id, ingested_at, document FROM articles").fetchall()
    finally:
        database.close()
    documents = []
    for article_id, ingested_at, document in rows:
        fields = json.loads(document)
        documents.append({"id": article_id, **fields, "sort_at": fields.get("published_at") or ingested_at})
    return documents


def firestore_documents(project) -> list[dict]:
    from google.cloud import firestore as gcf

    client = gcf.Client(project=project)
    try:
        return [{"id": snapshot.id, **jsonable(snapshot.to_dict())}
                for snapshot in client.collection("articles").stream()]
    finally:
        client.close()


def scan(documents, key="", source=None, since=None, until_=None) -> list[str]:
    found = [d for d in documents if (not key or key in document_keys(d)) and source in (None, d["source"])
             and (since is None or d["sort_at"] >= since) and (until_ is None or d["sort_at"] < until_)]
    return [d["id"] for d in sorted(found, key=lambda d: (d["sort_at"], d["id"]), reverse=True)]


def recount(documents) -> Counter:
    """Articles per (source, day, key), the way the buckets count."""
    counts = Counter()
    for document in documents:
        for key in set(document_keys(document)):
            counts[document["source"], document["sort_at"][:10], key] += 1
    return counts


def days(since: str, until_: str) -> list[str]:
    first, last = date.fromisoformat(since), date.fromisoformat(until_)
    return [(first + timedelta(n)).isoformat() for n in range((last - first).days)]


def expected_top(counts, source, since, until_, label=None, limit=50) -> list[dict]:
    window = set(days(since, until_))
    totals = Counter()
    for (where, day, key), n in counts.items():
        keyed = split_key(key)[1]
        if where == source and day in window and keyed is not None and label in (None, keyed):
            totals[key] += n
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"key": key, "count": n} for key, n in ranked]


# -- the client ----------------------------------------------------------------------------------------------


async def get(daemon, path: str, **query) -> dict:
    response = await treq.get(url(daemon, path + ("?" + urlencode(query) if query else "")))
    answer = json.loads(await response.content())
    assert response.code == 200, (path, query, answer)
    return answer


async def post_all(daemon, articles, concurrency=8) -> list[int]:
    semaphore = defer.DeferredSemaphore(concurrency)

    async def post(article):
        response = await treq.post(url(daemon, "/articles"), json.dumps(article).encode(), headers=JSON)
        answer = json.loads(await response.content())
        return response.code, answer.get("id")

    return await defer.gatherResults([semaphore.run(lambda a=article: defer.ensureDeferred(post(a)))
                                      for article in articles])


async def walk(daemon, between=None, **query) -> list[str]:
    ids, cursor, page = [], None, 0
    while True:
        answer = await get(daemon, "/articles", **query, **({"cursor": cursor} if cursor else {}))
        ids += [article["id"] for article in answer["articles"]]
        cursor, page = answer["next_cursor"], page + 1
        if cursor is None:
            return ids
        if between is not None:
            await between(page)


async def counted(daemon, kind) -> None:
    """Wait until the counts include every write answered so far (Firestore: two ticks begun after now)."""
    if kind == "firestore":
        store = daemon.runtime.get("store.articles")
        ticks = store.state()["rollup"]["ticks"]
        await until(lambda: store.state()["rollup"]["ticks"] >= ticks + 2, timeout=60, what="two roll-ups")


@pytest.fixture(params=["sqlite", "firestore"])
def kind(request):
    if request.param == "firestore":
        request.getfixturevalue("firestore")
    return request.param


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_queries_counts_and_timelines_equal_what_the_stored_documents_say(daemons, tmp_path, kind):
    articles = corpus_articles()
    daemon = await daemons(ROUTES + STORES[kind])
    answered = await post_all(daemon, articles[:COUNT])
    assert [status for status, _ in answered] == [201] * COUNT
    await counted(daemon, kind)
    if kind == "sqlite":
        documents = sqlite_documents(tmp_path / "store.sqlite")
    else:
        documents = await threads.deferToThread(firestore_documents, daemon.runtime.get("store.articles").project)
    assert {d["id"] for d in documents} == {article_id for _, article_id in answered}

    # entity queries: every page together equals a scan
    counts = recount(documents)
    popular = [key for key, _ in Counter(k for (_, _, k), n in counts.items() for _ in range(n)).most_common(60)]
    labelled = [key for key in popular if split_key(key)[1]][:3]
    plain = [key for key in popular if not split_key(key)[1]][:3]
    for key in plain:
        assert await walk(daemon, entity=key.upper(), limit=25) == scan(documents, key)
        assert await walk(daemon, entity=key, source="desk", limit=7) == scan(documents, key, "desk")
    for key in labelled:
        text, label = split_key(key)
        assert await walk(daemon, entity=text, label=label, limit=50) == scan(documents, key)
    window = ("2017-02-01T00:00:00.000000Z", "2017-02-08T00:00:00.000000Z")
    assert await walk(daemon, since="2017-02-01", until="2017-02-08", limit=100) == scan(documents, "", None, *window)

    # top-N equals a recount, for each source, over windows and labels
    spans = [("2017-02-01", "2017-03-01"), ("2016-12-01", "2017-02-28"), ("2017-02-07", "2017-02-08")]
    for source in SOURCES:
        for since, until_ in spans:
            for label in (None, "PERSON", "ORG"):
                query = {"since": since, "until": until_, "limit": 50, **({"label": label} if label else {})}
                answer = await get(daemon, f"/sources/{source}/entities", **query)
                assert [{"key": e["key"], "count": e["count"]} for e in answer["entities"]] == \
                    expected_top(counts, source, since, until_, label)
    assert any(expected_top(counts, source, *spans[0]) for source in SOURCES)  # the windows hold articles

    # timelines: each day equals the recount, and the days add up to the total
    for key in [*labelled, *plain]:
        for source in (None, "wire"):
            since, until_ = "2017-01-20", "2017-02-19"
            answer = await get(daemon, f"/entities/{quote(key, safe='')}/timeline", since=since, until=until_,
                               **({"source": source} if source else {}))
            expected = [{"day": day, "count": sum(n for (where, on, k), n in counts.items()
                                                  if k == key and on == day and source in (None, where))}
                        for day in days(since, until_)]
            assert answer["days"] == expected
            assert answer["total"] == sum(item["count"] for item in expected)
            if source is None:
                assert answer["total"] > 0  # popular keys: the window is not empty

    # pagination while 50 more are posted: no id twice, none from before missed
    before = set(scan(documents))
    more = iter(articles[COUNT:])
    posted = []

    async def post_some(page):
        batch = [article for _, article in zip(range(5), more)]
        posted.extend(await post_all(daemon, batch))

    walked = await walk(daemon, between=post_some, limit=40)
    while len(posted) < MORE:
        await post_some(0)
    assert [status for status, _ in posted] == [201] * MORE
    assert len(walked) == len(set(walked))
    assert before <= set(walked)
    assert set(walked) - before <= {article_id for _, article_id in posted}
    again = await walk(daemon, entity=plain[0], limit=30)
    assert len(again) == len(set(again)) and set(scan(documents, plain[0])) <= set(again)
