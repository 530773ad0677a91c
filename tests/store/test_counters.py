"""Entity counters in both stores: the same limit, the same refusal, the same sums, odd names alike."""
from __future__ import annotations

import pytest
import pytest_twisted

from pipedingest.article import MAX_DISTINCT_ENTITIES
from pipedingest.store.base import TooManyEntities

BOTH = pytest.mark.parametrize("kind", ["sqlite", "firestore"])


@pytest.fixture
def stores(request, kind):
    """``stores(**kwargs)``: a started store of *kind* (``sqlite_stores`` or ``firestore_stores``)."""
    return request.getfixturevalue(f"{kind}_stores")


@pytest.fixture
def counting_store(stores):
    """``counting_store(**kwargs)``: a started store of *kind* that keeps entity counters."""
    return lambda **kwargs: stores(**{"entity_counters": True, **kwargs})


def distinct(count: int, prefix: str = "Entity") -> list[dict]:
    """*count* distinct entities, labels alternating, as the NER step would hand them over."""
    return [{"text": f"{prefix} {n}", "label": ("ORG", "PERSON")[n % 2], "start": 0, "end": 1}
            for n in range(count)]


@BOTH
@pytest_twisted.ensureDeferred
async def test_the_most_distinct_entities_are_stored_and_counted_exactly(counting_store, make_article):
    store = counting_store()
    assert MAX_DISTINCT_ENTITIES >= 10_000
    entities = distinct(MAX_DISTINCT_ENTITIES)
    assert await store.put(make_article(1, body="A long list.", entities=entities)) is True
    assert await store.put(make_article(2, entities=entities[:3])) is True
    counters = await store.entity_counters("wire")
    expected = {entity["text"]: {"count": 1, "labels": {entity["label"]: 1}} for entity in entities}
    for entity in entities[:3]:
        expected[entity["text"]] = {"count": 2, "labels": {entity["label"]: 2}}
    assert counters == expected
    assert len((await store.get("article-1"))["entities"]) == MAX_DISTINCT_ENTITIES
    assert store.state()["errors"] == 0


@BOTH
@pytest_twisted.ensureDeferred
async def test_one_entity_more_is_refused_and_nothing_is_stored_or_counted(counting_store, make_article):
    store = counting_store()
    assert await store.put(make_article(1)) is True
    before = await store.entity_counters("wire")
    # Repeats do not count: the limit is on distinct (text, label) pairs.
    entities = distinct(MAX_DISTINCT_ENTITIES + 1) + distinct(50)
    with pytest.raises(TooManyEntities) as refused:
        await store.put(make_article(2, body="Too many.", entities=entities))
    assert (refused.value.count, refused.value.limit) == (MAX_DISTINCT_ENTITIES + 1, MAX_DISTINCT_ENTITIES)
    assert refused.value.article_id == "article-2"
    assert f"the limit is {MAX_DISTINCT_ENTITIES}" in refused.value.message
    assert await store.get("article-2") is None
    assert await store.entity_counters("wire") == before
    state = store.state()
    assert state["errors"] == 1 and state["commits"] == 1


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_store_without_counters_refuses_alike(stores, make_article):
    store = stores()
    with pytest.raises(TooManyEntities):
        await store.put(make_article(1, body="Too many.", entities=distinct(MAX_DISTINCT_ENTITIES + 1)))
    assert await store.get("article-1") is None


ODD_TEXTS = ["AC/DC", "__init__", "__", "____", "~", "~tilde", "~~", ".", "..", "a.b", "`tick`", "a`b.c\\d",
             "back\\slash", "50%", "$[x]*", "Zürich", "日本銀行", "🙂", "line\nbreak", " padded ", "1.5",
             "x" * 600, "é" * 300]
ODD_LABELS = ["ORG", "__label__", "a.b`c", "~x"]


@pytest_twisted.ensureDeferred
async def test_odd_entity_names_round_trip_alike_in_both_stores(sqlite_stores, firestore_stores, make_article):
    entities = [{"text": text, "label": ODD_LABELS[n % len(ODD_LABELS)], "start": 0, "end": 1}
                for n, text in enumerate(ODD_TEXTS)]
    entities += [{"text": "a.b", "label": "ORG", "start": 0, "end": 1}] * 2
    expected = {}
    for entity in entities:
        # Longer than MAX_COUNTED_TEXT_BYTES (512): counted under their first whole characters and "…".
        text = {"x" * 600: "x" * 509 + "…", "é" * 300: "é" * 254 + "…"}.get(entity["text"], entity["text"])
        counter = expected.setdefault(text, {"count": 0, "labels": {}})
        counter["count"] += 1
        counter["labels"][entity["label"]] = counter["labels"].get(entity["label"], 0) + 1
    assert expected["a.b"] == {"count": 3, "labels": {"__label__": 1, "ORG": 2}}
    for store in (sqlite_stores(entity_counters=True), firestore_stores(entity_counters=True, batch_window=0)):
        for n in range(2):
            # entity_counts is keyed by label, and Firestore refuses a field named __label__ in the article
            article = make_article(n, source="a/b.c", entities=entities, entity_counts={})
            assert await store.put(article) is True
        doubled = {text: {"count": 2 * counter["count"],
                          "labels": {label: 2 * n for label, n in counter["labels"].items()}}
                   for text, counter in expected.items()}
        assert await store.entity_counters("a/b.c") == doubled, store.kind
        assert await store.entity_counters("a") == {}
        assert (await store.get("article-0"))["entities"] == entities
