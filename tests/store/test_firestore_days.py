"""Firestore's day buckets: counted in the commits, rolled up by the tick, read one document per day.

Everything runs on the emulator; the tick is called directly (its interval is a TimerService's) so that each
test knows when a roll-up has happened.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest_twisted
from google.cloud import firestore as gcf
from twisted.internet import defer, threads

from pipedingest.article import entity_keys, split_key
from pipedingest.store.firestore.days import DAYS_COLLECTION

NEW_MODEL = {"name": "en_core_web_sm", "version": "9.9.9"}


def entities(*pairs):
    return [{"text": text, "label": label, "start": 0, "end": 1} for text, label in pairs]


def recount(documents, source=None):
    """``{day: Counter(key → articles)}`` from stored documents, the way the buckets count."""
    days: dict[str, Counter] = {}
    for document in documents:
        if source is None or document["source"] == source:
            days.setdefault(document["published_at"][:10], Counter()).update(entity_keys(document["entities"]))
    return days


def top_of(days: dict, label=None, limit=50):
    totals = Counter()
    for counts in days.values():
        totals.update({key: n for key, n in counts.items()
                       if split_key(key)[1] is not None and (label is None or split_key(key)[1] == label)})
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [{"key": key, "count": n} for key, n in ranked[:limit]]


PEOPLE = [("Ada Lovelace", "PERSON"), ("Charles Babbage", "PERSON"), ("London", "GPE"), ("Analytical Engine", "ORG"),
          ("Washington", "GPE"), ("Washington", "PERSON"), ("Mary Somerville", "PERSON")]


def article_set(make_article, count=60, seed=3):
    """Articles over three sources and five days, each mentioning a few of PEOPLE (some twice)."""
    pick = random.Random(seed)
    articles = []
    for n in range(count):
        chosen = pick.sample(PEOPLE, pick.randint(1, 4))
        articles.append(make_article(n, source=("wire", "desk", "blog")[n % 3],
                                     published_at=f"2017-02-0{1 + n % 5}T0{n % 10}:30:00.000000Z",
                                     entities=entities(*chosen, *chosen[:1])))
    return articles


async def stored_documents(store, articles):
    return [await store.get(article["id"]) for article in articles]


@pytest_twisted.ensureDeferred
async def test_rolled_days_answer_top_n_and_timelines_equal_to_a_recount(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0.01, counter_subshards=4)
    articles = article_set(make_article)
    assert await defer.gatherResults([store.put(article) for article in articles]) == [True] * len(articles)
    await store.roll_up()
    documents = await stored_documents(store, articles)
    for source in ("wire", "desk", "blog"):
        days = recount(documents, source)
        for label in (None, "PERSON", "GPE"):
            found = await store.top_entities(source, "2017-02-01", "2017-02-06", label=label, limit=50)
            assert found["entities"] == top_of(days, label)
            assert found["as_of"] == store.state()["rollup"]["through"] > "2026"  # the roll-up's server time
        narrow = await store.top_entities(source, "2017-02-02", "2017-02-04", limit=3)
        assert narrow["entities"] == top_of({day: days[day] for day in ("2017-02-02", "2017-02-03")}, limit=3)
    everywhere = recount(documents)
    for key in ("washington", "washington|GPE", "ada lovelace|PERSON", "nobody"):
        for source in (None, "desk"):
            counted = recount(documents, source)
            found = await store.timeline(key, source, "2017-01-31", "2017-02-07")
            assert found["days"] == {day: counts[key] for day, counts in counted.items() if counts[key]}
    # an article mentioning Washington as a place and as a person counts once under "washington"
    both = sum(1 for document in documents if {"washington|GPE", "washington|PERSON"} 
               <= set(entity_keys(document["entities"])))
    assert both > 0
    total = sum((await store.timeline("washington", None, "2017-02-01", "2017-02-06"))["days"].values())
    assert total == sum(counts["washington"] for counts in everywhere.values())
    assert total == (sum(counts["washington|GPE"] + counts["washington|PERSON"] for counts in everywhere.values())
                     - both)


@pytest_twisted.ensureDeferred
async def test_counts_are_once_per_id_and_a_replace_moves_them(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0)
    first = make_article(1, published_at="2017-02-01T10:00:00.000000Z",
                         entities=entities(("Ada Lovelace", "PERSON")))
    assert await store.put(first) is True
    assert await defer.gatherResults([store.put(first) for _ in range(3)]) == [False] * 3
    await store.roll_up()
    assert (await store.timeline("ada lovelace", "wire", "2017-02-01", "2017-02-03"))["days"] == {"2017-02-01": 1}
    moved = make_article(1, source="desk", published_at="2017-02-02T10:00:00.000000Z", model=NEW_MODEL,
                         entities=entities(("Charles Babbage", "PERSON")))
    assert await store.replace(moved) == "replaced"
    await store.roll_up()
    assert (await store.timeline("ada lovelace", None, "2017-02-01", "2017-02-03"))["days"] == {}
    assert (await store.timeline("charles babbage|PERSON", None, "2017-02-01", "2017-02-03"))["days"] == {
        "2017-02-02": 1}
    assert (await store.top_entities("wire", "2017-02-01", "2017-02-03"))["entities"] == []
    assert (await store.top_entities("desk", "2017-02-01", "2017-02-03"))["entities"] == [
        {"key": "charles babbage|PERSON", "count": 1}]


@pytest_twisted.ensureDeferred
async def test_two_daemons_rolling_up_at_once_agree_and_a_new_one_goes_on_from_the_watermark(
        firestore_stores, make_article):
    one = firestore_stores(entity_counters=True, batch_window=0.01)
    other = firestore_stores(entity_counters=True, batch_window=0.01)
    articles = article_set(make_article, count=30, seed=5)
    await defer.gatherResults([(one if n % 2 else other).put(article) for n, article in enumerate(articles)])
    await defer.gatherResults([one.roll_up(), other.roll_up(), one.roll_up()])
    documents = await stored_documents(one, articles)
    expected = top_of(recount(documents, "wire"))
    assert (await one.top_entities("wire", "2017-02-01", "2017-02-06"))["entities"] == expected
    assert (await other.top_entities("wire", "2017-02-01", "2017-02-06"))["entities"] == expected
    watermark = one.state()["rollup"]["through"]
    assert watermark > "2026"  # a server time: the newest day shard's updated_at
    later = firestore_stores(entity_counters=True, batch_window=0)
    assert await later.put(make_article(99, published_at="2017-02-03T00:00:00.000000Z",
                                        entities=entities(("Ada Lovelace", "PERSON")))) is True
    await later.roll_up()
    state = later.state()["rollup"]
    assert state["through"] > watermark and state["days_rolled"] == 1  # only the day that changed
    days = (await one.timeline("ada lovelace|PERSON", "wire", "2017-02-01", "2017-02-06"))["days"]
    assert days == {day: n for day, counts in recount([*documents, await one.get("article-99")], "wire").items()
                    if (n := counts["ada lovelace|PERSON"])}


@pytest_twisted.ensureDeferred
async def test_a_top_n_reads_one_document_per_day_whatever_the_shards(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0, counter_subshards=8, random=random.Random(1))
    for n in range(40):  # one commit each: their day-shard writes spread over the 8 sub-shards
        assert await store.put(make_article(n, published_at="2017-02-01T12:00:00.000000Z",
                                            entities=entities(("London", "GPE")))) is True
    await store.roll_up()
    shards = await threads.deferToThread(_day_shards, store.project)
    assert len(shards) == 8 and sum(shards.values()) == 40
    before = store.state()["reads"]
    found = await store.top_entities("wire", "2017-01-02", "2017-02-01", limit=5)  # 30 days, none counted
    assert found["entities"] == []
    found = await store.top_entities("wire", "2017-01-03", "2017-02-02", limit=5)  # 30 days, the last counted
    assert found["entities"] == [{"key": "london|GPE", "count": 40}]
    assert store.state()["reads"] - before == 60
    total = await threads.deferToThread(_total, store.project, "2017-02-01")
    assert total["london"] == total["london|GPE"] == 40


def _day_shards(project, key="london"):
    client = gcf.Client(project=project)
    shards = client.collection("sources").document("wire").collection("entity_day_shards").stream()
    return {shard.id: shard.to_dict()["counts"][key] for shard in shards}


def _total(project, day):
    client = gcf.Client(project=project)
    return client.collection(DAYS_COLLECTION).document(f"sources-{day}").get().to_dict()["counts"]


@pytest_twisted.ensureDeferred
async def test_a_replace_takes_nothing_off_a_day_for_an_article_never_counted_in_one(firestore_stores, make_article):
    """Stored by a store without counters (or before day buckets existed): nothing was added, nothing is taken."""
    plain = firestore_stores(batch_window=0)
    assert await plain.put(make_article(1, published_at="2017-02-01T10:00:00.000000Z",
                                        entities=entities(("Ada Lovelace", "PERSON")))) is True
    counting = firestore_stores(entity_counters=True, batch_window=0)
    assert await counting.replace(make_article(1, published_at="2017-02-01T10:00:00.000000Z", model=NEW_MODEL,
                                               entities=entities(("Ada Lovelace", "PERSON")))) == "replaced"
    await counting.roll_up()
    assert (await counting.timeline("ada lovelace", "wire", "2017-02-01", "2017-02-02"))["days"] == {"2017-02-01": 1}
    shards = await threads.deferToThread(_day_shards, counting.project, "ada lovelace")
    assert sorted(shards.values()) == [1]  # one increment, no -1 left anywhere
    assert "_days_counted" not in await counting.get("article-1")


@pytest_twisted.ensureDeferred
async def test_two_stores_counting_in_one_database_keep_their_counts_apart(firestore_stores, make_article):
    first = firestore_stores(entity_counters=True, batch_window=0)
    second = firestore_stores(entity_counters=True, batch_window=0, collection="other_articles",
                              counters_collection="other_sources")
    day = "2017-02-07T10:00:00.000000Z"
    assert await first.put(make_article(1, published_at=day, entities=entities(("Apple", "ORG")))) is True
    await first.roll_up()
    assert await second.put(make_article(2, source="desk", published_at=day,
                                         entities=entities(("Apple", "ORG")))) is True
    await second.roll_up()
    await first.roll_up()
    assert second.state()["rollup"]["days_rolled"] == 1  # its own day, not skipped past by the first's watermark
    assert (await second.timeline("apple", "desk", "2017-02-07", "2017-02-08"))["days"] == {"2017-02-07": 1}
    assert (await second.timeline("apple", None, "2017-02-07", "2017-02-08"))["days"] == {"2017-02-07": 1}
    assert (await first.timeline("apple", None, "2017-02-07", "2017-02-08"))["days"] == {"2017-02-07": 1}
    assert (await first.timeline("apple", "desk", "2017-02-07", "2017-02-08"))["days"] == {}
