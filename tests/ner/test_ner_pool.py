"""The pool with real children and the real spaCy model: what comes back is what spaCy finds."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from pipedingest.ner.errors import ArticleTooLarge, InvalidText, ModelLoadFailed, ModelNotFound, PoolStopped
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow


@pytest_twisted.async_yield_fixture(scope="module")
async def pool(model):
    ner = NERPool(**model, min_children=2, max_batch_docs=8, max_batch_words=6000,
                  deadline=120.0)
    await ner.startService()
    yield ner
    await ner.stopService()


@pytest_twisted.ensureDeferred
async def test_entities_equal_direct_spacy_for_60_articles(pool, corpus, alone, model):
    texts = corpus[100:160]
    before = pool.state()
    results = await defer.gatherResults([pool.extract(text) for text in texts])
    for text, result in zip(texts, results):
        assert result["entities"] == alone(text)
        assert all(text[entity["start"]:entity["end"]] == entity["text"] for entity in result["entities"])
        assert result["model"] == {"name": model["model"], "version": "3.8.0"}
        assert set(result) == {"entities", "model"}  # no word count: the caller counts words itself
    assert sum(len(result["entities"]) for result in results) > 500
    after = pool.state()
    assert after["articles"] - before["articles"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts)  # they were batched


@pytest_twisted.ensureDeferred
async def test_batched_result_is_the_single_result(pool, corpus):
    texts = corpus[200:224]
    singles = []
    for text in texts:
        before = pool.state()["batches"]
        singles.append(await pool.extract(text))
        assert pool.state()["batches"] == before + 1
    before = pool.state()["batches"]
    batched = await defer.gatherResults([pool.extract(text) for text in texts])
    assert pool.state()["batches"] - before <= len(texts) // 2
    assert batched == singles


@pytest_twisted.ensureDeferred
async def test_one_mebibyte_article_passes_both_ways(pool, corpus, alone):
    real = corpus[300:340]
    size = 1 << 20
    gap = (size - sum(map(len, real))) // (len(real) - 1)
    text = (" " * gap).join(real) + " — fin"
    text += " " * (size - len(text))
    assert len(text) == size
    result = await pool.extract(text)
    expected = alone(text)
    assert len(expected) > 1000  # entity list far beyond one AMP value
    assert result["entities"] == expected
    assert result["entities"][-1]["start"] > 1_000_000


@pytest_twisted.ensureDeferred
async def test_state_is_json_and_describes_the_pool(pool):
    import json

    state = json.loads(json.dumps(pool.state()))
    assert state["children"] == 2 and state["running"]
    assert state["model"]["pipeline"] == ["ner"]
    assert len({process["pid"] for process in state["processes"]}) == 2
    assert state["queued"] == {"articles": 0, "words": 0}


@pytest_twisted.ensureDeferred
async def test_too_large_article_is_refused_before_queueing(pool):
    with pytest.raises(ArticleTooLarge):
        await pool.extract("x" * (pool.max_chars + 1))
    assert pool.state()["queued"]["articles"] == 0


@pytest_twisted.ensureDeferred
async def test_text_with_a_lone_surrogate_fails_at_once_and_never_reaches_a_child(pool):
    before = pool.state()
    refused = pool.extract("Angela Merkel visited Paris \ud800 in May.")
    assert refused.called  # failed before anything was queued
    with pytest.raises(InvalidText, match="character 28"):
        await refused
    after = pool.state()
    assert after["invalid"] == before["invalid"] + 1
    assert (after["batches"], after["articles"]) == (before["batches"], before["articles"])
    assert after["queued"] == {"articles": 0, "words": 0} and after["in_flight"]["articles"] == 0
    assert [e["text"] for e in (await pool.extract("Rome is in Italy."))["entities"]] == ["Rome", "Italy"]


def test_missing_model_fails_at_construction_and_names_it():
    with pytest.raises(ModelNotFound) as raised:
        NERPool(model="en_core_web_xx_missing")
    assert "en_core_web_xx_missing" in str(raised.value) and "pip install" in str(raised.value)


def test_unknown_excluded_component_fails_at_construction(model):
    with pytest.raises(ModelLoadFailed, match="tok2vecc"):
        NERPool(model=model["model"], exclude=["tok2vecc"])


@pytest_twisted.ensureDeferred
async def test_model_that_does_not_load_fails_start_up_with_the_childs_reason(tmp_path):
    (tmp_path / "meta.json").write_text('{"lang": "en", "name": "broken", "pipeline": ["ner"]}')
    ner = NERPool(model=str(tmp_path), min_children=1)
    with pytest.raises(ModelLoadFailed, match=r"cannot load spaCy model .*meta\.json"):
        await ner.startService()
    assert ner.state()["children"] == 0
    with pytest.raises(PoolStopped):
        await ner.extract("text")
    await ner.stopService()
