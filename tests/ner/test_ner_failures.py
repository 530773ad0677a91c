"""Children that die, overrun or eat poison: real children, real signals; the only hook is the poison marker."""
from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer

from pipedingest.ner.errors import ArticleTimeout, PoisonArticle
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow

POISON = "\x00poison-for-tests\x00"


@pytest_twisted.async_yield_fixture(scope="module")
async def pool(model):
    ner = NERPool(**model, min_children=2, max_batch_docs=8, max_wait=0.05, deadline=60.0,
                  crash_marker_for_tests=POISON)
    await ner.startService()
    yield ner
    await ner.stopService()


def pids(pool) -> set[int]:
    return {process["pid"] for process in pool.state()["processes"]}


async def back_to_full_strength(pool, until, old_pids):
    """The pool has replaced the children in ``old_pids`` and holds its minimum of idle, loaded children."""
    await until(lambda: pool.state()["children"] == pool.min_children and not (pids(pool) & old_pids),
                what="pool restored to its minimum")
    # a replacement is usable: it answers with the model loaded
    assert (await pool.extract("Angela Merkel met Emmanuel Macron in Berlin."))["entities"]


@pytest_twisted.ensureDeferred
async def test_child_killed_mid_batch_its_articles_are_retried_and_succeed(pool, corpus, alone, until):
    texts = corpus[400:408]
    before = pool.state()
    results = [pool.extract(text) for text in texts]
    # the first article goes alone to an idle child; the rest gather in the window and go to the other as a batch
    await until(lambda: max(process["articles"] for process in pool.state()["processes"]) > 1, what="a batch")
    victim = max(pool.state()["processes"], key=lambda process: process["articles"])["pid"]
    os.kill(victim, signal.SIGKILL)
    results = await defer.gatherResults(results)
    assert [result["entities"] for result in results] == [alone(text) for text in texts]
    after = pool.state()
    assert after["crashes"] == before["crashes"] + 1
    assert after["poisoned"] == before["poisoned"]
    await back_to_full_strength(pool, until, {victim})


@pytest_twisted.ensureDeferred
async def test_poison_article_fails_alone_the_rest_of_its_batch_succeeds(pool, corpus, alone, until):
    texts = corpus[410:415]
    texts.insert(2, "An article that kills its child. " + POISON)
    before = pool.state()
    outcomes = await defer.DeferredList([pool.extract(text) for text in texts], consumeErrors=True)
    for text, (ok, outcome) in zip(texts, outcomes):
        if POISON in text:
            assert not ok and outcome.check(PoisonArticle), outcome
        else:
            assert ok, outcome
            assert outcome["entities"] == alone(text)
    after = pool.state()
    assert after["poisoned"] == before["poisoned"] + 1
    assert after["crashes"] == before["crashes"] + 2  # once in its batch, once alone
    await back_to_full_strength(pool, until, set())
    assert pool.state()["children"] == pool.min_children


@pytest_twisted.ensureDeferred
async def test_deadline_fails_the_article_and_replaces_the_overrunning_child(pool, corpus, until):
    slow = " ".join(corpus[420:470])  # several seconds of work
    before = pool.state()
    attempt = pool.extract(slow, deadline=0.5)
    (busy,) = [process["pid"] for process in pool.state()["processes"] if process["busy"]]
    with pytest.raises(ArticleTimeout) as raised:
        await attempt
    assert raised.value.dispatched
    await until(lambda: busy not in pids(pool), timeout=10, what="overrunning child killed")
    after = pool.state()
    assert after["timeouts"] == before["timeouts"] + 1
    assert after["killed"] == before["killed"] + 1
    assert after["crashes"] == before["crashes"]  # a kill for a deadline is not a crash: nothing retried
    await back_to_full_strength(pool, until, {busy})


@pytest_twisted.ensureDeferred
async def test_idle_child_that_dies_is_replaced(pool, until):
    await until(lambda: pool.state()["busy"] == 0, what="pool idle")
    victim = min(pids(pool))
    before = pool.state()["restarts"]
    os.kill(victim, signal.SIGKILL)
    await back_to_full_strength(pool, until, {victim})
    assert pool.state()["restarts"] == before + 1
