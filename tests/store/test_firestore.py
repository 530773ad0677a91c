"""The Firestore store against Google's emulator: batching, idempotency, retries, failures."""
from __future__ import annotations

import json
import random
import threading

import pytest
import pytest_twisted
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore as gcf
from google.cloud.firestore_v1.batch import WriteBatch
from google.cloud.firestore_v1.types import Write
from twisted.internet import defer, reactor, task, threads

from tests.firestore_emulator import free_port
from pipedingest.article import MAX_DISTINCT_ENTITIES
from pipedingest.store.base import (
    DocumentTooLarge,
    IArticleStore,
    InvalidArticle,
    PermanentStoreError,
    StoreUnavailable,
    entity_tally,
)
from pipedingest.store.firestore import MAX_FIELD_TRANSFORMS, FirestoreStore, shard_of


def _count_documents(project, collection="articles"):
    client = gcf.Client(project=project)
    try:
        return sum(1 for _ in client.collection(collection).stream())
    finally:
        client.close()


def _shard_documents(project, source):
    """The ids of *source*'s entity shard documents, read with a client of the test's own."""
    client = gcf.Client(project=project)
    try:
        return sorted(snapshot.id for snapshot in
                      client.collection("sources").document(source).collection("entity_shards").stream())
    finally:
        client.close()


def record_commits(monkeypatch, before=None, after=None):
    """The writes of every commit any client sends, recorded as they go out (a spy, not a fake).

    ``before(n)`` / ``after(n)`` run around the real commit number *n* (from 0) and may
    raise, to fail a commit at an exact moment: before it reaches Firestore, or once it
    has landed but its answer is lost.
    """
    commits = []
    commit = WriteBatch.commit

    def recorded(self, *args, **kwargs):
        number = len(commits)
        commits.append(list(self._write_pbs))
        if before is not None:
            before(number)
        result = commit(self, *args, **kwargs)
        if after is not None:
            after(number)
        return result

    monkeypatch.setattr(WriteBatch, "commit", recorded)
    return commits


def shard_writes(writes):
    """``{shard document id: {field path: increment}}`` of the counter writes among *writes*."""
    return {write.update.name.rsplit("/", 1)[1]: {transform.field_path: transform.increment.integer_value
                                                  for transform in write.update_transforms}
            for write in writes if "/entity_shards/" in write.update.name}


def day_writes(writes):
    """``{day shard document id: {field path: increment}}`` of the day-bucket writes among *writes*
    (their ``updated_at`` left out)."""
    return {write.update.name.rsplit("/", 1)[1]: {transform.field_path: transform.increment.integer_value
                                                  for transform in write.update_transforms
                                                  if transform.field_path != "updated_at"}
            for write in writes if "/entity_day_shards/" in write.update.name}


def entities(texts, label="PERSON"):
    return [{"text": text, "label": label, "start": 0, "end": 1} for text in texts]


@pytest_twisted.ensureDeferred
async def test_round_trip_and_recent_newest_first(firestore_stores, make_article):
    store = firestore_stores(batch_window=0)
    assert IArticleStore.providedBy(store)
    for n, source in ((1, "wire"), (2, "wire"), (3, "blog")):
        assert await store.put(make_article(n, source=source)) is True

    got = await store.get("article-1")
    ingested_at = got.pop("ingested_at")
    assert got == make_article(1)
    assert ingested_at.endswith("Z") and ingested_at[:4].isdigit()
    json.dumps(got)
    assert await store.get("absent") is None
    assert [d["id"] for d in await store.recent()] == ["article-3", "article-2", "article-1"]
    assert [d["id"] for d in await store.recent(source="wire")] == ["article-2", "article-1"]
    assert [d["id"] for d in await store.recent(limit=1)] == ["article-3"]
    assert "_ingest_token" not in (await store.recent())[0]


@pytest_twisted.ensureDeferred
async def test_same_document_shape_as_sqlite(firestore_stores, sqlite_stores, make_article):
    stored = []
    for store in (firestore_stores(), sqlite_stores()):
        await store.put(make_article(5))
        document = await store.get("article-5")
        stored.append({key: value for key, value in document.items() if key != "ingested_at"})
    assert stored[0] == stored[1]


@pytest_twisted.ensureDeferred
async def test_puts_wait_for_the_window_then_share_one_commit(firestore_stores, make_article, wait_until):
    clock = task.Clock()
    store = firestore_stores(clock=clock, batch_window=0.5)
    puts = [store.put(make_article(n)) for n in range(3)]
    assert store.state()["queued"] == 3
    clock.advance(0.4)
    assert store.state()["queued"] == 3 and store.state()["commits"] == 0
    clock.advance(0.1)
    assert store.state()["queued"] == 0 and store.state()["in_flight"] == 3
    assert await defer.gatherResults(puts) == [True, True, True]
    assert store.state()["commits"] == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_duplicates_make_one_document_and_count_once(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0.001, max_concurrent_commits=3,
                             counter_shards=4, max_batch_writes=70)
    puts = []
    for round_ in range(50):
        puts.append(store.put(make_article(7, source="dup")))
        puts.append(store.put(make_article(100 + round_)))
    results = await defer.gatherResults(puts)
    duplicates = results[0::2]
    assert duplicates.count(True) == 1 and duplicates.count(False) == 49
    assert all(results[1::2])
    assert await threads.deferToThread(_count_documents, store.project) == 51
    counters = await store.entity_counters("dup")
    assert counters["London"] == {"count": 1, "labels": {"GPE": 1}}
    assert (await store.entity_counters("wire"))["London"]["count"] == 50
    assert store.state()["errors"] == 0


@pytest_twisted.ensureDeferred
async def test_two_daemons_racing_on_the_same_ids(firestore_stores, make_article):
    """Across processes only the create precondition can decide: each id once, counters once."""
    stores = [firestore_stores(entity_counters=True, batch_window=0.002) for _ in range(2)]
    puts = [store.put(make_article(n)) for n in range(60) for store in stores]
    results = await defer.gatherResults(puts)
    for n in range(60):
        assert sorted(results[2 * n:2 * n + 2]) == [False, True]
    assert await threads.deferToThread(_count_documents, stores[0].project) == 60
    assert (await stores[0].entity_counters("wire"))["Ada Lovelace"] == {"count": 60, "labels": {"PERSON": 60}}


@pytest_twisted.ensureDeferred
async def test_an_existing_id_does_not_sink_its_batch(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0)
    assert await store.put(make_article(2)) is True
    clock = task.Clock()
    store = firestore_stores(entity_counters=True, clock=clock, batch_window=1)
    puts = [store.put(make_article(n)) for n in (1, 2, 3)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True, False, True]
    assert store.state()["conflicts"] == 1 and store.state()["commits"] == 1
    assert (await store.entity_counters("wire"))["London"]["count"] == 3


@pytest_twisted.ensureDeferred
async def test_a_commit_that_landed_unanswered_is_still_reported_created(firestore_stores, make_article):
    """The moment a reply is lost cannot be provoked on demand, so replay the commit itself."""
    store = firestore_stores(entity_counters=True)
    article = make_article(1)
    item = store.prepare("article-1", {k: v for k, v in article.items() if k != "id"}, {"London": {"GPE": 1}})
    await store.in_thread(store.commits.commit_in_thread, [item])
    item.created = None  # as if the answer had been lost
    outcome = await store.in_thread(store.commits.commit_in_thread, [item])
    assert item.created is True and outcome.conflicts == 1 and outcome.commits == 0
    assert (await store.entity_counters("wire"))["London"]["count"] == 1


@pytest_twisted.ensureDeferred
async def test_nothing_is_lost_when_the_emulator_restarts_mid_run(
        firestore_stores, firestore, make_article, wait_until):
    store = firestore_stores(batch_window=0.005, rpc_timeout=5, retry_initial=0.05, retry_maximum=0.5,
                             retry_deadline=120)
    puts = {}

    def post():
        n = len(puts)
        if n < 150:
            puts[n] = store.put(make_article(n))

    feeder = task.LoopingCall(post)
    feeder.start(0.005)
    await wait_until(lambda: sum(put.called for put in puts.values()) >= 40, what="40 stored articles")
    await threads.deferToThread(firestore.stop)
    unsettled_at_stop = {n for n, put in puts.items() if not put.called}
    await wait_until(lambda: store.state()["retries"] >= 3, what="retries while the emulator is down")
    await threads.deferToThread(firestore.start)
    await wait_until(lambda: len(puts) == 150, what="the feeder")
    feeder.stop()
    results = await defer.gatherResults(list(puts.values()))
    assert results == [True] * 150
    for n in sorted(unsettled_at_stop | set(range(max(puts) - 5, 150))):
        assert (await store.get(f"article-{n}"))["id"] == f"article-{n}"
    assert store.state()["errors"] == 0


@pytest_twisted.ensureDeferred
async def test_backoff_grows_with_jitter_and_gives_up_at_the_deadline(
        firestore_stores, make_article, wait_until, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nobody listens
    clock = task.Clock()
    store = firestore_stores(clock=clock, batch_window=0, rpc_timeout=5, retry_initial=1,
                             retry_maximum=4, retry_deadline=10, random=random.Random(4))
    put = store.put(make_article(1))
    clock.advance(0)
    delays = []
    for attempt in range(1, 10):
        await wait_until(lambda: store.state()["retries"] == attempt or put.called, what="a failed attempt")
        if put.called:
            break
        (pending,) = clock.getDelayedCalls()
        delays.append(pending.getTime() - clock.seconds())
        clock.advance(delays[-1])
    with pytest.raises(StoreUnavailable, match="kept failing for 10s"):
        await put
    caps = [1, 2, 4, 4, 4]
    assert len(delays) >= 3 and sum(delays) <= 10
    for delay, cap in zip(delays, caps):
        assert cap / 2 <= delay <= cap
    assert len(set(delays[2:])) == len(delays[2:])  # jittered, not a fixed step
    assert store.state()["errors"] == 1


@pytest_twisted.ensureDeferred
async def test_too_large_document_is_refused_before_sending(firestore_stores, make_article):
    clock = task.Clock()
    store = firestore_stores(clock=clock, batch_window=1)
    small = [store.put(make_article(n)) for n in range(3)]
    huge = store.put(make_article(9, body="é" * 530_000))
    assert huge.called
    with pytest.raises(DocumentTooLarge) as refused:
        await huge
    assert refused.value.limit == 1_048_576 and refused.value.article_id == "article-9"
    clock.advance(1)
    assert await defer.gatherResults(small) == [True] * 3
    assert await store.get("article-9") is None


@pytest_twisted.ensureDeferred
async def test_a_refused_article_fails_alone_and_the_rest_of_its_batch_is_stored(
        firestore_stores, make_article):
    """Let a too-large document through the local check so that the emulator itself refuses it."""
    clock = task.Clock()
    store = firestore_stores(clock=clock, batch_window=1, max_document_bytes=3_000_000,
                             max_batch_bytes=4_000_000)
    puts = [store.put(make_article(n)) for n in range(5)]
    refused = store.put(make_article(99, body="x" * 1_500_000))
    puts += [store.put(make_article(n)) for n in range(5, 10)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True] * 10
    with pytest.raises(PermanentStoreError, match="refused article 'article-99': InvalidArgument") as error:
        await refused
    assert not isinstance(error.value, DocumentTooLarge)
    state = store.state()
    assert state["errors"] == 1 and state["split"] >= 1 and state["retries"] == 0
    assert await store.get("article-99") is None


@pytest_twisted.ensureDeferred
async def test_commits_hold_at_most_500_writes(firestore_stores, make_article, monkeypatch):
    commits = record_commits(monkeypatch)
    clock = task.Clock()
    store = firestore_stores(clock=clock, entity_counters=True, max_concurrent_commits=1)
    # Each article is a write; the counts of its 3 entities join the others' in the shards' documents,
    # and its entity keys join theirs in one day bucket (all are published on one day).
    shards = len({shard_of(text, 64) for text in ("Ada Lovelace", "Charles Babbage", "London")}) + 1
    puts = [store.put(make_article(n)) for n in range(1200)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True] * 1200
    state = store.state()
    assert [len(writes) for writes in commits] == [500, 500, 1200 - 2 * (500 - shards) + shards]
    assert state["largest_commit"]["writes"] == 500
    assert state["commits"] == 3 and state["counter_writes"] == 3 * shards
    assert (await store.entity_counters("wire"))["London"] == {"count": 1200, "labels": {"GPE": 1200}}


@pytest_twisted.ensureDeferred
async def test_one_flush_sums_its_articles_counts_into_one_write_per_shard_document(
        firestore_stores, make_article, monkeypatch):
    """A popular entity in 40 articles of one commit costs one increment of 40, not 40 writes."""
    commits = record_commits(monkeypatch)
    clock = task.Clock()
    store = firestore_stores(clock=clock, batch_window=1, entity_counters=True, counter_shards=8)
    puts = [store.put(make_article(n, entities=entities(["Ada Lovelace", "London", f"Person {n}"])))
            for n in range(40)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True] * 40
    (writes,) = commits
    shards = {shard_of(text, 8) for text in ["Ada Lovelace", "London"] + [f"Person {n}" for n in range(40)]}
    counted = shard_writes(writes)
    # ... and one day bucket: the 84 keys of one published day (each entity alone and with its label)
    (day,) = day_writes(writes).values()
    assert len(writes) == 40 + len(shards) + 1 and len(counted) == len(shards) and len(day) == 84
    assert day["counts.`ada lovelace|PERSON`"] == day["counts.london"] == 40
    assert {name.split("-")[1] for name in counted} == {str(shard) for shard in shards}
    increments = {path: n for fields in counted.values() for path, n in fields.items()}
    assert increments.pop("counts.`Ada Lovelace`.PERSON") == 40
    assert increments.pop("counts.London.PERSON") == 40
    assert increments == {f"counts.`Person {n}`.PERSON": 1 for n in range(40)}
    state = store.state()
    assert state["commits"] == 1 and state["counter_writes"] == len(shards) + 1
    assert state["counter_increments"] == 42 + 84
    counters = await store.entity_counters("wire")
    assert counters["Ada Lovelace"] == counters["London"] == {"count": 40, "labels": {"PERSON": 40}}
    assert len(counters) == 42


@pytest_twisted.ensureDeferred
async def test_the_cutter_keeps_every_document_within_its_transform_limit(
        firestore_stores, make_article, monkeypatch):
    """One shard, 62 transforms per document and commit: 100 articles of 100 entities (200 day-bucket keys)
    need 2 commits."""
    commits = record_commits(monkeypatch)
    clock = task.Clock()
    store = firestore_stores(clock=clock, entity_counters=True, counter_shards=1, counter_subshards=3,
                             max_field_transforms=62, max_batch_writes=500, max_concurrent_commits=1)
    puts = [store.put(make_article(n, entities=entities([f"Own {n}.{k}" for k in range(90)]
                                                          + [f"Shared {k}" for k in range(10)])))
            for n in range(100)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True] * 100
    # n articles hold 10 + 90 n distinct entities, 62 to a document, and 20 + 180 n day-bucket keys, 61 to a
    # document (its updated_at is the 62nd transform): n + ceil((10 + 90 n) / 62) + ceil((20 + 180 n) / 61)
    # <= 500 for n <= 92.
    assert [len(writes) for writes in commits] == [92 + 134 + 272, 8 + 12 + 24]
    for writes in commits:
        counted, days = shard_writes(writes), day_writes(writes)
        assert all(len(fields) <= 62 for fields in counted.values())
        assert all(len(fields) <= 61 for fields in days.values())
        assert len(counted) + len(days) == len(writes) - sum(1 for write in writes if "/articles/" in write.update.name)
    counters = await store.entity_counters("wire")
    assert len(counters) == 100 * 90 + 10
    assert counters["Shared 3"] == {"count": 100, "labels": {"PERSON": 100}}
    assert counters["Own 99.89"] == {"count": 1, "labels": {"PERSON": 1}}


@pytest_twisted.ensureDeferred
async def test_the_largest_article_fits_one_commit_within_firestores_limits(
        firestore_stores, make_article, monkeypatch):
    """The emulator enforces neither 500 writes nor 500 transforms per document: check what is sent."""
    commits = record_commits(monkeypatch)
    store = firestore_stores(entity_counters=True, batch_window=0)
    texts = [f"Entity {n}" for n in range(MAX_DISTINCT_ENTITIES)]
    assert await store.put(make_article(1, body="Many.", entities=entities(texts))) is True
    (writes,) = commits
    counted, days = shard_writes(writes), day_writes(writes)
    assert len(writes) <= 500 and len(counted) + len(days) == len(writes) - 1
    assert max(len(write.update_transforms) for write in writes) <= MAX_FIELD_TRANSFORMS
    assert sum(len(fields) for fields in counted.values()) == MAX_DISTINCT_ENTITIES
    assert sum(len(fields) for fields in days.values()) == 2 * MAX_DISTINCT_ENTITIES
    assert len(await store.entity_counters("wire")) == MAX_DISTINCT_ENTITIES


@pytest_twisted.ensureDeferred
async def test_a_popular_entitys_increments_spread_over_the_sub_shards(firestore_stores, make_article):
    store = firestore_stores(entity_counters=True, batch_window=0, counter_shards=2, counter_subshards=4,
                             random=random.Random(7))
    for n in range(40):
        assert await store.put(make_article(n, entities=entities(["Ada Lovelace"]))) is True
    shard = shard_of("Ada Lovelace", 2)
    documents = await threads.deferToThread(_shard_documents, store.project, "wire")
    assert documents == [f"s2-{shard}-{sub}" for sub in range(4)]
    assert (await store.entity_counters("wire"))["Ada Lovelace"]["count"] == 40


@pytest_twisted.ensureDeferred
async def test_changing_the_shard_count_keeps_the_sums(firestore_stores, make_article):
    before = firestore_stores(entity_counters=True, batch_window=0, counter_shards=4)
    for n in range(3):
        await before.put(make_article(n))
    after = firestore_stores(entity_counters=True, batch_window=0, counter_shards=16, counter_subshards=2)
    for n in range(3, 5):
        await after.put(make_article(n))
    documents = await threads.deferToThread(_shard_documents, after.project, "wire")
    assert {name.split("-")[0] for name in documents} == {"s4", "s16"}
    for store in (before, after):
        assert (await store.entity_counters("wire"))["London"] == {"count": 5, "labels": {"GPE": 5}}


def test_max_batch_writes_must_hold_the_largest_articles_counters():
    # 1 article + 64 entity shards + 10,000 entities / 500 + 20,000 day-bucket keys / 499
    with pytest.raises(ValueError, match="too small for the entity counters.* may need 126 writes"):
        FirestoreStore(project="p", entity_counters=True, max_batch_writes=125)
    FirestoreStore(project="p", entity_counters=True, max_batch_writes=126)
    with pytest.raises(ValueError, match="max_field_transforms must be at least 2"):
        FirestoreStore(project="p", entity_counters=True, counter_shards=1, max_field_transforms=1)
    FirestoreStore(project="p", max_batch_writes=1)
    with pytest.raises(ValueError, match="max_field_transforms"):
        FirestoreStore(project="p", max_field_transforms=501)


@pytest_twisted.ensureDeferred
async def test_a_commit_that_failed_before_reaching_firestore_is_retried_and_counts_once(
        firestore_stores, make_article, monkeypatch):
    def unavailable(number):
        if number == 0:
            raise api_exceptions.ServiceUnavailable("injected: the connection dropped")

    commits = record_commits(monkeypatch, before=unavailable)
    store = firestore_stores(entity_counters=True, batch_window=0.05, retry_initial=0.01)
    puts = [store.put(make_article(n)) for n in range(3)]
    assert await defer.gatherResults(puts) == [True] * 3
    state = store.state()
    assert (len(commits), state["retries"], state["conflicts"], state["commits"]) == (2, 1, 0, 1)
    assert (await store.entity_counters("wire"))["London"]["count"] == 3


@pytest_twisted.ensureDeferred
async def test_a_commit_whose_answer_was_lost_is_retried_and_counts_once(
        firestore_stores, make_article, monkeypatch):
    """The commit lands and its answer is lost: the retry meets ALREADY_EXISTS, finds its own tokens
    and reports the articles created, and the retry's counters, refused with it, are never applied."""
    def lost(number):
        if number == 0:
            raise api_exceptions.DeadlineExceeded("injected: the answer was lost")

    commits = record_commits(monkeypatch, after=lost)
    store = firestore_stores(entity_counters=True, batch_window=0.05, retry_initial=0.01)
    puts = [store.put(make_article(n)) for n in range(3)]
    assert await defer.gatherResults(puts) == [True] * 3
    state = store.state()
    assert (len(commits), state["retries"], state["conflicts"], state["commits"]) == (2, 1, 1, 0)
    assert (state["created"], state["existing"]) == (3, 0)
    assert (await store.entity_counters("wire"))["London"] == {"count": 3, "labels": {"GPE": 3}}


@pytest_twisted.ensureDeferred
async def test_commits_hold_at_most_the_byte_budget(firestore_stores, make_article):
    clock = task.Clock()
    store = firestore_stores(clock=clock, max_batch_bytes=1_000_000, max_concurrent_commits=1)
    puts = [store.put(make_article(n, body="b" * 200_000)) for n in range(20)]
    clock.advance(1)
    assert await defer.gatherResults(puts) == [True] * 20
    state = store.state()
    assert 800_000 < state["largest_commit"]["bytes"] <= 1_000_000
    assert state["commits"] == 5


@pytest_twisted.ensureDeferred
async def test_a_budget_just_under_the_emulators_4_mib_cap_is_never_refused(firestore_stores, make_article):
    store = firestore_stores(max_batch_bytes=4_150_000, batch_window=0.05, max_concurrent_commits=1)
    puts = [store.put(make_article(n, body="z" * 1_000_000, entities=[])) for n in range(12)]
    assert await defer.gatherResults(puts) == [True] * 12
    state = store.state()
    assert state["split"] == 0 and state["errors"] == 0 and state["commits"] == 3


def test_the_byte_estimate_bounds_the_encoded_writes(firestore, make_article):
    """The budget is only as good as the estimate: compare it with the real protobuf sizes."""
    store = FirestoreStore(project=firestore.project, entity_counters=True)
    client = gcf.Client(project=firestore.project)
    many = [{"text": f"Entity {i}", "label": "ORG", "start": i, "end": i + 8} for i in range(300)]
    odd = [{"text": text, "label": "a`b", "start": 0, "end": 1} for text in ("`" * 500, "__x__", "a.b", "é" * 300)]
    for article in (make_article(1), make_article(2, body="ü" * 300_000, entities=many),
                    make_article(3, title="", body="", entities=many[:1], words=0),
                    make_article(4, source="s" * 1000, entities=odd)):
        fields = {k: v for k, v in article.items() if k != "id"}
        item = store.prepare(article["id"], fields, entity_tally(article["entities"]))
        batch = client.batch()
        store.commits.writer.add_writes(client, batch, [item], 0)
        encoded = sum(Write.pb(write).ByteSize() + 6 for write in batch._write_pbs)
        assert encoded <= item.size <= 3 * encoded + 2000
    client.close()


@pytest_twisted.ensureDeferred
async def test_the_reactor_keeps_running_while_firestore_stalls(firestore_stores, firestore, make_article,
                                                                 wait_until):
    store = firestore_stores(batch_window=0)
    await store.put(make_article(0))  # the client exists and is connected
    ticks = []
    ticker = task.LoopingCall(lambda: ticks.append(reactor.seconds()))
    # Should the store block the reactor, this thread ends the stall so the test fails, not hangs.
    watchdog = threading.Timer(20, firestore.resume)
    firestore.pause()
    watchdog.start()
    try:
        put = store.put(make_article(1))
        ticker.start(0.01)
        await wait_until(lambda: len(ticks) >= 30 and store.state()["in_flight"] == 1, what="30 ticks")
        assert not put.called
        deferred_read = store.get("article-0")
        await wait_until(lambda: len(ticks) >= 40, what="10 more ticks")
        assert not deferred_read.called
    finally:
        watchdog.cancel()
        firestore.resume()
        if ticker.running:
            ticker.stop()
    assert await put is True
    assert (await deferred_read)["id"] == "article-0"


@pytest_twisted.ensureDeferred
async def test_stopping_flushes_the_queue_and_then_refuses(firestore_stores, make_article):
    store = firestore_stores(batch_window=3600)
    puts = [store.put(make_article(n)) for n in range(10)]
    assert store.state()["queued"] == 10
    await store.stopService()
    assert all(put.called for put in puts)
    assert await defer.gatherResults(puts) == [True] * 10
    with pytest.raises(StoreUnavailable):
        await store.put(make_article(11))
    reader = firestore_stores()
    assert len(await reader.recent(limit=100)) == 10


@pytest_twisted.ensureDeferred
async def test_invalid_articles_and_state(firestore_stores, make_article):
    store = firestore_stores()
    for bad, message in ((make_article(1, id="a/b"), "contains '/'"),
                         (make_article(1, id="__x__"), "reserved"),
                         (make_article(1, colour="red"), "colour"),
                         (make_article(1, source=""), "source")):
        with pytest.raises(InvalidArticle, match=message):
            await store.put(bad)
    state = store.state()
    json.dumps(state)
    assert {"queued", "in_flight", "commits", "retries", "errors", "threads"} <= set(state)
    assert state["errors"] == 4 and state["threads"]["size"] == 4
