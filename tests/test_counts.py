"""``top-entities`` and ``entity-timeline`` over SQLite: the entities a source mentions most, and an entity's
mentions day by day.

Real corpus articles go through a daemon (real children, real SQLite, real HTTP); what the routes answer is
compared with a recount of the stored documents, read from the database file with sqlite3.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import pytest
import pytest_twisted
import treq

from pipedingest.article import entity_key, split_key
from pipedingest.dates import day_ceiling, day_floor, day_of, days_between, parse
from pipedingest.load import read_articles
from tests.conftest import url
from tests.corpus import corpus_path

CONFIG = """
web:
  main:
    port: 0
    routing:
      articles: {__config__: {processor: pipeline.create, methods: [POST]}}
      sources:
        "{source}":
          entities: {__config__: {processor: pipeline.top, methods: [GET], query: [since, until, label, limit]}}
      entities:
        "{key}":
          timeline:
            __config__: {processor: pipeline.timeline, methods: [GET], query: [source, since, until, label, bucket]}
      uncounted:
        "{source}":
          entities: {__config__: {processor: pipeline.uncounted.top, methods: [GET]}}
        timeline:
          "{key}": {__config__: {processor: pipeline.uncounted.timeline, methods: [GET]}}
ner: {min_children: 1}
stores:
  articles: {kind: sqlite, path: store.sqlite, entity_counters: true}
  uncounted: {kind: sqlite, path: store.sqlite, table: uncounted}
pipelines:
  create:
    - validate-article
    - extract-entities
    - store-article
    - write-web-response: {input_path: result, status_path: status}
  top:
    - top-entities: {pools: [ner.pool]}
    - write-web-response
  timeline:
    - entity-timeline: {pools: [ner.pool]}
    - write-web-response
  uncounted:
    top:
      - top-entities: {store: uncounted}
      - write-web-response
    timeline:
      - entity-timeline: {store: uncounted}
      - write-web-response
"""
JSON = {"content-type": ["application/json"]}
SOURCES = ("wire", "desk", "blog")
#: Every day the sample's published dates fall on, and some either side: 59 days, within max_days (92).
SPAN = ("2017-02-01", "2017-04-01")


def corpus_sample(count: int, undated: int) -> list[dict]:
    """*count* articles spread over the corpus (so over many days), three sources; the first *undated* without
    ``published``, so that they count on the day they are stored."""
    every = [a for a in read_articles(corpus_path()) if a["body"].strip()]
    sample = every[::len(every) // count][:count]
    articles = [{**article, "source": SOURCES[n % 3]} for n, article in enumerate(sample)]
    for article in articles[:undated]:
        del article["published"]
    return articles


async def post(daemon, article) -> int:
    response = await treq.post(url(daemon, "/articles"), json.dumps(article).encode(), headers=JSON)
    await response.content()
    return response.code


async def get(daemon, path: str, **query) -> tuple[int, dict]:
    response = await treq.get(url(daemon, path + ("?" + urlencode(query) if query else "")))
    return response.code, json.loads(await response.content())


async def top(daemon, source: str, **query) -> dict:
    status, answer = await get(daemon, f"/sources/{quote(source, safe='')}/entities", **query)
    assert status == 200, answer
    return answer


async def timeline(daemon, key: str, **query) -> dict:
    status, answer = await get(daemon, f"/entities/{quote(key, safe='')}/timeline", **query)
    assert status == 200, answer
    return answer


def recount(path) -> dict[tuple[str, str, str], int]:
    """``{(source, day, key): articles}`` recounted from the stored documents: each article once per key it
    has (its entities' texts, folded, alone and with their labels), on the UTC day it sorts by."""
    counts: dict[tuple[str, str, str], int] = {}
    with sqlite3.connect(path) as db:
        for source, ingested_at, document in db.execute("SELECT source, ingested_at, document FROM articles"):
            document = json.loads(document)
            keys = {entity_key(e["text"]) for e in document["entities"]} | \
                {entity_key(e["text"], e["label"]) for e in document["entities"]}
            day = (document.get("published_at") or ingested_at)[:10]
            for key in keys:
                counts[(source, day, key)] = counts.get((source, day, key), 0) + 1
    return counts


def expected_top(counts, source, since, until, label=None, limit=20) -> list[dict]:
    totals: dict[str, int] = {}
    for (where, day, key), n in counts.items():
        text, key_label = split_key(key)
        if where == source and since <= day < until and key_label is not None and label in (None, key_label):
            totals[key] = totals.get(key, 0) + n
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"key": key, "text": split_key(key)[0], "label": split_key(key)[1], "count": n} for key, n in ranked]


def expected_days(counts, key, since, until, source=None) -> list[dict]:
    per_day: dict[str, int] = {}
    for (where, day, counted), n in counts.items():
        if counted == key and source in (None, where):
            per_day[day] = per_day.get(day, 0) + n
    return [{"day": day, "count": per_day.get(day, 0)} for day in days_between(date.fromisoformat(since),
                                                                              date.fromisoformat(until))]


def today() -> date:
    return datetime.now(timezone.utc).date()


@pytest_twisted.ensureDeferred
async def test_counts_and_timelines_equal_a_recount_of_the_stored_documents(daemons, tmp_path):
    daemon = await daemons(CONFIG)
    articles = corpus_sample(120, undated=6)
    assert [await post(daemon, article) for article in articles] == [201] * len(articles)
    store = tmp_path / "store.sqlite"
    counts = recount(store)
    assert len({day for _, day, _ in counts}) > 20, "the sample should spread over many days"

    windows = [dict(since=SPAN[0], until=SPAN[1]),
               dict(since="2017/2/7", until="Tue, 14 Feb 2017 10:00:00 +0000"),  # until ceiled: the 14th counts
               dict(since="2017-03-15T18:00:00Z", until="2017-03-16")]          # since floored: one whole day
    for query in windows:
        since = day_floor(parse(query["since"])).isoformat()
        until = day_ceiling(parse(query["until"])).isoformat()
        for source in SOURCES:
            for label, limit in ((None, None), ("ORG", 5), ("PERSON", 1000), ("GPE", 3)):
                asked = {**query, **({"label": label} if label else {}), **({"limit": limit} if limit else {})}
                answer = await top(daemon, source, **asked)
                expected = expected_top(counts, source, since, until, label, limit or 20)
                assert answer == {"source": source, "since": since, "until": until, "label": label,
                                  "count": len(expected), "entities": expected, "as_of": None}, (source, asked)
        assert any(expected_top(counts, source, since, until) for source in SOURCES), query

    # Without since and until: the 30 days ending today, where the undated articles are.
    answer = await top(daemon, "wire")
    until = today() + timedelta(days=1)
    assert (answer["since"], answer["until"]) == ((until - timedelta(days=30)).isoformat(), until.isoformat())
    assert answer["entities"] == expected_top(counts, "wire", answer["since"], answer["until"]) != []

    popular = [entity["key"] for entity in (await top(daemon, "wire", since=SPAN[0], until=SPAN[1]))["entities"]]
    for key in popular[:6]:
        text, label = split_key(key)
        for source in (None, "desk"):
            where = {"source": source} if source else {}
            for named, query in ((key, {}), (text, {}), (f"  {text.upper()} ", {"label": label}),
                                 (f"{text.title()}|{label}", {"label": label})):
                answer = await timeline(daemon, named, since=SPAN[0], until=SPAN[1], **where, **query)
                asked = text if named == text else entity_key(text, label)  # the unlabelled key counts every label
                days = expected_days(counts, asked, *SPAN, source)
                assert answer == {"key": asked, "source": source, "since": SPAN[0], "until": SPAN[1],
                                  "bucket": "day", "days": days, "total": sum(d["count"] for d in days),
                                  "as_of": None}, (named, query, source)
                window = {(s, d, k): n for (s, d, k), n in counts.items() if SPAN[0] <= d < SPAN[1]}
                assert answer["total"] == sum(n for (s, _, k), n in window.items()
                                              if k == asked and source in (None, s))
            assert len(answer["days"]) == 59

    # Posting the same articles again stores and counts nothing twice.
    with sqlite3.connect(store) as db:
        before = sorted(db.execute("SELECT * FROM articles_entity_days"))
    assert before and all(row[4] > 0 for row in before)
    assert [await post(daemon, article) for article in articles[:20]] == [200] * 20
    with sqlite3.connect(store) as db:
        assert sorted(db.execute("SELECT * FROM articles_entity_days")) == before
    assert recount(store) == counts
    assert (await top(daemon, "wire", since=SPAN[0], until=SPAN[1]))["entities"][:6] == \
        expected_top(counts, "wire", *SPAN)[:6]


BAD_QUERIES = {
    # top-entities
    "/sources/wire/entities?since=last+week": "since 'last week' is not a date",
    "/sources/wire/entities?until=2017-02-30": "until '2017-02-30' is not a date",
    "/sources/wire/entities?since=2017-02-08&until=2017-02-07": "since (2017-02-08) must be before until",
    "/sources/wire/entities?since=2017-02-07&until=2017-02-07": "since (2017-02-07) must be before until",
    "/sources/wire/entities?since=2190-01-01": "must be before until",
    "/sources/wire/entities?since=2016-01-01&until=2017-01-01": "spans 366 days; the most is 92",
    "/sources/wire/entities?since=2016-10-31T12:00Z&until=2017-02-01": "spans 93 days",  # once floored
    "/sources/wire/entities?limit=0": "limit must be a whole number from 1 to 1000",
    "/sources/wire/entities?limit=1001": "limit must be a whole number from 1 to 1000",
    "/sources/wire/entities?limit=ten": "limit must be a whole number from 1 to 1000",
    "/sources/wire/entities?label=FRUIT": "unknown label 'FRUIT'",
    "/sources/wire/entities?label=": "unknown label ''",
    "/sources/wire/entities?entity=apple": "unknown query parameter 'entity'",
    "/sources/%20/entities": "the source must not be blank",
    "/sources//entities": "the source must not be blank",
    # entity-timeline
    "/entities/%20%20/timeline": "the entity must not be blank",
    "/entities//timeline": "the entity must not be blank",
    f"/entities/{'x' * 513}/timeline": "the entity must be 1 to 512 characters",
    "/entities/%7CORG/timeline": "the entity must be 1 to 512 characters",
    "/entities/apple/timeline?bucket=week": "bucket 'week' is not supported",
    "/entities/apple%7CFRUIT/timeline": "unknown label 'FRUIT'",
    "/entities/apple/timeline?label=FRUIT": "unknown label 'FRUIT'",
    "/entities/apple%7CORG/timeline?label=PERSON": "the entity names label 'ORG' and label= asks for 'PERSON'",
    "/entities/apple/timeline?source=": "source must not be blank",
    "/entities/apple/timeline?since=2017%2F13%2F01": "since '2017/13/01' is not a date",
    "/entities/apple/timeline?since=2017-03-01&until=2017-02-01": "must be before until",
    "/entities/apple/timeline?since=2017-01-01&until=2017-06-01": "spans 151 days; the most is 92",
    "/entities/apple/timeline?cursor=abc": "unknown query parameter 'cursor'",
}


@pytest_twisted.ensureDeferred
async def test_bad_queries_get_a_json_400_with_the_reason_and_a_store_without_counters_a_501(daemons, tmp_path):
    daemon = await daemons(CONFIG)
    assert await post(daemon, {"id": "dated", "source": "wire", "body": "Apple hired Tim Cook in Cupertino.",
                               "published": "2017/2/7"}) == 201
    assert await post(daemon, {"id": "today", "source": "wire", "body": "Apple hired Tim Cook."}) == 201
    for path, reason in BAD_QUERIES.items():
        response = await treq.get(url(daemon, path))
        answer = json.loads(await response.content())
        assert response.code == 400 and reason in answer["error"]["message"], (path, answer)
    status, answer = await get(daemon, "/sources/wire/entities", label="FRUIT")
    assert "ORG" in answer["error"]["labels"]
    status, answer = await get(daemon, "/entities/apple/timeline", bucket="hour")
    assert answer["error"]["supported"] == ["day"]

    # The edges of what is accepted.
    status, answer = await get(daemon, "/sources/wire/entities", since="2016-11-01", until="2017-02-01", limit=1000)
    assert status == 200 and answer["entities"] == []
    before = today()
    status, answer = await get(daemon, "/entities/Apple/timeline", label="ORG")
    assert status == 200 and answer["since"] in {(day - timedelta(days=29)).isoformat() for day in (before, today())}
    assert answer["total"] == 1 and answer["days"][-1]["count"] == 1 and len(answer["days"]) == 30
    status, answer = await get(daemon, "/sources/wire/entities", since="2017-02-07", label="ORG")
    assert status == 400 and "spans" in answer["error"]["message"]
    status, answer = await get(daemon, "/sources/wire/entities", since="2017-02-07", until="2017-02-08", label="ORG")
    assert answer["entities"] == [{"key": "apple|ORG", "text": "apple", "label": "ORG", "count": 1}]
    status, answer = await get(daemon, "/sources/nobody/entities", since="2017-02-07", until="2017-02-08")
    assert status == 200 and answer["count"] == 0

    for path in ("/uncounted/wire/entities", "/uncounted/timeline/apple"):
        response = await treq.get(url(daemon, path))
        answer = json.loads(await response.content())
        assert response.code == 501 and "set entity_counters: true under stores: uncounted" in \
            answer["error"]["message"], (path, answer)


@pytest.mark.parametrize("key, split", [("tim cook|PERSON", ("tim cook", "PERSON")), ("apple", ("apple", None)),
                                        ("a|b", ("a|b", None)), ("at|t|ORG", ("at|t", "ORG")),
                                        ("x|ORG\n", ("x|ORG\n", None)), ("x|WORK_OF_ART", ("x", "WORK_OF_ART"))])
def test_a_key_splits_at_its_last_bar_when_a_label_follows(key, split):
    assert split_key(key) == split


def test_day_windows_are_whole_utc_days():
    assert day_of("2017-02-07T23:59:59.999999Z") == "2017-02-07"
    assert day_floor(parse("2017-02-07T23:30:00-02:00")) == date(2017, 2, 8)
    assert day_ceiling(parse("2017-02-07")) == date(2017, 2, 7)
    assert day_ceiling(parse("2017-02-07T00:00:00.000001Z")) == date(2017, 2, 8)
    assert days_between(date(2017, 2, 27), date(2017, 3, 2)) == ["2017-02-27", "2017-02-28", "2017-03-01"]
    assert days_between(date(2017, 3, 2), date(2017, 3, 2)) == []
