"""What the listener refuses, as a client on a raw socket sees it: answers in JSON, never a bare close.

A header line of 20 kB, header lines over 16 KiB in all, too many of them (431), a request line of 20 kB
(414); a query parameter a route does not take (400 naming it). Each answer is JSON with the request's id,
access-logged, and the daemon goes on serving others. Declarations of ``query`` are checked at --check.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import write_config
from tests.twistd_process import Daemon, twistd

CONFIG = """\
web:
  main:
    port: 0
    routing:
      answer:
        __config__: {processor: pipeline.answer, methods: [GET]}
      numbers:
        __config__: {processor: pipeline.args, methods: [GET], query: [n]}
      anything:
        __config__: {processor: pipeline.args, methods: [GET], query: any}
pipelines:
  answer:
    - set-value: {path: content, value: {answer: 42}}
    - write-web-response
  args:
    - eval-lambda: {input_path: request.args, output_path: content, lambda: "args: args"}
    - write-web-response
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    running = Daemon(write_config(folder, CONFIG), cwd=folder)
    try:
        running.wait_ready()
        yield running
    finally:
        running.terminate()
        try:
            assert running.wait(60) == 0, running.output[-3000:]
        finally:
            running.kill()


def exchange(port: int, wire: bytes) -> tuple[int, dict, dict]:
    """Send raw bytes, read until the daemon closes: (status, headers, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(wire)
        except OSError:
            pass  # answered and closed before all was sent: read what it said
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head, "the connection closed with no answer"
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split(" ", 2)[1]), headers, json.loads(body[:int(headers["content-length"])])


def get(port: int, target: str, *headers: bytes) -> tuple[int, dict, dict]:
    return exchange(port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                    + b"".join(header + b"\r\n" for header in headers) + b"Connection: close\r\n\r\n")


def assert_served_and_logged(daemon: Daemon, headers: dict) -> None:
    """The refused request's id is in the access log, and the daemon still answers others."""
    assert get(daemon.port, "/answer")[::2] == (200, {"answer": 42})
    deadline = time.monotonic() + 30
    while not any(headers["x-request-id"] in line and " 4" in line for line in daemon.lines):
        assert time.monotonic() < deadline, f"{headers['x-request-id']} not logged:\n{daemon.output[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("headers, limit", [
    ((b"X-Big: " + b"a" * 20_000,), 16384),                                  # one line of 20 kB
    (tuple(b"X-Part-%d: " % n + b"b" * 1000 for n in range(20)), 16384),     # 20 lines of 1 kB
])
def test_headers_too_large_get_431_in_json(daemon, headers, limit):
    status, answered, body = get(daemon.port, "/answer", *headers)
    assert status == 431, body
    assert answered["content-type"] == "application/json" and answered["connection"] == "close"
    assert body["error"]["status"] == 431 and body["error"]["limit_bytes"] == limit
    assert body["error"]["request_id"] == answered["x-request-id"]
    assert_served_and_logged(daemon, answered)


def test_too_many_header_lines_get_431(daemon):
    status, answered, body = get(daemon.port, "/answer", *(b"X-N%d: 1" % n for n in range(600)))
    assert (status, body["error"]["limit"]) == (431, 500), body
    assert_served_and_logged(daemon, answered)


def test_a_request_line_too_long_gets_414_in_json(daemon):
    status, answered, body = get(daemon.port, "/answer?x=" + "y" * 20_000)
    assert status == 414, body
    assert body["error"]["status"] == 414 and "request line" in body["error"]["message"]
    assert answered["content-type"] == "application/json"
    assert_served_and_logged(daemon, answered)


def test_a_request_just_under_the_limits_is_served(daemon):
    status, _, body = get(daemon.port, "/anything?x=" + "y" * 8000, b"X-Big: " + b"a" * 7000)
    assert status == 200 and body == {"x": ["y" * 8000]}


# -- query parameters ------------------------------------------------------------------------------------------


def test_an_unknown_query_parameter_gets_400_naming_it(daemon):
    status, _, body = get(daemon.port, "/answer?entity=x")
    assert status == 400
    assert body["error"]["unknown"] == ["entity"] and body["error"]["accepted"] == []
    assert "'entity'" in body["error"]["message"]
    status, _, body = get(daemon.port, "/numbers?n=1&n=2&limit=3&entity=x")
    assert (status, body["error"]["unknown"], body["error"]["accepted"]) == (400, ["entity", "limit"], ["n"])


def test_declared_query_parameters_are_served(daemon):
    assert get(daemon.port, "/numbers?n=1&n=2")[::2] == (200, {"n": ["1", "2"]})
    assert get(daemon.port, "/anything?entity=x&z=1")[::2] == (200, {"entity": ["x"], "z": ["1"]})
    assert get(daemon.port, "/answer")[::2] == (200, {"answer": 42})


@pytest.mark.parametrize("query, expected", [
    ("5", "conf.yaml:6:73: option 'query' of the route at /answer must be a list or a string or null"),
    ("everything", "conf.yaml:6:73: 'query' must be 'any' or a list of parameter names, not 'everything'"),
    ("[n, '']", "conf.yaml:6:73: 'query' must be 'any' or a list of parameter names, not ['n', '']"),
    ("[]", "conf.yaml:6:73: 'query' must be 'any' or a list of parameter names, not []"),
])
def test_check_reports_a_malformed_query_declaration(tmp_path, query, expected):
    text = CONFIG.replace("{processor: pipeline.answer, methods: [GET]}",
                          "{processor: pipeline.answer, methods: [GET], query: " + query + "}")
    write_config(tmp_path, text)
    result = twistd("-c", "conf.yaml", "--check", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
