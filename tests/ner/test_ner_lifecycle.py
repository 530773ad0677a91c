"""The children's lives: growing under load and pruning when idle, recycling, and what a child is given.

Each test starts a pool of its own (the children's environment is fixed when the pool is built, and growth and
recycling change which processes exist). Real children and model; growth and pruning are timed on a
``task.Clock``.
"""
from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from pipedingest.ner.children import IDLE, STARTING, ChildStarter, child_environment
from pipedingest.ner.pool import NERPool

pytestmark = pytest.mark.slow

MAX_IDLE = 10.0


@pytest_twisted.ensureDeferred
async def test_grows_to_max_under_load_and_prunes_the_extra_child_after_max_idle(model, corpus, alone, pids, until):
    clock = task.Clock()
    pool = NERPool(**model, min_children=1, max_children=2, max_wait=0, max_idle=MAX_IDLE, deadline=100.0,
                   clock=clock)
    await pool.startService()
    try:
        texts = corpus[700:704]
        results = [pool.extract(text) for text in texts]  # one goes to the only child, the rest must wait
        state = pool.state()
        assert state["children"] == 2  # so a second child is starting for them
        assert [process["state"] for process in state["processes"]].count(STARTING) == 1
        assert len(clock.getDelayedCalls()) == len(texts) + 1  # their expiries, the overrun of the batch sent
        assert [result["entities"] for result in await defer.gatherResults(results)] == [alone(t) for t in texts]
        await until(lambda: [process["state"] for process in pool.state()["processes"]] == [IDLE, IDLE],
                    what="both children loaded and idle")
        both = pids(pool)
        # By design, the one timer of an idle pool with an extra child: when to prune it.
        (prune,) = clock.getDelayedCalls()
        assert prune.getTime() == clock.seconds() + MAX_IDLE
        clock.advance(MAX_IDLE - 0.5)
        assert pids(pool) == both and pool.state()["pruned"] == 0
        clock.advance(0.5)
        state = pool.state()
        assert state["pruned"] == 1 and state["children"] == 1  # the minimum stays
        await until(lambda: len(pids(pool)) == 1, what="the pruned child exited")
        assert pids(pool) < both and pool.state()["restarts"] == 0
        assert clock.getDelayedCalls() == []  # at its minimum, the pool keeps no timer
        clock.advance(10 * MAX_IDLE)
        assert len(pids(pool)) == 1
        assert (await pool.extract("Rome is in Italy."))["entities"]
        assert clock.getDelayedCalls() == []
    finally:
        await pool.stopService()
    assert pool.state()["processes"] == []


@pytest_twisted.ensureDeferred
async def test_recycling_after_n_batches_replaces_the_child_and_loses_no_article(
    model, corpus, alone, pids, until, logged
):
    pool = NERPool(**model, min_children=1, max_batch_docs=1, recycle_after_tasks=2, deadline=120.0)
    await pool.startService()
    try:
        (first,) = pids(pool)
        texts = corpus[710:716]
        results = await defer.gatherResults([pool.extract(text) for text in texts])
        assert [result["entities"] for result in results] == [alone(text) for text in texts]
        state = pool.state()
        assert state["batches"] == 6 and state["recycled"] == 3 and state["crashes"] == 0
        recycled = [text for text, _ in logged if text.startswith("recycling NER child")]
        assert len(recycled) == 3 and all(text.endswith("after 2 batches") for text in recycled)
        recycled_pids = {int(text.split()[3]) for text in recycled}
        assert len(recycled_pids) == 3 and first in recycled_pids
        await until(lambda: len(pids(pool)) == 1 and pool.state()["processes"][0]["state"] == IDLE,
                    what="the recycled children exited, their successor is ready")
        (last,) = pids(pool)
        assert last not in recycled_pids
        assert pool.state()["restarts"] == 0  # a recycled child is replaced, not restarted after a death
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_a_child_gets_no_environment_and_a_short_readable_command_line(
    model, monkeypatch, tmp_path, pids, logged
):
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("PIPEDINGEST_TEST_SECRET", secret)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the one variable a child may need, passed as it is
    pool = NERPool(**model, min_children=1)
    await pool.startService()
    try:
        (pid,) = pids(pool)
        with open(f"/proc/{pid}/environ", "rb") as stream:
            environ = stream.read()
        assert secret.encode() not in environ
        assert environ.split(b"\0") == [b"PYTHONPATH=" + str(tmp_path).encode(), b""]
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            cmdline = stream.read()
        executable, flag, module, settings, end = cmdline.split(b"\0")
        assert (executable, flag, module, end) == (sys.executable.encode(), b"-m", b"pipedingest.ner.child", b"")
        assert json.loads(settings)["model"] == model["model"]
        assert len(cmdline) < 512
        assert (await pool.extract("Angela Merkel met Emmanuel Macron in Berlin."))["entities"]
    finally:
        await pool.stopService()
    assert logged and not [event for event in logged if secret in event[0] or secret in event[1]]
    assert any(f"NER child {pid} started" in text for text, _ in logged)
    assert any(f"NER child {pid} exited" in text for text, _ in logged)


def test_without_pythonpath_a_child_gets_an_empty_environment(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert child_environment() == {}
    assert child_environment({"PYTHONPATH": "/opt/x", "HOME": "/root", "TOKEN": "t"}) == {"PYTHONPATH": "/opt/x"}
    starter = ChildStarter(reactor, {"PYTHONPATH": "/opt/secret-path"})
    assert "secret-path" not in repr(starter) and "secret-path" not in str(starter)
