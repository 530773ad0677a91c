"""Hostile input and careless clients against conf/dev.yaml: prompt JSON 4xx, and nothing else disturbed.

Each test reproduces one defect found by a fuzz run (issue 8) over real HTTP: raw sockets where the bytes on
the wire matter, treq elsewhere.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time

import pytest_twisted
import treq
from twisted.internet import defer, threads

from tests.conftest import DEV, until, url

PORT0 = ["web.main.port=0"]
JSON = {"content-type": "application/json"}


def exchange(port: int, data: bytes, timeout: float = 10.0, then_wait: bool = True) -> tuple[float, bytes]:
    """Send raw *data*, read until the server closes (or *timeout*); ``(seconds until the answer, answer)``."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if not then_wait and b"\r\n\r\n" in answer:
                break
        return time.monotonic() - started, answer
    finally:
        sock.close()


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request_id_of(answer: bytes) -> str:
    """The X-Request-Id header of a raw answer (every answer has one, early ones too)."""
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    return next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                if line.lower().startswith("x-request-id:"))


async def post(daemon, path, body: bytes, headers=JSON):
    response = await treq.post(url(daemon, path), body, headers=headers)
    return response.code, json.loads(await response.content())


def stored_ids(tmp_path) -> set:
    database = sqlite3.connect(tmp_path / "var" / "articles.sqlite")
    try:
        return {row[0] for row in database.execute("SELECT id FROM articles")}
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_lone_surrogates_anywhere_are_a_prompt_400(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0)
    before = daemon.runtime.get("ner.pool").state()["articles"]
    cases = [
        (b'{"body":"x","\\ud800":"y"}', "lone surrogate (U+D800)"),
        (b'{"body":"Apple \\udc00 Paris"}', "lone surrogate (U+DC00)"),
        (b'{"body":"Apple \xed\xa0\x80 Paris"}', "request body is not UTF-8 (byte 15)"),
        (b'{"title":"\\udbff","body":"Rome"}', "lone surrogate (U+DBFF)"),
    ]
    for body, message in cases:
        code, answer = await post(daemon, "/articles", body)
        assert code == 400 and message in answer["error"]["message"], (body, answer)
    code, answer = await post(daemon, "/articles", b'{"id":"pair","body":"Rome \\ud83d\\ude00 Paris"}')
    assert code == 201, answer  # a surrogate *pair* is one valid character
    assert daemon.runtime.get("ner.pool").state()["articles"] == before + 1


@pytest_twisted.ensureDeferred
async def test_a_bad_article_among_queued_ones_hurts_nobody(daemons):
    """The poisoned queue: with every child busy, a bad article is refused at once and the others all pass."""
    daemon = await daemons(path=DEV, overrides=PORT0 + ["ner.min_children=1", "status-tests=null"])
    pool = daemon.runtime.get("ner.pool")
    (pid,) = [process["pid"] for process in pool.state()["processes"]]
    # The child holds the first article and, in its pipe, the second (prefetch: 1): the next ones queue.
    os.kill(pid, signal.SIGSTOP)
    try:
        good = []
        for index, (body, held, queued) in enumerate((("Oslo.", 1, 0), ("Lima.", 2, 0), ("Kyiv.", 2, 1))):
            article = json.dumps({"id": f"q{index}", "body": body}).encode()
            good.append(defer.ensureDeferred(post(daemon, "/articles", article)))
            await until(lambda: (pool.state()["in_flight"]["articles"], pool.state()["queued"]["articles"])
                        == (held, queued), what=f"article {index} in the child, its pipe or the queue")
        code, answer = await post(daemon, "/articles", b'{"id":"bad","body":"Rome \\ud800"}')
        assert code == 400 and "lone surrogate" in answer["error"]["message"]
        assert pool.state()["queued"]["articles"] == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [(await result)[0] for result in good] == [201, 201, 201]
    state = pool.state()
    assert state["failed"] == 0 and state["invalid"] == 0 and state["queued"]["articles"] == 0


@pytest_twisted.ensureDeferred
async def test_deep_or_huge_json_is_a_400(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["status-tests=null"])
    for body, message in [(b"[" * 100_000, "nested more than 32 levels"),
                          (b"[" * 40 + b"]" * 40, "nested more than 32 levels"),
                          (b'{"body": "x", "n": ' + b"9" * 5000 + b"}", "malformed JSON"),
                          (b'{"body": NaN}', "malformed JSON: NaN is not JSON")]:
        code, answer = await post(daemon, "/articles", body)
        assert code == 400 and message in answer["error"]["message"], answer


@pytest_twisted.ensureDeferred
async def test_odd_digits_in_a_limit_are_a_400(daemons):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["status-tests=null"])
    for limit in ("²", "①", "-1", "0", "101", "1e3"):
        response = await treq.get(url(daemon, "/articles"), params={"limit": limit})
        assert response.code == 400, limit
        assert "limit must be a whole number from 1 to 100" in json.loads(await response.content())["error"]["message"]
    response = await treq.get(url(daemon, "/articles?limit=%FF"))
    assert response.code == 400
    assert json.loads(await response.content())["error"]["message"] == "the query is not UTF-8 (byte 0)"


@pytest_twisted.ensureDeferred
async def test_an_ndjson_batch_answers_200_per_item_and_stores_only_the_2xx(daemons, tmp_path):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["status-tests=null"])
    lines = [
        json.dumps({"id": "n1", "body": "Madrid is in Spain."}).encode(),
        b'{"id": "n2", "body": "broken',                                             # malformed
        b'{"id": "n3", "body": "Rome \\ud800"}',                                      # lone surrogate
        '{"id": "n4", "body": "Lisbon\u2028is in\u0085Portugal."}'.encode("utf-8"),  # raw U+2028, U+0085
        b'{"id": "n5", "body": "Caf\xe9"}',                                           # not UTF-8
        json.dumps({"id": "n/6", "body": "Bern."}).encode(),                         # an unusable id
    ]
    code, answer = await post(daemon, "/articles/batch", b"\r\n".join(lines) + b"\n",
                              {"content-type": "application/x-ndjson"})
    assert code == 200, answer
    statuses = [item["status"] for item in answer["results"]]
    assert statuses == [201, 400, 400, 201, 400, 400]
    assert answer["results"][3]["entities"][0]["text"] == "Lisbon"
    assert stored_ids(tmp_path) == {"n1", "n4"}


@pytest_twisted.ensureDeferred
async def test_http_edges_get_json_answers_at_once(daemons):
    # idle_timeout above read_timeout: a request that stalls must get its 408 before its idle connection closes.
    daemon = await daemons(path=DEV, overrides=PORT0 + ["status-tests=null", "web.main.read_timeout=0.5",
                                                        "web.main.idle_timeout=1.5"])
    port = daemon.sites["main"].port
    huge = b"POST /articles HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 99999999999\r\n\r\n{"
    took, answer = await threads.deferToThread(exchange, port, huge)
    assert status_and_json(answer) == (413, {"error": {"status": 413, "message": "request body too large",
                                                       "limit_bytes": 2097152,
                                                       "request_id": request_id_of(answer)}})
    slow = (b"POST /articles HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50\r\n\r\n{")
    took, answer = await threads.deferToThread(exchange, port, slow)
    code, body = status_and_json(answer)
    assert code == 408 and body["error"]["message"] == "the request was not received within 0.5s"
    took, answer = await threads.deferToThread(exchange, port, b"")  # an idle connection is closed
    assert answer == b""
    for malformed in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                      b"POST /articles HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        took, answer = await threads.deferToThread(exchange, port, malformed)
        assert status_and_json(answer) == (400, {"error": {"status": 400, "message": "malformed HTTP request",
                                                           "request_id": request_id_of(answer)}})
    response = await treq.get(url(daemon, "/health"))
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_cross_site_writes_are_refused(daemons, tmp_path):
    daemon = await daemons(path=DEV, overrides=PORT0 + ["status-tests=null"])
    article = json.dumps({"id": "csrf", "body": "Paris is in France."}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        code, answer = await post(daemon, "/articles", article, {"content-type": content_type})
        assert code == 415, answer
    code, answer = await post(daemon, "/articles", article, {})
    assert code == 415 and answer["error"]["message"] == \
        "this route takes application/json, not an untyped body"
    port = daemon.sites["main"].port
    rebound = (b"POST /articles HTTP/1.1\r\nHost: attacker.example:8080\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(article)) + article
    _, answer = await threads.deferToThread(exchange, port, rebound, 10.0, False)
    code, body = status_and_json(answer)
    assert code == 421 and body["error"]["message"] == "host 'attacker.example' is not served here"
    for host in (b"localhost:1", b"127.0.0.1", b"[::1]:8080"):
        _, answer = await threads.deferToThread(
            exchange, port, b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status_and_json(answer)[0] == 200, host
    assert "csrf" not in stored_ids(tmp_path)


@pytest_twisted.ensureDeferred
async def test_writes_behind_a_token(daemons, tmp_path):
    token = "s3cret-token"
    daemon = await daemons(path=DEV, overrides=PORT0 + [f"web.main.tokens=[{token}]"])
    assert daemon.status.ready, "the status tests pass with tokens set"
    article = json.dumps({"id": "t1", "body": "Paris is in France."}).encode()
    for headers in (JSON, {**JSON, "authorization": "Bearer wrong"}, {**JSON, "authorization": token}):
        response = await treq.post(url(daemon, "/articles"), article, headers=headers)
        assert response.code == 401
        assert response.headers.getRawHeaders("www-authenticate") == ['Bearer realm="pipedingest"']
        assert json.loads(await response.content())["error"]["message"] == "a valid bearer token is required"
    for path in ("/health", "/ready"):
        assert (await treq.get(url(daemon, path))).code == 200
    assert (await treq.get(url(daemon, "/status"))).code == 401
    response = await treq.post(url(daemon, "/articles"), article,
                               headers={**JSON, "authorization": f"Bearer {token}"})
    assert response.code == 201
    assert stored_ids(tmp_path) >= {"t1"}
