"""Structured logs and request ids: JSON lines from real ``twistd`` processes, ids in headers, bodies and logs."""
from __future__ import annotations

import http.client
import json
import re
import socket
import time

import pytest
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from pipedingest.logs import event_as_json
from pipedingest.web.request import request_id_from
from tests.conftest import write_config
from tests.twistd_process import Daemon

CONFIG = """
web:
  main:
    port: 8080
    read_timeout: 1
    response_timeout: {response_timeout}
    routing:
      echo:
        __config__: {{processor: pipeline.echo, methods: [POST], accepts: [application/json]}}
      fail:
        __config__: {{processor: pipeline.fail, methods: [GET]}}
      hold:
        __config__: {{processor: pipeline.hold, methods: [GET]}}
      refuse:
        __config__: {{processor: pipeline.refuse, methods: [GET]}}
pipelines:
  refuse:                     # an error body written by the pipeline itself
    - write-web-response:
        status: 422
        fallback_content: {{error: {{status: 422, message: "not today"}}}}
  echo:
    - write-web-response: {{input_path: request.json}}
  fail:
    - eval-lambda: {{input_path: request, output_path: x, lambda: "request: 1 / 0"}}
  hold:                       # answers nothing: the site's backstop answers 504 after the deadline
    - set-value: {{path: held, value: true}}
{daemon}
"""
ACCESS = "pipedingest.web.accesslog"
GENERATED = re.compile(r"[0-9a-f]{32}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"debug", "info", "warn", "error", "critical"}


def config(directory, response_timeout=2, daemon_section="") -> str:
    return write_config(directory, CONFIG.format(response_timeout=response_timeout, daemon=daemon_section))


def ask(daemon, path, method="GET", body=None, headers=None) -> tuple[int, dict, bytes]:
    """``(status, headers with lower-case names, body)``; error statuses are answers like any other."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in (headers or []):
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes) -> tuple[int, dict, dict]:
    """Send raw bytes, read until the server closes: ``(status, headers, JSON body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def records(daemon) -> list[dict]:
    return [json.loads(line) for line in list(daemon.lines)]


def wait_for_record(daemon, what: str, **fields) -> dict:
    """The first log record with these fields, polling the output until it shows up (or failing after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        for record in records(daemon):
            if all(record.get(key) == value for key, value in fields.items()):
                return record
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what} with {fields} in:\n{daemon.output[-5000:]}")
        time.sleep(0.05)


def access_record(daemon, request_id: str) -> dict:
    return wait_for_record(daemon, "access-log line", namespace=ACCESS, request_id=request_id)


def check_every_line_is_a_record(daemon) -> list[dict]:
    found = []
    for line in list(daemon.lines):
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert TIME.fullmatch(record["time"]) and record["level"] in LEVELS, line
        assert isinstance(record["namespace"], str) and isinstance(record["message"], str), line
        found.append(record)
    return found


@pytest.fixture(scope="module")
def json_daemon(tmp_path_factory):
    """One daemon for the request-id tests, logging JSON because the command line says so."""
    directory = tmp_path_factory.mktemp("json-daemon")
    daemon = Daemon(config(directory), cwd=directory, ingest_args=["--log-format", "json"])
    try:
        daemon.wait_ready()
        yield daemon
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.output[-3000:]
        check_every_line_is_a_record(daemon)
    finally:
        daemon.kill()


@pytest.mark.slow
def test_a_given_request_id_is_in_the_header_the_error_body_and_the_access_log(json_daemon):
    given = "client-42:attempt.1_B"
    status, headers, body = ask(json_daemon, "/echo", "POST", b'{"broken": ', [("Content-Type", "application/json"),
                                                                               ("X-Request-Id", given)])
    assert status == 400 and headers["x-request-id"] == given
    assert json.loads(body)["error"]["request_id"] == given
    line = access_record(json_daemon, given)
    assert (line["status"], line["method"], line["target"], line["site"]) == (400, "POST", "/echo", "main")
    assert line["message"].endswith(f'"POST /echo HTTP/1.1" 400 {len(body)} "-" "-" "{given}"'), line["message"]
    assert TIME.fullmatch(line["time"]) and line["level"] == "info" and type(line["duration_ms"]) is float


@pytest.mark.slow
def test_an_error_body_a_pipeline_writes_carries_the_request_id(json_daemon):
    status, headers, body = ask(json_daemon, "/refuse", headers=[("X-Request-Id", "pipeline-error-7")])
    assert status == 422 and headers["x-request-id"] == "pipeline-error-7"
    assert json.loads(body) == {"error": {"status": 422, "message": "not today", "request_id": "pipeline-error-7"}}


def test_a_failure_is_logged_with_its_request_id_and_traceback(json_daemon):
    status, headers, body = ask(json_daemon, "/fail", headers=[("X-Request-Id", "fail-1")])
    error = json.loads(body)["error"]
    assert (status, headers["x-request-id"], error["request_id"]) == (500, "fail-1", "fail-1")
    logged = wait_for_record(json_daemon, "failure", request_id="fail-1", error_id=error["id"])
    assert logged["level"] == "critical" and logged["namespace"] == "pipedingest.web.errors"
    assert "ZeroDivisionError" in logged["traceback"] and logged["message"].startswith(f"error {error['id']} in ")
    assert access_record(json_daemon, "fail-1")["status"] == 500


@pytest.mark.slow
def test_an_insane_request_id_is_replaced_not_echoed(json_daemon):
    for given in (["insane marker one"], ['insane"marker"two'], ["x" * 129], [""], ["dup-one", "dup-two"]):
        status, headers, body = ask(json_daemon, "/nowhere", headers=[("X-Request-Id", value) for value in given])
        assert status == 404 and GENERATED.fullmatch(headers["x-request-id"]), (given, headers)
        assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]
        assert access_record(json_daemon, headers["x-request-id"])["status"] == 404
    for insane in ("insane marker one", "insane", "x" * 129, "dup-one", "dup-two"):
        assert insane not in json_daemon.output


@pytest.mark.slow
def test_generated_request_ids_are_unique(json_daemon):
    ids = []
    for _ in range(20):
        status, headers, body = ask(json_daemon, "/nowhere")
        assert status == 404 and json.loads(body)["error"]["request_id"] == headers["x-request-id"]
        ids.append(headers["x-request-id"])
    assert len(set(ids)) == len(ids) and all(GENERATED.fullmatch(given) for given in ids), ids
    for given in ids:
        assert access_record(json_daemon, given)["target"] == "/nowhere"


@pytest.mark.slow
def test_answers_given_before_a_request_is_complete_carry_ids_and_are_logged(json_daemon):
    port = json_daemon.port
    too_large = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: early-413\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{")
    too_slow = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: early-408\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
    for data, status, given in ((too_large, 413, "early-413"), (too_slow, 408, "early-408")):
        answer = raw(port, data)
        assert (answer[0], answer[1]["x-request-id"], answer[2]["error"]["request_id"]) == (status, given, given)
        line = access_record(json_daemon, given)
        assert (line["status"], line["method"], line["target"]) == (status, "POST", "/echo")
    for malformed in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nX-Request-Id: bad-length\r\nContent-Length: x\r\n\r\n"):
        status, headers, body = raw(port, malformed)
        assert status == 400 and body["error"] == {"status": 400, "message": "malformed HTTP request",
                                                   "request_id": headers["x-request-id"]}
        assert access_record(json_daemon, headers["x-request-id"])["status"] == 400


@pytest.mark.slow
def test_the_backstop_504_carries_the_request_id(json_daemon):
    status, headers, body = ask(json_daemon, "/hold", headers=[("X-Request-Id", "held-504")])
    assert (status, headers["x-request-id"], json.loads(body)["error"]["request_id"]) == (504, "held-504", "held-504")
    warning = wait_for_record(json_daemon, "backstop warning", request_id="held-504", level="warn")
    assert "unanswered by its deadline" in warning["message"] and "held-504" in warning["message"]
    assert access_record(json_daemon, "held-504")["status"] == 504


def open_requests(daemon) -> int:
    return daemon.get_json("/status")[1]["components"]["site.main"]["open_requests"]


@pytest.mark.slow
def test_shutdown_503s_and_clients_gone_are_logged_with_ids_all_in_json(tmp_path):
    daemon = Daemon(config(tmp_path, 60, "daemon: {log_format: json}"), cwd=tmp_path)  # JSON from the config
    try:
        daemon.wait_ready()
        held = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
        held.sendall(b"GET /hold HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: held-gone\r\n\r\n")
        deadline = time.monotonic() + 30
        while open_requests(daemon) != 1:
            assert time.monotonic() < deadline, daemon.output[-3000:]
            time.sleep(0.05)
        daemon.terminate()
        wait_for_record(daemon, "drain", message="web site 'main' stopped accepting; draining 1 open requests")
        status, headers, body = ask(daemon, "/hold", headers=[("X-Request-Id", "late-1")])
        error = json.loads(body)["error"]
        assert (status, headers["x-request-id"], error["request_id"]) == (503, "late-1", "late-1")
        assert error["message"] == "the daemon is shutting down" and headers["retry-after"] == "5"
        assert access_record(daemon, "late-1")["status"] == 503
        held.close()  # its client goes away: the drain ends, and the access log says so
        line = access_record(daemon, "held-gone")
        assert (line["status"], line["target"], line["bytes"]) == (499, "/hold", 0)
        assert daemon.wait(60) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()
    found = check_every_line_is_a_record(daemon)
    messages = {(record["namespace"], record["message"]) for record in found}
    assert any(namespace.startswith("twisted.scripts") and "starting up" in message
               for namespace, message in messages), messages
    assert any(message == "Server Shut Down." for _, message in messages)


TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")


def check_text_log(daemon) -> None:
    daemon.wait_ready()
    status, headers, body = ask(daemon, "/nowhere", headers=[("X-Request-Id", "text-1")])
    assert status == 404 and headers["x-request-id"] == "text-1"
    daemon.wait_for('"GET /nowhere HTTP/1.1" 404 ')
    daemon.terminate()
    assert daemon.wait(60) == 0, daemon.output[-3000:]
    lines = list(daemon.lines)
    assert all(TEXT_LINE.match(line) for line in lines), daemon.output[-3000:]
    access = [line for line in lines if '"GET /nowhere HTTP/1.1" 404 ' in line]
    assert len(access) == 1 and "[pipedingest.web.accesslog#info] \"127.0.0.1\" - - [" in access[0], access
    assert access[0].rstrip().endswith('"-" "-" "text-1"'), access


@pytest.mark.slow
def test_the_log_is_twistds_text_by_default(tmp_path):
    daemon = Daemon(config(tmp_path), cwd=tmp_path)
    try:
        check_text_log(daemon)
    finally:
        daemon.kill()


@pytest.mark.slow
def test_the_command_line_format_wins_over_the_configuration(tmp_path):
    daemon = Daemon(config(tmp_path, daemon_section="daemon: {log_format: json}"), cwd=tmp_path,
                    ingest_args=["--log-format", "text"])
    try:
        check_text_log(daemon)
    finally:
        daemon.kill()


# -- the JSON record of one event, and the request id rule ---------------------------------------------------

def event(**fields) -> dict:
    return {"log_time": 1777636800.1234, "log_level": LogLevel.warn, "log_namespace": "here",
            "log_format": "took {seconds}s for {who!r}", "log_logger": object(), "log_source": None, **fields}


def test_a_record_has_the_fixed_keys_then_the_fields():
    record = json.loads(event_as_json(event(seconds=1.5, who="Zoë", pids=[1, 2], nested={"a": [None, True]})))
    assert record == {"time": "2026-05-01T12:00:00.123Z", "level": "warn", "namespace": "here",
                      "message": "took 1.5s for 'Zoë'", "seconds": 1.5, "who": "Zoë", "pids": [1, 2],
                      "nested": {"a": [None, True]}}


def test_fields_json_cannot_hold_are_reprs_and_names_never_clash():
    line = event_as_json(event(seconds=float("nan"), who=b"\xff", message="mine", time="later", tags={1: "x"}))
    assert line.endswith("\n") and line.isascii() and "\n" not in line[:-1]
    record = json.loads(line)
    assert (record["seconds"], record["who"], record["tags"]) == ("nan", "b'\\xff'", "{1: 'x'}")
    assert (record["field_message"], record["field_time"]) == ("mine", "later")
    assert record["message"] == "took nans for b'\\xff'"


def test_a_failure_is_a_traceback_and_old_style_keys_are_left_out():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    record = json.loads(event_as_json(event(log_failure=failure, seconds=2, who="me", isError=1, why="w",
                                            system="-", failure=failure, message=())))
    assert "ZeroDivisionError" in record["traceback"] and record["message"] == "took 2s for 'me'"
    assert set(record) == {"time", "level", "namespace", "message", "seconds", "who", "traceback"}


def test_which_request_ids_are_kept():
    for sane in ("a", "0f" * 64, "front-1:42", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "A.b_c"):
        assert request_id_from([sane.encode()]) == sane
    for insane in ("", "has space", "x" * 129, "tab\there", "é", "semi;colon", "quote\""):
        assert GENERATED.fullmatch(request_id_from([insane.encode("latin-1")]))
    assert GENERATED.fullmatch(request_id_from([b"one", b"two"]))
    assert GENERATED.fullmatch(request_id_from(None))
    assert len({request_id_from(None) for _ in range(1000)}) == 1000
