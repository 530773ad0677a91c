"""Children that die, overrun, eat poison, or cannot be sent to: real children, real signals, a ``task.Clock``.

Time is the test's: the batching window and the deadlines move only when the test advances the clock, and
the test submits, advances and signals without yielding to the reactor in between, so which child holds which
batch when a signal lands is decided, not raced. The only hooks are the poison marker (a child that exits on
reading it) and, for a send that fails, one child's ``callRemote`` replaced for one call.
"""
from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pipedingest.ner.children import IDLE
from pipedingest.ner.commands import ExtractEntities
from pipedingest.ner.errors import ArticleTimeout, ExtractionFailed, PoisonArticle
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow

POISON = "\x00poison-for-tests\x00"
WINDOW = 1.0


@pytest_twisted.async_yield_fixture(scope="module")
async def pool(model):
    ner = NERPool(**model, min_children=2, max_batch_docs=16, max_wait=WINDOW, deadline=100.0, clock=task.Clock(),
                  crash_marker_for_tests=POISON)
    await ner.startService()
    yield ner
    await ner.stopService()


@pytest.fixture
def full_strength(pool, until, pids):
    """``await full_strength(gone=...)``: the pool has replaced the children in ``gone`` and holds its minimum of
    idle, loaded children, which answer."""

    async def wait(gone=frozenset()):
        await until(lambda: not (pids(pool) & set(gone)) and pool.state()["children"] == pool.min_children
                    and all(process["state"] == IDLE for process in pool.state()["processes"]),
                    what="pool back to its minimum of idle children")
        assert (await pool.extract("Angela Merkel met Emmanuel Macron in Berlin."))["entities"]

    return wait


@pytest_twisted.ensureDeferred
async def test_state_says_which_child_holds_which_batch_and_killing_it_retries_that_batch_only(
    pool, corpus, alone, holders, full_strength
):
    await full_strength()
    texts = corpus[400:408]
    before = pool.state()
    lone = pool.extract(texts[0])  # an idle pool sends at once: one child gets it
    (first,) = holders(pool)
    (second,) = [process["pid"] for process in pool.state()["processes"] if process["state"] == IDLE]
    # The second child is stopped before its batch is written to it, so it cannot have answered any of it when
    # it is killed: the signal, not a race, decides what it held.
    os.kill(second, signal.SIGSTOP)
    try:
        batched = [pool.extract(text) for text in texts[1:]]  # they wait for the window: a child is busy
        pool.clock.advance(WINDOW)
        held = holders(pool)
    finally:
        os.kill(second, signal.SIGKILL)
    assert held == {first: 1, second: 7}
    results = await defer.gatherResults([lone, *batched])
    assert [result["entities"] for result in results] == [alone(text) for text in texts]
    after = pool.state()
    assert after["crashes"] == before["crashes"] + 1
    assert after["retried"] == before["retried"] + 7  # the 7 of the killed child's batch, not the other one
    assert after["batches"] == before["batches"] + 2 + 7  # each retried article alone
    assert after["poisoned"] == before["poisoned"] and after["restarts"] == before["restarts"] + 1
    await full_strength(gone={second})


@pytest_twisted.ensureDeferred
async def test_poison_article_fails_alone_the_rest_of_its_batch_succeeds(pool, corpus, alone, full_strength):
    await full_strength()
    texts = corpus[410:415]
    texts.insert(2, "An article that kills its child. " + POISON)
    before = pool.state()
    first = pool.extract(texts[0])
    rest = [pool.extract(text) for text in texts[1:]]
    pool.clock.advance(WINDOW)  # the 5 others go as one batch, poison included
    outcomes = await defer.DeferredList([first, *rest], consumeErrors=True)
    for text, (ok, outcome) in zip(texts, outcomes):
        if POISON in text:
            assert not ok and outcome.check(PoisonArticle), outcome
        else:
            assert ok, outcome
            assert outcome["entities"] == alone(text)
    after = pool.state()
    assert after["poisoned"] == before["poisoned"] + 1
    assert after["crashes"] == before["crashes"] + 2  # once in its batch, once alone
    await full_strength()


@pytest_twisted.ensureDeferred
async def test_deadline_fails_the_article_and_replaces_the_overrunning_child(
    pool, corpus, holders, pids, until, full_strength
):
    await full_strength()
    slow = " ".join(corpus[420:470])
    before = pool.state()
    attempt = pool.extract(slow, deadline=pool.clock.seconds() + 1)
    (busy,) = holders(pool)
    # No child can answer before the clock moves: the deadline passes first, whatever the work takes.
    pool.clock.advance(1)
    assert attempt.called
    with pytest.raises(ArticleTimeout) as raised:
        await attempt
    assert raised.value.dispatched and raised.value.allowed == 1
    await until(lambda: busy not in pids(pool), what="overrunning child killed")
    after = pool.state()
    assert after["timeouts"] == before["timeouts"] + 1
    assert after["killed"] == before["killed"] + 1
    assert after["crashes"] == before["crashes"]  # a kill for a deadline is not a crash: nothing retried
    await full_strength(gone={busy})
    assert pool.clock.getDelayedCalls() == []  # the article's expiry fired, the batch's overrun fired


@pytest_twisted.ensureDeferred
async def test_idle_child_that_dies_is_replaced(pool, pids, full_strength):
    await full_strength()
    victim = min(pids(pool))
    before = pool.state()["restarts"]
    os.kill(victim, signal.SIGKILL)
    await full_strength(gone={victim})
    assert pool.state()["restarts"] == before + 1


def fail_next_send(child, answer):
    """Make the child's next ``ExtractEntities`` call do ``answer()`` instead of reaching the child."""
    real = child.amp.callRemote

    def once(command, **arguments):
        del child.amp.callRemote
        if command is not ExtractEntities:
            return real(command, **arguments)
        return answer()

    child.amp.callRemote = once


def raise_at_once():
    raise RuntimeError("injected: the batch cannot be encoded")


def answer_nonsense():
    return defer.succeed({"results": [], "rss": 1})  # no result for any of the texts


@pytest.mark.parametrize("broken, message", [
    (raise_at_once, "could not be sent to NER child .*RuntimeError: injected"),
    (answer_nonsense, "answer of NER child .* could not be used"),
])
@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_be_sent_or_read_fails_alone_and_its_child_carries_on(
    pool, corpus, alone, holders, pids, logged, no_unhandled_errors, full_strength, broken, message
):
    await full_strength()
    children = pids(pool)
    before = pool.state()
    first = pool.extract(corpus[430])  # posted before: goes at once to one child
    (busy,) = holders(pool)
    (other,) = [child for child in pool.children if child.state == IDLE]
    fail_next_send(other, broken)
    doomed = [pool.extract(text) for text in corpus[431:433]]
    pool.clock.advance(WINDOW)  # both go, as one batch, to the other child, and fail there and then
    for article in doomed:
        assert article.called
        with pytest.raises(ExtractionFailed, match=message):
            await article
    state = pool.state()
    assert state["failed"] == before["failed"] + 1
    assert holders(pool) == {busy: 1} and other.state == IDLE  # the other child is free again
    assert state["queued"] == {"articles": 0, "words": 0} and state["in_flight"] == {"batches": 1, "articles": 1}
    later = [pool.extract(text) for text in corpus[433:435]]  # posted after: the other child takes them
    pool.clock.advance(WINDOW)
    assert holders(pool).get(other.pid) == 2
    results = await defer.gatherResults([first, *later])
    assert [result["entities"] for result in results] == [alone(text) for text in [corpus[430], *corpus[433:435]]]
    after = pool.state()
    assert after["batches"] == before["batches"] + 3
    assert after["articles"] == before["articles"] + 3  # the failed two were never counted as extracted
    assert (after["crashes"], after["restarts"], after["retried"]) == (
        before["crashes"], before["restarts"], before["retried"])
    assert pids(pool) == children  # nobody was replaced
    assert pool.clock.getDelayedCalls() == []
    no_unhandled_errors(logged)
