"""Real HTTP over loopback against in-process daemons."""
import json
import os

import pytest_twisted
import treq
from twisted.internet import protocol, reactor

from tests.conftest import ROOT, url

with open(os.path.join(ROOT, "conf", "examples", "euler.yaml"), encoding="utf-8") as _stream:
    EULER = _stream.read()

ROUTES = """\
web:
  site:
    port: 0
    max_body_bytes: 1000
    response_timeout: 0.5
    routing:
      echo:
        __config__:
          - {processor: pipeline.echo, methods: [POST], query: any}
          - {processor: pipeline.hello, methods: [GET]}
      items:
        "{id}":
          __config__: {processor: pipeline.item, methods: [GET]}
      broken:
        __config__: {processor: pipeline.broken}
      invalid:
        __config__: {processor: pipeline.invalid}
      silent:
        __config__: {processor: pipeline.silent}
      wait:
        __config__: {processor: pipeline.wait}
contexts:
  waits: {calls: 0, cancelled: 0}
pipelines:
  echo:
    - eval-lambda:
        input_path: request
        output_path: content
        lambda: "r: dict(json=r.json, args=r.args, type=r.content_type)"
    - write-web-response: {status: 201}
  hello:
    - set-value: {path: content, value: hello}
    - write-web-response
  item:
    - eval-lambda: {input_path: request.path_params, output_path: content, lambda: "p: p"}
    - write-web-response
  broken:
    - eval-lambda: {lambda: "baton: baton['nothing here']"}
  invalid:
    - decode-json: {input_path: request.args}
  silent:
    - set-value: {path: ignored, value: 1}
  wait:
    - fetch-context: {context: waits}
    - exec-code:
        namespace: {Deferred: twisted.internet.defer.Deferred}
        code: |
            waits = baton['waits']
            waits['calls'] += 1
            def cancelled(d):
                waits['cancelled'] += 1
            return Deferred(cancelled)
"""


async def get_json(response):
    body = await response.content()
    return json.loads(body)


@pytest_twisted.ensureDeferred
async def test_euler_example_answers_the_tutorial_question(daemons):
    daemon = await daemons(EULER, ["web.site.port=0"])
    query = "&".join(f"n={n}" for n in range(1, 11))
    response = await treq.get(url(daemon, "/?" + query))
    assert response.code == 200
    assert await get_json(response) == {"sum": 385, "square": 3025, "diff": 2640}
    bad = await treq.get(url(daemon, "/?n=x"))
    assert bad.code == 400
    assert (await get_json(bad))["error"]["status"] == 400


@pytest_twisted.ensureDeferred
async def test_request_as_the_pipeline_sees_it(daemons):
    daemon = await daemons(ROUTES)
    response = await treq.post(url(daemon, "/echo?x=1&x=é"), json.dumps({"a": [1]}).encode(),
                               headers={"content-type": "application/json; charset=utf-8"})
    assert response.code == 201
    assert await get_json(response) == {"json": {"a": [1]}, "args": {"x": ["1", "é"]}, "type": "application/json"}
    item = await treq.get(url(daemon, "/items/a%20b"))
    assert await get_json(item) == {"id": "a b"}
    hello = await treq.get(url(daemon, "/echo/"))
    assert hello.code == 200 and await hello.content() == b"hello"


@pytest_twisted.ensureDeferred
async def test_http_errors_are_json_with_the_right_status(daemons):
    daemon = await daemons(ROUTES)
    missing = await treq.get(url(daemon, "/nowhere"))
    assert missing.code == 404
    assert (await get_json(missing))["error"]["message"] == "no route for /nowhere"
    wrong = await treq.delete(url(daemon, "/echo"))
    assert wrong.code == 405
    assert wrong.headers.getRawHeaders("allow") == ["GET, HEAD, POST"]
    assert (await get_json(wrong))["error"]["allowed"] == ["GET", "HEAD", "POST"]
    big = await treq.post(url(daemon, "/echo"), b"x" * 5000)
    assert big.code == 413
    assert (await get_json(big))["error"]["limit_bytes"] == 1000
    malformed = await treq.post(url(daemon, "/echo"), b"{nope", headers={"content-type": "application/json"})
    assert malformed.code == 400
    assert "malformed JSON" in (await get_json(malformed))["error"]["message"]
    latin1 = await treq.post(url(daemon, "/echo"), '{"a": "é"}'.encode("latin-1"),
                             headers={"content-type": "application/json"})
    assert latin1.code == 400
    assert (await get_json(latin1))["error"]["message"] == "request body is not UTF-8 (byte 7)"
    invalid = await treq.get(url(daemon, "/invalid"))
    assert invalid.code == 400


@pytest_twisted.ensureDeferred
async def test_a_failing_pipeline_gives_a_500_with_an_error_id(daemons):
    daemon = await daemons(ROUTES)
    response = await treq.get(url(daemon, "/broken"))
    assert response.code == 500
    error = (await get_json(response))["error"]
    assert error["message"] == "internal error"
    assert len(error["id"]) == 12
    assert response.headers.getRawHeaders("content-type") == ["application/json"]


@pytest_twisted.ensureDeferred
async def test_an_unanswered_request_gets_504_after_response_timeout(daemons):
    daemon = await daemons(ROUTES)
    response = await treq.get(url(daemon, "/silent"))
    assert response.code == 504
    assert (await get_json(response))["error"]["timeout_seconds"] == 0.5


class _SendAndHangUp(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"GET /wait HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reactor.callLater(0.2, self.transport.loseConnection)


@pytest_twisted.ensureDeferred
async def test_a_client_that_disconnects_cancels_its_work(daemons):
    daemon = await daemons(ROUTES)
    waits = daemon.runtime.get("context.waits")
    port = next(iter(daemon.sites.values())).port
    await protocol.ClientCreator(reactor, _SendAndHangUp).connectTCP("127.0.0.1", port)
    for _ in range(50):
        if waits["cancelled"]:
            break
        await deferLater(0.05)
    assert waits == {"calls": 1, "cancelled": 1}
    assert not daemon.sites["site"].resource.exchanges


@pytest_twisted.ensureDeferred
async def test_builtin_endpoints(daemons):
    daemon = await daemons(ROUTES)
    health = await treq.get(url(daemon, "/health"))
    assert health.code == 200 and (await get_json(health))["alive"] is True
    ready = await treq.get(url(daemon, "/ready"))
    assert ready.code == 200 and (await get_json(ready))["ready"] is True
    status = await get_json(await treq.get(url(daemon, "/status")))
    assert status["state"] == "ready" and status["status_tests"] is None


TUTORIAL_REAPER = """\
web:
  site:
    port: 0
    routing:
      __config__: {processor: pipeline.web.compute, query: [n]}
contexts:
  pending: {}
ticks:
  interval:
    reaper: {interval: 0.1, processor: pipeline.reap-pending-batons}
pipelines:
  web:
    compute:
      - eval-lambda:
          namespace: {time: time.time}
          output_path: added
          lambda: "_: time()"
      - fetch-context: {context: pending}
      - exec-code:
          code: |
              baton['pending'][id(baton['request'])] = baton
              return baton
  reap-pending-batons:
    - fetch-context: {context: pending}
    - exec-code:
        input_path: pending
        output_path: reap_batons
        namespace: {time: time.time}
        code: |
            cutoff = time() - 0.3
            reap_batons = []
            for key, pending_baton in list(input.items()):
                if pending_baton['added'] < cutoff:
                    input.pop(key)
                    reap_batons.append(pending_baton)
            return reap_batons
    - for-each: {input_path: reap_batons, pipeline: reap-baton, fail_on_error: true}
  reap-baton:
    - write-web-response:
        fallback_content: '{"success": false}'
"""


@pytest_twisted.ensureDeferred
async def test_the_tutorials_pending_context_and_reaper_in_real_time(daemons):
    daemon = await daemons(TUTORIAL_REAPER)
    started = reactor.seconds()
    response = await treq.get(url(daemon, "/?n=42"))
    waited = reactor.seconds() - started
    assert response.code == 200
    assert await get_json(response) == {"success": False}
    assert waited >= 0.3
    assert daemon.runtime.get("context.pending") == {}


def deferLater(seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
