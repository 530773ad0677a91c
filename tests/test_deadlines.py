"""One deadline per request, on a ``task.Clock``: no timer outlives its request, however it is answered.

The daemons here listen on the real reactor (real HTTP over loopback) but time everything on a
``task.Clock`` the test holds, so every timer a request creates is visible in ``clock.getDelayedCalls()``.
The only delayed call that may remain is each pending table's periodic reaper (and the NER pool's, none at
its minimum size).
"""
import json
import os
import signal

import pytest
import pytest_twisted
import treq
from twisted.internet import protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.conftest import DEV, until, url

CONFIG = """\
web:
  site:
    port: 0
    response_timeout: 10
    routing:
      __config__: {processor: pipeline.index, methods: [GET]}
      hold:
        __config__: {processor: pipeline.hold}
      silent:
        __config__: {processor: pipeline.silent}
plugins:
  bundles:
    demo: [bundle_demo]
pending:
  work:
    timeout: 5
    reap_interval: 1
    fallback: pipeline.timed-out
pipelines:
  index:
    - set-value: {path: content, value: {hello: world}}
    - write-web-response
  hold:
    - hold: {pending: work}
    - write-web-response: {fallback_content: never}
  silent:
    - set-value: {path: ignored, value: 1}
  timed-out:
    - write-web-response:
        status: 504
        fallback_content: {error: {status: 504, message: "gave up waiting"}}
"""


def request_timers(clock) -> list:
    """The delayed calls on *clock* other than periodic services' next rounds (a LoopingCall each)."""
    return [call for call in clock.getDelayedCalls() if not isinstance(call.func, task.LoopingCall)]


class Disconnecting(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")


@pytest.fixture
def clock():
    return task.Clock()


@pytest_twisted.ensureDeferred
async def test_a_request_answered_synchronously_leaves_no_timer(daemons, clock):
    daemon = await daemons(CONFIG, clock=clock)
    assert len(clock.getDelayedCalls()) == 1 and request_timers(clock) == []  # the reaper's next round
    for method in (treq.get, treq.head):
        response = await method(url(daemon, "/"))
        assert response.code == 200
        await response.content()
        assert request_timers(clock) == []
    assert not daemon.sites["site"].resource.exchanges


@pytest_twisted.ensureDeferred
async def test_a_request_answered_by_the_reaper_leaves_no_timer(daemons, clock):
    daemon = await daemons(CONFIG, clock=clock)
    table = daemon.runtime.get("pending.work")
    held = treq.get(url(daemon, "/hold"))
    await until(lambda: len(table) == 1, what="the request entered the table")
    (backstop,) = request_timers(clock)
    assert backstop.getTime() == clock.seconds() + 10 + 1  # the deadline, then the site's grace
    (entry,) = table.entries.values()
    assert entry.deadline == clock.seconds() + 10  # the request's deadline, not the table's timeout of 5
    clock.advance(9)
    assert len(table) == 1
    clock.advance(1)
    response = await held
    assert response.code == 504
    request_id = response.headers.getRawHeaders("x-request-id")[0]
    assert json.loads(await response.content()) == {
        "error": {"status": 504, "message": "gave up waiting", "request_id": request_id}}
    assert len(table) == 0 and table.reaped == 1
    await until(lambda: not daemon.sites["site"].resource.exchanges, what="the exchange is over")
    assert request_timers(clock) == []


@pytest_twisted.ensureDeferred
async def test_a_client_that_disconnects_leaves_no_timer(daemons, clock):
    daemon = await daemons(CONFIG, clock=clock)
    table = daemon.runtime.get("pending.work")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.sites["site"].port)
    client = await connectProtocol(endpoint, Disconnecting())
    await until(lambda: len(table) == 1, what="the request entered the table")
    assert len(request_timers(clock)) == 1
    client.transport.abortConnection()
    await until(lambda: table.cancelled == 1, what="the work was cancelled")
    await until(lambda: not daemon.sites["site"].resource.exchanges, what="the exchange is over")
    assert request_timers(clock) == []


@pytest_twisted.ensureDeferred
async def test_the_backstop_answers_a_request_nobody_answered_and_leaves_no_timer(daemons, clock):
    daemon = await daemons(CONFIG, clock=clock)
    silent = treq.get(url(daemon, "/silent"))
    await until(lambda: daemon.sites["site"].resource.exchanges, what="the request was accepted")
    clock.advance(10)
    assert daemon.sites["site"].resource.exchanges, "answered before the backstop"
    clock.advance(1)
    response = await silent
    assert response.code == 504
    assert json.loads(await response.content())["error"]["message"] == "no response in time"
    assert request_timers(clock) == []


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_an_article_answered_by_ner_leaves_no_timer(daemons, clock):
    daemon = await daemons(path=DEV, overrides=["web.main.port=0", "status-tests=null"], clock=clock)
    pool = daemon.runtime.get("ner.pool")
    assert request_timers(clock) == []
    pids = [process["pid"] for process in pool.state()["processes"]]
    for pid in pids:  # frozen children hold the article, so its timers can be looked at while it is out
        os.kill(pid, signal.SIGSTOP)
    try:
        article = json.dumps({"body": "Apple hired Tim Cook in Cupertino."}).encode()
        posted = treq.post(url(daemon, "/articles"), article, headers={"content-type": "application/json"})
        await until(lambda: pool.state()["in_flight"]["articles"] == 1, what="the article went to a child")
        assert len(request_timers(clock)) == 3  # the backstop, the article's expiry, the batch's overrun
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    response = await posted
    assert response.code == 201
    assert [e["text"] for e in json.loads(await response.content())["entities"]] == ["Apple", "Tim Cook",
                                                                                    "Cupertino"]
    await until(lambda: not daemon.sites["main"].resource.exchanges, what="the exchange is over")
    assert request_timers(clock) == []
    assert daemon.runtime.get("pending.ner").state()["completed"] == 1


@pytest_twisted.ensureDeferred
async def test_a_long_article_extends_its_request_deadline(daemons, clock):
    """``seconds_per_1000_words`` moves the one deadline; the backstop follows it."""
    from pipedingest.deadline import Deadline

    deadline = Deadline(clock, 10.0)
    deadline.extend_to(12.5)
    deadline.extend_to(11.0)
    assert deadline.at == 12.5 and deadline.remaining() == 12.5
    clock.advance(13)
    assert deadline.passed
    daemon = await daemons(CONFIG, clock=clock)
    silent = treq.get(url(daemon, "/silent"))
    await until(lambda: daemon.sites["site"].resource.exchanges, what="the request was accepted")
    (exchange,) = daemon.sites["site"].resource.exchanges
    exchange.deadline.extend_to(exchange.deadline.at + 5)
    clock.advance(11)
    assert exchange in daemon.sites["site"].resource.exchanges and len(request_timers(clock)) == 1  # moved
    clock.advance(5)
    response = await silent
    assert response.code == 504
    assert request_timers(clock) == []
