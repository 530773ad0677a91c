"""The pending table and its reaper: on a task.Clock, and once in real time over HTTP."""
import json

import pytest_twisted
import treq
from twisted.internet import defer, reactor, task

from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import url, write_config

CONFIG = """\
web:
  site:
    port: 0
    routing:
      hold:
        __config__: {processor: pipeline.hold}
contexts:
  answered: []
plugins:
  bundles:
    demo: [bundle_demo]
pending:
  work:
    timeout: 5
    reap_interval: 1
    fallback: pipeline.timed-out
pipelines:
  hold:
    - hold: {pending: work}
    - set-value: {path: content, value: {done: true}}
    - write-web-response
  timed-out:
    - fetch-context: {context: answered}
    - exec-code:
        code: |
            baton['answered'].append(baton['reaped'])
            return baton
    - write-web-response:
        status: 504
        fallback_content: {error: {status: 504, message: "gave up waiting"}}
"""


def build(tmp_path, clock, text=CONFIG):
    return build_daemon(load_config(write_config(tmp_path, text)), clock)


def test_completion_removes_the_entry(tmp_path):
    clock = task.Clock()
    table = build(tmp_path, clock).runtime.get("pending.work")
    work = defer.Deferred()
    results = []
    table.track({"n": 1}, work).addCallback(results.append)
    assert table.state()["pending"] == 1
    clock.advance(2)
    assert table.state()["oldest_age_seconds"] == 2
    work.callback("result")
    assert results == ["result"]
    assert table.state() == {"pending": 0, "oldest_age_seconds": None, "timeout_seconds": 5,
                                  "completed": 1, "reaped": 0, "cancelled": 0, "unclaimed": 0}


def test_a_failure_reaches_the_waiter_and_removes_the_entry(tmp_path):
    table = build(tmp_path, task.Clock()).runtime.get("pending.work")
    work = defer.Deferred()
    failures = []
    table.track({}, work).addErrback(failures.append)
    work.errback(ValueError("boom"))
    assert failures[0].check(ValueError) and len(table) == 0


def test_cancelling_the_waiter_cancels_the_work_and_removes_the_entry(tmp_path):
    table = build(tmp_path, task.Clock()).runtime.get("pending.work")
    cancelled = []
    waiter = table.track({}, defer.Deferred(cancelled.append))
    waiter.addErrback(lambda f: f.trap(defer.CancelledError))
    waiter.cancel()
    assert len(cancelled) == 1 and len(table) == 0 and table.cancelled == 1


def test_the_reaper_answers_with_the_fallback_after_the_deadline(tmp_path):
    clock = task.Clock()
    daemon = build(tmp_path, clock)
    table = daemon.runtime.get("pending.work")
    table.startService()
    cancelled, outcomes = [], []
    baton = {"request": None}
    table.track(baton, defer.Deferred(cancelled.append)).addBoth(outcomes.append)
    late = table.track({}, defer.Deferred(), deadline=clock.seconds() + 100)
    clock.advance(4)
    assert len(table) == 2 and not cancelled
    clock.advance(1)
    assert len(table) == 1 and len(cancelled) == 1
    assert outcomes[0].check(defer.CancelledError)
    assert baton["reaped"] == {"table": "work", "waited_seconds": 5.0}
    assert daemon.runtime.get("context.answered") == [{"table": "work", "waited_seconds": 5.0}]
    assert table.state()["reaped"] == 1 and not late.called
    table.stopService()


@pytest_twisted.ensureDeferred
async def test_the_reaper_in_real_time_over_http(daemons):
    daemon = await daemons(CONFIG, ["web.site.response_timeout=0.3", "pending.work.reap_interval=0.05"])
    started = reactor.seconds()
    response = await treq.get(url(daemon, "/hold"))
    waited = reactor.seconds() - started
    assert response.code == 504
    request_id = response.headers.getRawHeaders("x-request-id")[0]
    assert json.loads(await response.content()) == {
        "error": {"status": 504, "message": "gave up waiting", "request_id": request_id}}
    assert 0.3 <= waited < 5
    table = daemon.runtime.get("pending.work")
    assert table.state()["pending"] == 0 and table.state()["reaped"] == 1
    status = json.loads(await (await treq.get(url(daemon, "/status"))).content())
    assert status["components"]["pending.work"]["reaped"] == 1
