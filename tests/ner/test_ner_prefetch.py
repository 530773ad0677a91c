"""A busy child's next batch waits in its pipe (``prefetch``): what it changes, and what it must not.

One real child, the shipped batching (one article per batch, no window), a ``task.Clock`` for deadlines. The
test submits, advances the clock and kills without yielding to the reactor in between, so which batch a child
works on and which waits in its pipe is decided, not raced: the first article goes to the idle child, the
second waits behind it.
"""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.ner.children import IDLE
from pipedingest.ner.errors import ArticleTimeout, PoisonArticle
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow

POISON = "\x00poison-for-prefetch-tests\x00"


@pytest_twisted.async_yield_fixture(scope="module")
async def pool(model):
    ner = NERPool(**model, min_children=1, max_batch_docs=1, max_wait=0, prefetch=1, deadline=100.0,
                  clock=task.Clock(), crash_marker_for_tests=POISON)
    await ner.startService()
    yield ner
    await ner.stopService()


@pytest.fixture
def ready(pool, until):
    """``await ready()``: the pool's one child is loaded and idle."""

    async def wait():
        await until(lambda: pool.state()["children"] == 1
                    and [process["state"] for process in pool.state()["processes"]] == [IDLE],
                    what="one idle child")

    return wait


def in_pipe(pool) -> list[int]:
    return [process["waiting_in_pipe"] for process in pool.state()["processes"]]


@pytest_twisted.ensureDeferred
async def test_a_busy_child_holds_its_next_article_and_every_answer_is_its_own(pool, corpus, alone, ready):
    await ready()
    texts = corpus[800:804]
    before = pool.state()
    results = [pool.extract(text) for text in texts]
    state = pool.state()
    assert [process["articles"] for process in state["processes"]] == [2]  # the one it works on, and the next
    assert in_pipe(pool) == [1]
    assert state["queued"]["articles"] == 2  # no more than prefetch: 1
    assert [result["entities"] for result in await defer.gatherResults(results)] == [alone(t) for t in texts]
    after = pool.state()
    assert after["batches"] == before["batches"] + 4 and after["articles"] == before["articles"] + 4
    assert after["resent"] == before["resent"] and after["crashes"] == before["crashes"]
    assert in_pipe(pool) == [0]


@pytest_twisted.ensureDeferred
async def test_a_child_dying_on_its_batch_resends_the_one_in_its_pipe_which_is_not_blamed(
    pool, corpus, alone, ready
):
    await ready()
    before = pool.state()
    poison = pool.extract("An article that kills its child. " + POISON)  # the child works on it...
    innocent = pool.extract(corpus[810])  # ... and this waits in its pipe when it dies
    assert in_pipe(pool) == [1]
    (ok, outcome), (innocent_ok, found) = await defer.DeferredList([poison, innocent], consumeErrors=True)
    assert not ok and outcome.check(PoisonArticle), outcome
    assert innocent_ok, found
    assert found["entities"] == alone(corpus[810])
    after = pool.state()
    # The poison took down two children (its batch, then alone); the innocent article was in the first one's
    # pipe, sent again once, never counted as a crash of its own.
    assert after["crashes"] == before["crashes"] + 2
    assert after["poisoned"] == before["poisoned"] + 1
    assert after["retried"] == before["retried"] + 1
    assert after["resent"] == before["resent"] + 1
    await ready()


@pytest_twisted.ensureDeferred
async def test_a_deadline_kill_fails_only_the_overrunning_article_and_resends_the_next(
    pool, corpus, alone, ready, until
):
    await ready()
    before = pool.state()
    slow = " ".join(corpus[820:870])
    late = pool.extract(slow, deadline=pool.clock.seconds() + 1)
    following = pool.extract(corpus[871])  # its own deadline is 100 s away: the kill must not cost it
    assert in_pipe(pool) == [1]
    (victim,) = [process["pid"] for process in pool.state()["processes"]]
    # No answer can arrive before the clock moves: the slow article's deadline passes first, whatever it takes.
    pool.clock.advance(1)
    with pytest.raises(ArticleTimeout) as raised:
        await late
    assert raised.value.dispatched
    assert (await following)["entities"] == alone(corpus[871])
    after = pool.state()
    assert after["killed"] == before["killed"] + 1 and after["timeouts"] == before["timeouts"] + 1
    assert after["resent"] == before["resent"] + 1
    assert after["crashes"] == before["crashes"] and after["retried"] == before["retried"]
    await until(lambda: victim not in [process["pid"] for process in pool.state()["processes"]],
                what="the overrunning child gone")
    await ready()


@pytest_twisted.ensureDeferred
async def test_an_article_waiting_in_a_pipe_still_fails_at_its_own_deadline_and_its_child_is_spared(
    pool, corpus, alone, ready, until
):
    await ready()
    before = pool.state()
    first = pool.extract(corpus[880])
    waiting = pool.extract(corpus[881], deadline=pool.clock.seconds() + 0.5)
    assert in_pipe(pool) == [1]
    pool.clock.advance(0.5)
    assert waiting.called
    with pytest.raises(ArticleTimeout) as raised:
        await waiting
    assert raised.value.dispatched and raised.value.allowed == 0.5
    (child,) = [process["pid"] for process in pool.state()["processes"]]
    assert (await first)["entities"] == alone(corpus[880])
    # The expired article now runs in the child: not a reason to kill it at once, it is about done.
    pool.clock.advance(0)
    await until(lambda: [process["state"] for process in pool.state()["processes"]] == [IDLE],
                what="the child done with the expired article too")
    after = pool.state()
    assert after["killed"] == before["killed"] and [process["pid"] for process in after["processes"]] == [child]
    assert after["timeouts"] == before["timeouts"] + 1 and after["batches"] == before["batches"] + 2
    assert pool.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_the_next_article_goes_to_the_child_that_should_be_free_first(model, corpus, alone, until):
    """Two busy children: the one with the longer article, started long before, has less left to do than the one
    that just started a shorter one, so the next article waits in the first one's pipe."""
    pool = NERPool(**model, min_children=2, max_batch_docs=1, max_wait=0, prefetch=1, deadline=1000.0,
                   clock=task.Clock())
    await pool.startService()
    try:
        await until(lambda: [process["state"] for process in pool.state()["processes"]] == [IDLE, IDLE],
                    what="two idle children")
        speed = pool.extract(corpus[890])
        pool.clock.advance(1.0)  # before any answer can arrive: the pool measures len(words) / 1 s
        await speed
        long, short = " ".join(corpus[891:895]), corpus[895]
        assert len(long.split()) > 2 * len(short.split())
        first = pool.extract(long)
        (started_long,) = [p["pid"] for p in pool.state()["processes"] if p["busy"]]
        pool.clock.advance(100.0)  # at the measured speed, the long article is about done by now
        second = pool.extract(short)
        third = pool.extract(corpus[896])
        held = {p["pid"]: p["articles"] for p in pool.state()["processes"]}
        assert held[started_long] == 2, held  # not the child that just started the short article
        outcomes = await defer.gatherResults([first, second, third])
        assert [found["entities"] for found in outcomes] == [alone(long), alone(short), alone(corpus[896])]
    finally:
        await pool.stopService()
