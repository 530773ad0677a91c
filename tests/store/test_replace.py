"""``replace()`` in both stores: its three answers, and entity counters that always equal a recount.

Every counter check compares ``entity_counters(source)`` with a recount of the stored documents
(:func:`recount`), so a replace that counted twice, or forgot to take the old tally off, shows.
"""
from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from google.api_core import exceptions as api_exceptions
from google.cloud.firestore_v1.transaction import Transaction
from twisted.internet import defer, task

from pipedingest.store.base import DocumentTooLarge, PermanentStoreError, entity_tally

BOTH = pytest.mark.parametrize("kind", ["sqlite", "firestore"])
OLD_MODEL = {"name": "en_core_web_sm", "version": "3.8.0"}
NEW_MODEL = {"name": "en_core_web_sm", "version": "3.8.1"}
#: What the upgraded model finds in the fixture's body: Babbage gone, London twice, a new ORG.
NEW_ENTITIES = [
    {"text": "Ada Lovelace", "label": "PERSON", "start": 0, "end": 12},
    {"text": "London", "label": "GPE", "start": 36, "end": 42},
    {"text": "London", "label": "GPE", "start": 36, "end": 42},
    {"text": "Analytical Society", "label": "ORG", "start": 17, "end": 32},
]


@pytest.fixture
def stores(request, kind):
    """``stores(**kwargs)``: a started store of *kind* (``sqlite_stores`` or ``firestore_stores``)."""
    return request.getfixturevalue(f"{kind}_stores")


@pytest.fixture
def counting_store(stores, kind):
    """``counting_store(**kwargs)``: a started store of *kind* that keeps entity counters."""
    if kind == "firestore":
        return lambda **kwargs: stores(**{"entity_counters": True, "batch_window": 0.001, "counter_shards": 4,
                                          "counter_subshards": 4, **kwargs})
    return lambda **kwargs: stores(**{"entity_counters": True, **kwargs})


def upgraded(article: dict, **overrides) -> dict:
    """*article* as the upgraded model extracts it."""
    return {**article, "entities": NEW_ENTITIES, "entity_counts": {"PERSON": 1, "GPE": 2, "ORG": 1},
            "model": NEW_MODEL, **overrides}


async def recount(store) -> dict[str, dict]:
    """``{source: counters}`` recounted from every stored document, in ``entity_counters``' shape."""
    by_source: dict[str, dict] = {}
    for document in await store.recent(limit=1000):
        counters = by_source.setdefault(document["source"], {})
        for text, labels in entity_tally(document.get("entities")).items():
            counter = counters.setdefault(text, {"count": 0, "labels": {}})
            for label, n in labels.items():
                counter["labels"][label] = counter["labels"].get(label, 0) + n
                counter["count"] += n
    return by_source


async def assert_counters_recount(store, sources=("wire",)) -> dict[str, dict]:
    """Assert that the counters of every source (those given and those stored) equal a recount."""
    expected = await recount(store)
    for source in sorted(set(sources) | set(expected)):
        assert await store.entity_counters(source) == expected.get(source, {}), source
    return expected


def without_time(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != "ingested_at"}


def written(store, outcome: str) -> float:
    """The ``pipedingest_store_writes_total`` sample of *outcome* in the store's metrics."""
    (found,) = [sample.value for family in store.metrics() for sample in family.samples
                if sample.name == "pipedingest_store_writes_total" and sample.labels["outcome"] == outcome]
    return found


@BOTH
@pytest_twisted.ensureDeferred
async def test_created_then_unchanged_then_replaced(counting_store, kind, make_article):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    # SQLite takes ingested_at from its clock, so advance it; Firestore's commits take the server's time.
    store = counting_store(clock=clock) if kind == "sqlite" else counting_store()
    store.setName("store.articles")
    article = make_article(1)
    assert await store.replace(article) == "created"
    stored = await store.get("article-1")
    assert without_time(stored) == article
    assert await assert_counters_recount(store) == {"wire": {
        "Ada Lovelace": {"count": 1, "labels": {"PERSON": 1}},
        "Charles Babbage": {"count": 1, "labels": {"PERSON": 1}},
        "London": {"count": 1, "labels": {"GPE": 1}}}}

    # The same name and version, whatever else differs (other fields, other keys of the model): untouched.
    clock.advance(60)
    same_model = upgraded(article, model={**OLD_MODEL, "pipeline": ["ner"]}, title="Edited")
    assert await store.replace(same_model) == "unchanged"
    assert await store.get("article-1") == stored

    assert await store.replace(upgraded(article)) == "replaced"
    replaced = await store.get("article-1")
    assert without_time(replaced) == upgraded(article)
    assert replaced["ingested_at"] == stored["ingested_at"]
    counters = await assert_counters_recount(store)
    assert counters["wire"]["London"] == {"count": 2, "labels": {"GPE": 2}}
    assert "Charles Babbage" not in counters["wire"]  # fell to 0: not listed

    # A new model name with the same version is another model too.
    renamed = upgraded(article, model={"name": "en_core_web_md", "version": "3.8.1"}, entities=[],
                       entity_counts={})
    assert await store.replace(renamed) == "replaced"
    assert await store.entity_counters("wire") == {}
    await assert_counters_recount(store)
    assert await store.put(article) is False

    state = store.state()
    assert (state["created"], state["existing"], state["replaced"], state["unchanged"]) == (1, 1, 2, 1)
    assert state["errors"] == 0
    assert [written(store, outcome) for outcome in ("created", "existing", "replaced", "unchanged")] == [1, 1, 2, 1]


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_replace_moves_an_article_to_another_source(counting_store, make_article):
    store = counting_store()
    moving = make_article(1, entities=[{"text": "Ada Lovelace", "label": "PERSON", "start": 0, "end": 12},
                                       {"text": "Difference Engine", "label": "PRODUCT", "start": 0, "end": 1}])
    assert await store.put(moving) is True
    assert await store.put(make_article(2)) is True
    assert await store.put(make_article(3, source="blog")) is True
    assert (await store.entity_counters("wire"))["Ada Lovelace"]["count"] == 2

    assert await store.replace(upgraded(moving, source="blog")) == "replaced"
    counters = await assert_counters_recount(store, sources=("wire", "blog"))
    assert "Difference Engine" not in counters["wire"]
    assert counters["wire"]["Ada Lovelace"]["count"] == 1
    assert counters["blog"]["Ada Lovelace"]["count"] == 2
    assert counters["blog"]["London"]["count"] == 3
    assert [d["id"] for d in await store.recent(source="wire")] == ["article-2"]
    assert sorted(d["id"] for d in await store.recent(source="blog")) == ["article-1", "article-3"]


@BOTH
@pytest_twisted.ensureDeferred
async def test_concurrent_replaces_of_one_id_replace_once(counting_store, make_article):
    store = counting_store()
    for n in range(3):
        assert await store.put(make_article(n)) is True
    replaces = [store.replace(upgraded(make_article(1))) for _ in range(12)]
    replaces.append(store.replace(upgraded(make_article(2))))
    results = await defer.gatherResults(replaces)
    assert sorted(results[:12]) == ["replaced"] + ["unchanged"] * 11
    assert results[12] == "replaced"
    counters = await assert_counters_recount(store)
    assert counters["wire"]["London"]["count"] == 5
    assert counters["wire"]["Charles Babbage"]["count"] == 1


@BOTH
@pytest_twisted.ensureDeferred
async def test_two_stores_racing_on_one_id_replace_it_once(counting_store, make_article):
    """Two stores on one database stand for two processes: their transactions, not this process, decide."""
    first, second = counting_store(), counting_store()
    assert await first.put(make_article(1)) is True
    assert await first.put(make_article(2)) is True
    replaces = [store.replace(upgraded(make_article(1))) for _ in range(4) for store in (first, second)]
    results = await defer.gatherResults(replaces)
    assert sorted(results) == ["replaced"] + ["unchanged"] * 7
    await assert_counters_recount(first)
    await assert_counters_recount(second)


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_too_large_replacement_changes_nothing(counting_store, make_article):
    store = counting_store()
    assert await store.put(make_article(1)) is True
    before = (await store.get("article-1"), await store.entity_counters("wire"))
    with pytest.raises(DocumentTooLarge) as refused:
        await store.replace(upgraded(make_article(1), body="x" * 1_100_000))
    assert refused.value.article_id == "article-1"
    assert (await store.get("article-1"), await store.entity_counters("wire")) == before
    await assert_counters_recount(store)
    assert store.state()["errors"] == 1 and store.state()["replaced"] == 0


@BOTH
@pytest_twisted.ensureDeferred
async def test_a_store_without_counters_replaces_too(stores, make_article):
    store = stores()
    assert await store.put(make_article(1)) is True
    assert await store.replace(upgraded(make_article(1))) == "replaced"
    assert without_time(await store.get("article-1")) == upgraded(make_article(1))
    assert await store.entity_counters("wire") == {}


# -- SQLite ---------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sqlite_a_replace_whose_transaction_fails_changes_nothing(sqlite_stores, make_article, tmp_path):
    store = sqlite_stores(entity_counters=True)
    assert await store.put(make_article(1)) is True
    before = (await store.get("article-1"), await store.entity_counters("wire"))
    # A real refusal in the middle of the transaction: after the row's UPDATE, at the first new counter.
    connection = sqlite3.connect(store.path)
    connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON articles_entity_counters "
                       "WHEN NEW.entity = 'Analytical Society' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    connection.commit()
    connection.close()
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        await store.replace(upgraded(make_article(1)))
    assert (await store.get("article-1"), await store.entity_counters("wire")) == before
    assert store.state()["errors"] == 1 and store.state()["replaced"] == 0


# -- Firestore ------------------------------------------------------------------------------------------


def fail_transaction_commits(monkeypatch, before=None, after=None) -> list:
    """The writes of every transaction's commit, as ``[(document path, field transforms)]``;
    ``before(n)`` / ``after(n)`` run around the real commit number *n* and may raise: to fail
    it before it reaches Firestore, or once it has landed but its answer is lost."""
    commits = []
    commit = Transaction._commit

    def failing(self):
        number = len(commits)
        commits.append([(write.update.name.split("/documents/")[1], len(write.update_transforms))
                        for write in self._write_pbs])
        if before is not None:
            before(number)
        result = commit(self)
        if after is not None:
            after(number)
        return result

    monkeypatch.setattr(Transaction, "_commit", failing)
    return commits


@pytest_twisted.ensureDeferred
async def test_firestore_a_replace_waits_for_a_put_of_its_id_and_puts_wait_for_it(firestore_stores, make_article):
    clock = task.Clock()
    store = firestore_stores(entity_counters=True, clock=clock, batch_window=1)
    put = store.put(make_article(1))
    replace = store.replace(upgraded(make_article(1)))
    later_put = store.put(make_article(1))
    other = store.put(make_article(2))
    assert store.state()["queued"] == 3 and store.state()["in_flight"] == 1
    clock.advance(1)
    # Created by the put, then replaced; the later put finds it stored.
    assert await put is True
    assert await replace == "replaced"
    clock.advance(1)
    assert await later_put is False and await other is True
    assert without_time(await store.get("article-1")) == upgraded(make_article(1))
    await assert_counters_recount(store)
    assert store.state()["in_flight"] == 0


@pytest_twisted.ensureDeferred
async def test_firestore_stopping_waits_for_replaces(firestore_stores, make_article, monkeypatch):
    """One replace waits for a queued put of its id, another for its retry when the store stops."""
    def unavailable(number):
        if number == 0:
            raise api_exceptions.ServiceUnavailable("injected: the connection dropped")

    commits = fail_transaction_commits(monkeypatch, before=unavailable)
    store = firestore_stores(entity_counters=True, batch_window=3600, retry_initial=1)
    retried = store.replace(upgraded(make_article(2)))
    put = store.put(make_article(1))
    waiting = store.replace(upgraded(make_article(1)))
    await store.stopService()
    assert put.called and waiting.called and retried.called
    assert await put is True
    assert await defer.gatherResults([waiting, retried]) == ["replaced", "created"]
    assert len(commits) == 3 and store.state()["retries"] == 1
    await assert_counters_recount(firestore_stores(entity_counters=True))


@pytest_twisted.ensureDeferred
async def test_firestore_a_transaction_that_failed_before_reaching_firestore_is_retried(
        firestore_stores, make_article, monkeypatch):
    def unavailable(number):
        if number == 0:
            raise api_exceptions.ServiceUnavailable("injected: the connection dropped")

    store = firestore_stores(entity_counters=True, retry_initial=0.01)
    assert await store.put(make_article(1)) is True
    commits = fail_transaction_commits(monkeypatch, before=unavailable)
    assert await store.replace(upgraded(make_article(1))) == "replaced"
    assert len(commits) == 2 and store.state()["retries"] == 1
    await assert_counters_recount(store)


@pytest_twisted.ensureDeferred
async def test_firestore_a_transaction_whose_answer_was_lost_is_recognised_and_counts_once(
        firestore_stores, make_article, monkeypatch):
    def lost(number):
        if number == 0:
            raise api_exceptions.DeadlineExceeded("injected: the answer was lost")

    store = firestore_stores(entity_counters=True, retry_initial=0.01)
    assert await store.put(make_article(1)) is True
    commits = fail_transaction_commits(monkeypatch, after=lost)
    assert await store.replace(upgraded(make_article(1))) == "replaced"
    assert await store.replace(upgraded(make_article(2))) == "created"
    assert len(commits) == 2  # the lost one was recognised by its token, not committed again
    state = store.state()
    assert (state["replaced"], state["created"], state["errors"]) == (1, 2, 0)
    await assert_counters_recount(store)


@pytest_twisted.ensureDeferred
async def test_firestore_a_refused_transaction_changes_nothing(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True)
    assert await store.put(make_article(1)) is True
    before = (await store.get("article-1"), await store.entity_counters("wire"))
    # Firestore refuses a field named like __this__ in the document: the whole transaction fails.
    with pytest.raises(PermanentStoreError, match="refused to replace article 'article-1'"):
        await store.replace(upgraded(make_article(1), entity_counts={"__label__": 1}))
    assert (await store.get("article-1"), await store.entity_counters("wire")) == before
    assert store.state()["errors"] == 1 and store.state()["replaced"] == 0


@pytest_twisted.ensureDeferred
async def test_firestore_a_replace_spreads_its_increments_within_the_transform_limit(
        firestore_stores, make_article, monkeypatch):
    """120 old and 120 new distinct entities in one shard, at most 62 transforms per document:
    the decrements and increments go to enough sub-shards, and the sums stay right."""
    store = firestore_stores(entity_counters=True, counter_shards=1, counter_subshards=2, max_field_transforms=62,
                             batch_window=0)
    old = [{"text": f"Old {n}", "label": "ORG", "start": 0, "end": 1} for n in range(120)]
    new = [{"text": f"New {n}", "label": "ORG", "start": 0, "end": 1} for n in range(120)]
    assert await store.put(make_article(1, entities=old, entity_counts={})) is True
    commits = fail_transaction_commits(monkeypatch)
    assert await store.replace(make_article(1, entities=new, entity_counts={}, model=NEW_MODEL)) == "replaced"
    # One shard: 240 decrements and increments, 62 to a document: the article and 4 shard documents; and one
    # day: 480 keys (each entity alone and with its label), 61 to a document with its updated_at: 8 documents.
    ((article, *writes),) = commits
    assert article == ("articles/article-1", 0)
    shards = [write for write in writes if "/entity_shards/" in write[0]]
    days = [write for write in writes if "/entity_day_shards/" in write[0]]
    assert len(shards) + len(days) == len(writes)
    assert len(shards) == len({path for path, _ in shards}) == 4
    assert [transforms for _, transforms in shards] == [62, 62, 62, 54]
    assert len(days) == len({path for path, _ in days}) == 8
    assert [transforms for _, transforms in days] == [62] * 7 + [480 - 7 * 61 + 1]
    counters = await assert_counters_recount(store)
    assert set(counters["wire"]) == {entity["text"] for entity in new}
