"""Articles by entity in Firestore (Google's emulator), page by page, as SQLite answers them.

The same real corpus articles go into a SQLite store and a Firestore store with one clock, so that an article
without a publication date sorts by the same moment of storing in both; every page of several queries must be
the same in both, and what a scan of the documents computes. Then: cursors that hold while articles are
stored, the back-fill that gives ``sort_at`` to documents an earlier version wrote (written here with the
client, as that version did), and a missing composite index named in a 501. The emulator never requires an
index, so Firestore's refusal is the one thing faked: its real exception class and message, raised by the RPC.
"""
from __future__ import annotations

import json
import re
import threading
import zlib
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest
import pytest_twisted
import treq
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore as gcf
from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from twisted.internet import defer, reactor, task, threads

from pipedingest.article import check_article, entity_key, extraction_result, stored_document
from pipedingest.load import read_articles
from pipedingest.store.base import IndexMissing, StoreError
from pipedingest.store.firestore.queries import INDEX_FILE
from tests.conftest import ROOT, url
from tests.corpus import corpus_path

SOURCES = ("wire", "desk", "blog")
LABELS = ("PERSON", "ORG", "GPE")
MODEL = {"name": "en_core_web_sm", "version": "3.8.0"}
#: Capitalised runs of words: the synthetic entities of an article.
_NAMES = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*")
#: When the articles without a publication date are stored: between the corpus' 2017/2/6 and 2017/2/7.
STORED_FROM = datetime(2017, 2, 6, 12, 0, tzinfo=timezone.utc).timestamp()
#: What Firestore answers a query whose composite index does not exist (its text, and a console link of its form).
NEEDS_INDEX = ("The query requires an index. You can create it here: https://console.firebase.google.com/v1/r/project/"
               "pipedingest-test/firestore/indexes?create_composite=ClVwcm9qZWN0cy9waXBlZGluZ2VzdC10ZXN0L2RhdGFiYXNl"
               "cy8oZGVmYXVsdCkvY29sbGVjdGlvbkdyb3Vwcy9hcnRpY2xlcy9pbmRleGVzL18QARoPCgtlbnRpdHlfa2V5cxgBGgoKBnNvdXJj"
               "ZRABGgsKB3NvcnRfYXQQAhoMCghfX25hbWVfXxAC")


def entities_of(text: str, n: int) -> list[dict]:
    """Up to 15 capitalised names of *text*, each labelled by its hash; one name in four takes another label in
    every other article, so that a text alone and with its label find different articles."""
    found, seen = [], set()
    for match in _NAMES.finditer(text):
        if match.group(0) in seen:
            continue
        seen.add(match.group(0))
        digest = zlib.crc32(match.group(0).encode())
        label = LABELS[(digest + (n % 2 if digest % 4 == 0 else 0)) % 3]
        found.append({"text": match.group(0), "label": label, "start": match.start(), "end": match.end()})
        if len(found) == 15:
            break
    return found


def corpus_documents(start: int, count: int) -> list[dict]:
    """Stored documents of real corpus articles (spread over the first few hundred), every seventh without its
    publication date; sources in turn; synthetic entities."""
    raw = [article for article in read_articles(corpus_path(), 700) if article["body"].strip()][::10]
    documents = []
    for n, article in enumerate(raw[start:start + count], start):
        article = {**article, "source": SOURCES[n % 3]}
        if n % 7 == 3:
            del article["published"]
        article = check_article(article)
        result = extraction_result(article, entities_of(article["body"], n), MODEL)
        documents.append(stored_document(article, result))
    return documents


async def put_both(stores, clock, documents) -> dict[str, str]:
    """Put *documents* into every store at the same moments (a minute apart); ``{id: sort time}``."""
    sorts = {}
    for n, document in enumerate(documents):
        clock.advance(STORED_FROM + 60 * n - clock.seconds())
        for store in stores:
            putting = store.put(document)
            clock.advance(0)  # the Firestore store's batch window
            assert await putting is True
        sorts[document["id"]] = document.get("published_at") or \
            datetime.fromtimestamp(clock.seconds(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return sorts


def scan(documents, sorts, key="", source=None, since=None, until=None) -> list[str]:
    """The ids that answer a query, newest first then by id, computed from the documents themselves."""
    found = [(sorts[d["id"]], d["id"]) for d in documents
             if (key == "" or key in d["entity_keys"]) and source in (None, d["source"])
             and (since is None or sorts[d["id"]] >= since) and (until is None or sorts[d["id"]] < until)]
    return [article_id for _, article_id in sorted(found, reverse=True)]


async def pages(store, limit, **query) -> list[tuple[list[str], tuple | None]]:
    """Every page of a query: its ids and the cursor it ends with."""
    walked, after = [], None
    while True:
        documents, last = await store.query(**query, limit=limit, after=after)
        walked.append(([document["id"] for document in documents], last))
        if last is None:
            return walked
        assert len(documents) == limit
        after = last


def walked(store):
    """Deferred that fires once the store's back-fill has ended; a TimeoutError, not a hang, if it never does."""
    return store.backfill.wait().addTimeout(60, reactor)


def raw_client(project):
    return gcf.Client(project=project)


@pytest_twisted.ensureDeferred
async def test_every_page_is_the_one_sqlite_answers(firestore_stores, sqlite_stores):
    clock = task.Clock()
    in_firestore = firestore_stores(clock=clock, batch_window=0)
    in_sqlite = sqlite_stores(path=":memory:", clock=clock)
    await walked(in_firestore)
    documents = corpus_documents(0, 60)
    sorts = await put_both((in_firestore, in_sqlite), clock, documents)

    counts: dict[str, int] = {}
    for document in documents:
        for key in document["entity_keys"]:
            counts[key] = counts.get(key, 0) + 1
    texts = sorted((key for key in counts if "|" not in key), key=lambda key: (-counts[key], key))[:4]
    labelled = sorted((key for key in counts if "|" in key and counts[key] >= 3), key=lambda key: (-counts[key], key))
    assert labelled and any(counts[key.partition("|")[0]] > counts[key] for key in labelled)
    queries = [({}, 7), ({"source": "wire"}, 5),
               ({"since": "2017-02-06T00:00:00.000000Z", "until": "2017-02-07T00:00:00.000000Z"}, 2),
               ({"key": labelled[0]}, 2), ({"key": labelled[-1], "source": "desk"}, 1)]
    queries += [({"key": key}, 3) for key in texts]
    queries += [({"key": texts[0], "source": source, "until": "2017-02-07T00:00:00.000001Z"}, 2)
                for source in SOURCES]
    for query, limit in queries:
        expected = scan(documents, sorts, **query)
        assert len(expected) > limit or query.get("source"), (query, expected)  # most of them need several pages
        answered = await pages(in_firestore, limit, **query)
        assert answered == await pages(in_sqlite, limit, **query), query
        assert [article_id for ids, _ in answered for article_id in ids] == expected, query

    # Articles without a publication date sort by when they were stored: here, between 2017/2/6 and 2017/2/7.
    undated = [document["id"] for document in documents if "published_at" not in document]
    every = scan(documents, sorts)
    assert len(undated) >= 5
    first_older = min(every.index(d["id"]) for d in documents if d.get("published_at", "9") < "2017-02-07")
    assert all(every.index(article_id) < first_older for article_id in undated)
    assert all(every.index(article_id) > every.index(d["id"]) for article_id in undated for d in documents
               if d.get("published_at", "") >= "2017-02-07")

    # The documents themselves are those SQLite keeps (the time of storing aside: the emulator's clock).
    first = [(await store.query(texts[0], limit=5))[0] for store in (in_firestore, in_sqlite)]
    assert [{k: v for k, v in d.items() if k != "ingested_at"} for d in first[0]] == \
        [{k: v for k, v in d.items() if k != "ingested_at"} for d in first[1]]
    assert in_firestore.state()["errors"] == 0


@pytest_twisted.ensureDeferred
async def test_pages_neither_repeat_nor_miss_while_articles_are_stored(firestore_stores):
    store = firestore_stores(batch_window=0)
    documents = corpus_documents(0, 60)
    for document in documents[:30]:
        assert await store.put(document) is True
    before = [document["id"] for document in documents[:30]]
    more = iter(documents[30:])
    walked, after, stored_between = [], None, 0
    while True:
        found, after = await store.query("", limit=4, after=after)
        walked += [document["id"] for document in found]
        if after is None:
            break
        for document in [next(more, None) for _ in range(5)]:
            if document is not None:
                assert await store.put(document) is True
                stored_between += 1
    assert stored_between == 30
    assert len(walked) == len(set(walked)), "an article was answered twice"
    assert set(before) <= set(walked), "an article stored before the walk was missed"
    assert set(walked) - set(before), "no article stored during the walk was met: the walk proves little"


def old_documents() -> dict[str, dict]:
    """Documents as earlier versions wrote them: none has sort_at; old-1 predates entity_keys too; old-2 was
    stored once published_at existed."""
    entities = [{"text": "Tim Cook", "label": "PERSON", "start": 0, "end": 8}]
    base = {"source": "wire", "body": "Tim Cook spoke.", "entities": entities, "entity_counts": {"PERSON": 1},
            "words": 3, "model": MODEL, "_ingest_token": "0" * 32}
    keys = {"entity_keys": ["tim cook", "tim cook|PERSON"]}
    return {
        "old-0": {**base, **keys, "ingested_at": datetime(2026, 1, 1, tzinfo=timezone.utc)},
        "old-1": {**base, "ingested_at": datetime(2026, 1, 2, tzinfo=timezone.utc)},
        "old-2": {**base, **keys, "published": "2025-12-31", "published_at": "2025-12-31T00:00:00.000000Z",
                  "ingested_at": datetime(2026, 1, 3, tzinfo=timezone.utc)},
    }


def write_raw(project, documents: dict[str, dict]) -> None:
    client = raw_client(project)
    try:
        for article_id, data in documents.items():
            client.collection("articles").document(article_id).set(data)
    finally:
        client.close()


def read_raw(project, *ids) -> dict[str, dict | None]:
    client = raw_client(project)
    try:
        return {article_id: client.collection("articles").document(article_id).get().to_dict() for article_id in ids}
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_articles_stored_before_sort_at_are_found_once_the_store_has_started(firestore, firestore_stores):
    await threads.deferToThread(write_raw, firestore.project, old_documents())
    assert all("sort_at" not in data for data in (await threads.deferToThread(
        read_raw, firestore.project, "old-0", "old-1", "old-2")).values())

    store = firestore_stores(batch_window=0)
    await walked(store)
    # The marker, the page of three, each of them again with the fields its sort time comes from.
    assert store.state()["backfill"] == {"status": "done", "reads": 1 + 3 + 3, "writes": 3, "conflicts": 0,
                                         "refused": 0, "unsettled": 0, "retries": 0}
    assert await store.put({"id": "new-0", "source": "wire", "body": "Tim Cook again.",
                            "published_at": "2026-01-01T12:00:00.000000Z",
                            "entities": [{"text": "TIM  COOK", "label": "PERSON", "start": 0, "end": 9}],
                            "entity_keys": ["tim cook", "tim cook|PERSON"]}) is True

    # Sorted by published_at, else by ingested_at; the labelled key found the article that had no keys.
    documents, last = await store.query(entity_key("Tim Cook"), limit=10)
    assert [document["id"] for document in documents] == ["old-1", "new-0", "old-0", "old-2"] and last is None
    assert all("sort_at" not in document for document in documents)
    documents, _ = await store.query(entity_key("Tim Cook", "PERSON"), source="wire", limit=2)
    assert [document["id"] for document in documents] == ["old-1", "new-0"]
    raw = await threads.deferToThread(read_raw, firestore.project, "old-0", "old-1", "old-2")
    assert {article_id: data["sort_at"] for article_id, data in raw.items()} == {
        "old-0": "2026-01-01T00:00:00.000000Z", "old-1": "2026-01-02T00:00:00.000000Z",
        "old-2": "2025-12-31T00:00:00.000000Z"}
    assert raw["old-1"]["entity_keys"] == ["tim cook", "tim cook|PERSON"]
    assert raw["old-0"]["_ingest_token"] == "0" * 32  # an update: the rest of the document is as it was

    # The marker: the next start reads one document and walks nothing.
    again = firestore_stores()
    await walked(again)
    assert again.state()["backfill"]["status"] == "skipped"
    assert again.state()["backfill"]["reads"] == 1 and again.state()["backfill"]["writes"] == 0


@pytest_twisted.ensureDeferred
async def test_the_back_fill_neither_recreates_a_deleted_article_nor_overwrites_a_newer_write(
        firestore, firestore_stores, monkeypatch):
    """Between the walk's read and its write, one article is deleted and one replaced (the exact moment is
    what a spy gives: the real write runs right after)."""
    await threads.deferToThread(write_raw, firestore.project, old_documents())
    commit = BulkWriteBatch.commit
    interfered = []

    def meddling(self, *args, **kwargs):
        if not interfered:
            interfered.append(True)
            client = raw_client(firestore.project)
            try:
                client.collection("articles").document("old-0").delete()
                client.collection("articles").document("old-1").update({"sort_at": "2030-01-01T00:00:00.000000Z"})
            finally:
                client.close()
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(BulkWriteBatch, "commit", meddling)
    store = firestore_stores()
    await walked(store)
    assert interfered
    state = store.state()["backfill"]
    assert (state["status"], state["writes"], state["conflicts"]) == ("done", 1, 2)
    raw = await threads.deferToThread(read_raw, firestore.project, "old-0", "old-1", "old-2")
    assert raw["old-0"] is None
    assert raw["old-1"]["sort_at"] == "2030-01-01T00:00:00.000000Z"
    assert raw["old-2"]["sort_at"] == "2025-12-31T00:00:00.000000Z"


@pytest_twisted.ensureDeferred
async def test_daemons_starting_together_give_each_article_sort_at_once(firestore, firestore_stores, monkeypatch):
    """Both walks read every article before either writes (a barrier in front of the real writes), so each
    article is written by one of them and refused to the other."""
    old = old_documents()
    documents = {f"old-{n}": {**old["old-0"], "ingested_at": datetime(2026, 1, 1, 0, n, tzinfo=timezone.utc)}
                 for n in range(40)}
    await threads.deferToThread(write_raw, firestore.project, documents)
    barrier = threading.Barrier(2, timeout=60)
    commit = BulkWriteBatch.commit
    first_writes = set()
    lock = threading.Lock()

    def together(self, *args, **kwargs):
        with lock:
            first = threading.get_ident() not in first_writes and len(first_writes) < 2
            first_writes.add(threading.get_ident())
        if first:
            barrier.wait()
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(BulkWriteBatch, "commit", together)
    stores = [firestore_stores(), firestore_stores()]
    await defer.gatherResults([walked(store) for store in stores])
    states = [store.state()["backfill"] for store in stores]
    assert [state["status"] for state in states] == ["done", "done"]
    assert sum(state["writes"] for state in states) == 40, states
    assert sum(state["conflicts"] for state in states) == 40, states
    raw = await threads.deferToThread(read_raw, firestore.project, *documents)
    assert {article_id: data["sort_at"] for article_id, data in raw.items()} == {
        f"old-{n}": f"2026-01-01T00:{n:02d}:00.000000Z" for n in range(40)}


@pytest_twisted.ensureDeferred
async def test_a_walk_paused_by_a_stalled_firestore_goes_on_at_the_next_read_that_gets_through(
        firestore, firestore_stores, wait_until):
    await threads.deferToThread(write_raw, firestore.project, old_documents())
    firestore.pause()
    try:
        store = firestore_stores(rpc_timeout=1)
        await wait_until(lambda: store.backfill.status == "paused", what="the walk to pause")
    finally:
        firestore.resume()
    assert store.state()["backfill"]["reads"] == 0
    assert await store.get("old-2") is not None  # a read that gets through
    await walked(store)
    assert store.state()["backfill"] == {"status": "done", "reads": 1 + 3 + 3, "writes": 3, "conflicts": 0,
                                         "refused": 0, "unsettled": 0, "retries": 1}
    documents, _ = await store.query(entity_key("Tim Cook"), limit=10)
    assert [document["id"] for document in documents] == ["old-1", "old-0", "old-2"]


# -- a missing index ---------------------------------------------------------------------------------------

def refuse_queries_for_want_of_an_index(monkeypatch, message=NEEDS_INDEX):
    """Firestore's RunQuery answers FAILED_PRECONDITION, as production does for a query without its index."""

    def refused(self, *args, **kwargs):
        raise api_exceptions.FailedPrecondition(message)

    monkeypatch.setattr(FirestoreClient, "run_query", refused)


@pytest_twisted.ensureDeferred
async def test_a_missing_index_is_named_with_how_to_deploy_it(firestore_stores, monkeypatch):
    store = firestore_stores()
    await walked(store)
    refuse_queries_for_want_of_an_index(monkeypatch)
    with pytest.raises(IndexMissing) as raised:
        await store.query(entity_key("Apple"), source="wire", since="2017-01-01T00:00:00.000000Z")
    error = raised.value
    assert error.collection == "articles"
    assert error.fields == ["entity_keys ARRAY_CONTAINS", "source ASC", "sort_at DESC", "__name__ DESC"]
    assert error.link == NEEDS_INDEX.partition("here: ")[2]
    message = error.message
    assert "articles: entity_keys ARRAY_CONTAINS, source ASC, sort_at DESC, __name__ DESC" in message
    assert f"shipped in {INDEX_FILE}" in message and "firebase deploy --only firestore:indexes" in message
    assert ("gcloud firestore indexes composite create --database='(default)' --collection-group=articles "
            "--field-config=field-path=entity_keys,array-config=contains "
            "--field-config=field-path=source,order=ascending "
            "--field-config=field-path=sort_at,order=descending") in message
    assert message.endswith(f"Firestore's link to create it: {error.link}")
    with open(f"{ROOT}/{INDEX_FILE}", encoding="utf-8") as stream:
        shipped = json.load(stream)["indexes"]
    assert {"collectionGroup": "articles", "queryScope": "COLLECTION",
            "fields": [{"fieldPath": "entity_keys", "arrayConfig": "CONTAINS"},
                       {"fieldPath": "source", "order": "ASCENDING"},
                       {"fieldPath": "sort_at", "order": "DESCENDING"}]} in shipped

    with pytest.raises(IndexMissing) as raised:
        await store.query("", source="wire")
    assert raised.value.fields == ["source ASC", "sort_at DESC", "__name__ DESC"]

    # Another FAILED_PRECONDITION is no missing index.
    refuse_queries_for_want_of_an_index(monkeypatch, "The database is being restored")
    with pytest.raises(StoreError) as raised:
        await store.query(entity_key("Apple"))
    assert not isinstance(raised.value, IndexMissing)
    assert raised.value.message == "Firestore read failed: FailedPrecondition: 400 The database is being restored"


FIND = """
web:
  main:
    port: 0
    routing:
      find:
        __config__:
          processor: pipeline.find
          methods: [GET]
          query: [entity, label, source, since, until, limit, cursor]
stores:
  articles: {kind: firestore, batch_window: 0}
pipelines:
  find:
    - query-articles
    - write-web-response
"""


@pytest_twisted.ensureDeferred
async def test_the_route_answers_from_firestore_and_names_a_missing_index_in_a_501(firestore, daemons, monkeypatch):
    daemon = await daemons(FIND)
    store = daemon.runtime.get("store.articles")
    await walked(store)
    documents = corpus_documents(0, 5)
    for document in documents:
        assert await store.put(document) is True
    key = min(documents[0]["entity_keys"], key=lambda k: ("|" in k, k))
    having = {document["id"] for document in documents if key in document["entity_keys"]}

    found, cursor = set(), None
    while True:
        response = await treq.get(url(daemon, "/find?" + urlencode(
            {"entity": key, "limit": 1, **({"cursor": cursor} if cursor else {})})))
        answer = json.loads(await response.content())
        assert response.code == 200 and answer["count"] == 1, answer
        found.add(answer["articles"][0]["id"])
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert found == having

    refuse_queries_for_want_of_an_index(monkeypatch)
    response = await treq.get(url(daemon, "/find?entity=Apple&label=ORG"))
    answer = json.loads(await response.content())
    assert response.code == 501, answer
    error = answer["error"]
    assert error["index"] == {"collection": "articles",
                              "fields": ["entity_keys ARRAY_CONTAINS", "sort_at DESC", "__name__ DESC"]}
    assert error["create_link"] == NEEDS_INDEX.partition("here: ")[2]
    assert "needs the composite index articles: entity_keys ARRAY_CONTAINS, sort_at DESC" in error["message"]
