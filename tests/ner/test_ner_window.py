"""The batching window, backpressure, cancellation and queue deadlines, on a pool whose clock is ``task.Clock``.

The children are real; only time is driven by the test. Each test submits its articles synchronously, so what
the queue holds is decided before any child can answer. Each test ends by checking that no timer is left on the
clock: this pool stays at its minimum of children, so it keeps none by design (its only standing timer, the idle
pruning, exists only while it has an extra child idle; see test_ner_lifecycle.py).
"""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.ner.errors import ArticleTimeout, PoolOverloaded
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow

WINDOW = 1.0


@pytest_twisted.async_yield_fixture(scope="module")
async def clocked(model):
    clock = task.Clock()
    ner = NERPool(**model, min_children=2, max_batch_docs=16, max_wait=WINDOW,
                  deadline=100.0, max_queued=3, clock=clock)
    await ner.startService()
    yield ner
    await ner.stopService()


async def settled(pool, until):
    await until(lambda: not pool.state()["in_flight"]["batches"], what="no batch in flight")


@pytest_twisted.ensureDeferred
async def test_lone_article_is_sent_at_once(clocked, corpus, alone, until):
    await settled(clocked, until)
    result = clocked.extract(corpus[500])
    assert clocked.state()["in_flight"]["articles"] == 1  # the clock never moved
    assert (await result)["entities"] == alone(corpus[500])
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_articles_arriving_while_a_child_works_wait_for_the_window_then_go_as_one_batch(
    clocked, corpus, alone, until
):
    await settled(clocked, until)
    texts = corpus[510:513]
    before = clocked.state()["batches"]
    results = [clocked.extract(text) for text in texts]
    state = clocked.state()
    assert state["in_flight"]["articles"] == 1 and state["queued"]["articles"] == 2
    clocked.clock.advance(WINDOW / 2)
    assert clocked.state()["queued"]["articles"] == 2
    clocked.clock.advance(WINDOW / 2)
    state = clocked.state()
    assert state["queued"]["articles"] == 0 and state["batches"] == before + 2
    assert [result["entities"] for result in await defer.gatherResults(results)] == [alone(t) for t in texts]
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_beyond_max_queued_is_refused_at_once_and_nothing_is_queued(clocked, corpus, until):
    await settled(clocked, until)
    accepted = [clocked.extract(text) for text in corpus[520:524]]  # 1 in flight, 3 queued
    assert clocked.state()["queued"]["articles"] == 3
    refused = clocked.extract(corpus[524])
    assert refused.called
    with pytest.raises(PoolOverloaded) as raised:
        await refused
    assert raised.value.retry_after >= 1
    assert clocked.state()["queued"]["articles"] == 3
    clocked.clock.advance(WINDOW)
    await defer.gatherResults(accepted)
    assert clocked.state()["queued"] == {"articles": 0, "words": 0}
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_cancelled_before_dispatch_is_taken_out_of_the_queue(clocked, corpus, alone, until):
    await settled(clocked, until)
    before = clocked.state()
    first, cancelled, kept = [clocked.extract(text) for text in corpus[530:533]]
    words = clocked.state()["queued"]["words"]
    cancelled.cancel()
    with pytest.raises(defer.CancelledError):
        await cancelled
    state = clocked.state()
    assert state["queued"]["articles"] == 1 and state["queued"]["words"] < words
    clocked.clock.advance(WINDOW)
    assert (await kept)["entities"] == alone(corpus[532])
    await first
    after = clocked.state()
    assert after["articles"] - before["articles"] == 2  # the cancelled article never reached a child
    assert after["cancelled"] == before["cancelled"] + 1
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_cancelling_every_article_leaves_no_timer(clocked, corpus, until):
    await settled(clocked, until)
    articles = [clocked.extract(text) for text in corpus[535:538]]  # 1 in flight, 2 queued behind the window
    assert len(clocked.clock.getDelayedCalls()) == 3 + 1 + 1  # 3 expiries, the window, the batch's overrun
    for article in articles:
        article.cancel()
    # what is left is the overrun timer of the batch a child still works on, which bounds that work
    assert len(clocked.clock.getDelayedCalls()) == 1 and clocked.state()["in_flight"]["batches"] == 1
    await settled(clocked, until)
    assert clocked.clock.getDelayedCalls() == []
    assert clocked.state()["queued"] == {"articles": 0, "words": 0}
    for article in articles:
        with pytest.raises(defer.CancelledError):
            await article


@pytest_twisted.ensureDeferred
async def test_deadline_passing_in_the_queue_fails_the_article_without_a_child(clocked, corpus, until):
    await settled(clocked, until)
    before = clocked.state()
    first = clocked.extract(corpus[540])
    late = clocked.extract(corpus[541], deadline=clocked.clock.seconds() + WINDOW / 4)
    clocked.clock.advance(WINDOW / 4)
    with pytest.raises(ArticleTimeout) as raised:
        await late
    assert not raised.value.dispatched
    assert clocked.state()["queued"]["articles"] == 0
    await first
    after = clocked.state()
    assert after["timeouts"] == before["timeouts"] + 1
    assert after["children"] == 2 and after["restarts"] == before["restarts"]  # no child was harmed
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_identical_texts_in_flight_share_one_extraction_each_with_its_own_result(
    clocked, corpus, alone, until
):
    await settled(clocked, until)
    text = corpus[530]
    before = clocked.state()
    results = [clocked.extract(text) for _ in range(3)]
    state = clocked.state()
    assert state["in_flight"]["articles"] == 1 and state["queued"]["articles"] == 0
    assert state["shared"] == before["shared"] + 2
    found = await defer.gatherResults(results)
    assert [result["entities"] for result in found] == [alone(text)] * 3
    assert found[0] is not found[1] and found[1] is not found[2]  # each caller may change its own
    assert clocked.state()["articles"] == before["articles"] + 1
    again = clocked.extract(text)
    assert clocked.state()["shared"] == before["shared"] + 2, "a text no longer in flight was shared"
    assert (await again)["entities"] == alone(text)
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_caller_of_a_shared_extraction_gives_up_alone(clocked, corpus, alone, until):
    await settled(clocked, until)
    text = corpus[531]
    now = clocked.clock.seconds()
    first = clocked.extract(text, now + 50)
    early = clocked.extract(text, now + 10)     # follows, with its own earlier deadline
    leaving = clocked.extract(text, now + 50)   # follows, then its client goes away
    later = clocked.extract(text, now + 90)     # a later deadline: follows too, and the extraction may run longer
    assert clocked.state()["in_flight"]["articles"] + clocked.state()["queued"]["articles"] == 1
    leaving.cancel()
    with pytest.raises(defer.CancelledError):
        await leaving
    clocked.clock.advance(10)
    with pytest.raises(ArticleTimeout):
        await early
    assert (await first)["entities"] == alone(text)
    assert (await later)["entities"] == alone(text)
    await settled(clocked, until)
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_later_caller_extends_the_shared_extraction_and_an_earlier_one_still_fails_on_time(
    clocked, corpus, alone, until
):
    await settled(clocked, until)
    text = corpus[533]
    now = clocked.clock.seconds()
    before = clocked.state()
    first = clocked.extract(text, now + 50)
    later = clocked.extract(text, now + 90)
    assert clocked.state()["shared"] == before["shared"] + 1
    clocked.clock.advance(50)  # in this same turn: the child cannot have answered yet
    with pytest.raises(ArticleTimeout):
        await first
    assert not later.called, "the extraction now runs until the later caller's deadline"
    assert (await later)["entities"] == alone(text)
    assert clocked.state()["articles"] == before["articles"] + 1
    await settled(clocked, until)
    assert clocked.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_when_every_caller_gives_up_the_shared_extraction_is_cancelled(clocked, corpus, until):
    await settled(clocked, until)
    busy = clocked.extract(corpus[532])  # a child works: what comes next waits for the window, queued
    text = corpus[535]
    callers = [clocked.extract(text) for _ in range(2)]
    assert clocked.state()["queued"]["articles"] == 1
    before = clocked.state()["cancelled"]
    callers[0].cancel()
    assert clocked.state()["queued"]["articles"] == 1  # one caller still waits
    callers[1].cancel()
    assert clocked.state()["queued"]["articles"] == 0 and clocked.state()["cancelled"] == before + 1
    for caller in callers:
        with pytest.raises(defer.CancelledError):
            await caller
    await busy
    await settled(clocked, until)
    assert clocked.clock.getDelayedCalls() == []
