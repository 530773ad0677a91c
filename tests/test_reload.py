"""Reloading the configuration on SIGHUP, as real ``twistd ingest`` processes and their clients see it."""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import pytest

from tests.conftest import ROOT
from tests.twistd_process import Daemon

#: A site whose one route takes a while (so that requests are in flight when the reload is applied) and says
#: which configuration answered; a status test checks that answer.
SMALL = """\
web:
  main:
    port: 8080
    routing:
      answer:
        __config__: {{processor: pipeline.answer, methods: [GET]}}
pipelines:
  answer:
    - exec-code:
        output_path: slept
        namespace: {{deferLater: twisted.internet.task.deferLater}}
        code: |
          from twisted.internet import reactor
          return deferLater(reactor, 0.05, lambda: None)
    - set-value: {{path: content, value: {{version: {version}}}}}
    - write-web-response
status-tests:
  cases:
    - name: the answer is version {expected}
      path: /answer
      expect: {{status: 200, json: {{version: {expected}}}}}
"""


def write_small(path, version: int, expected: int | None = None) -> None:
    with open(path, "w") as stream:
        stream.write(SMALL.format(version=version, expected=version if expected is None else expected))


def reload(daemon: Daemon, outcome: str, count: int) -> dict:
    """SIGHUP, then wait until /status shows the *count*-th reload; the config block of /status."""
    os.kill(daemon.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        config = daemon.get_json("/status")[1]["config"]
        if config["reloads"] >= count:
            assert config["last_reload"]["outcome"] == outcome, config
            return config
        assert daemon.process.poll() is None, daemon.output[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no reload seen:\n{daemon.output[-3000:]}")


def wait_state(daemon: Daemon, ready: bool) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = daemon.get_json("/ready")
        if (status == 200) == ready:
            return body
        time.sleep(0.05)
    raise AssertionError(f"/ready never became {ready}: {body}\n{daemon.output[-3000:]}")


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    write_small(path, 1)
    daemon = Daemon(str(path), cwd=tmp_path)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.kill()
        raise
    yield daemon, path
    daemon.terminate()
    try:
        assert daemon.wait(60) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()


def test_a_reload_under_load_changes_the_answer_and_fails_no_request(small):
    daemon, path = small
    before = daemon.get_json("/status")[1]["config"]
    answers: list[list] = [[] for _ in range(8)]
    stop = threading.Event()

    def client(seen: list):
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)  # one keep-alive connection
        try:
            while not stop.is_set():
                connection.request("GET", "/answer")
                response = connection.getresponse()
                seen.append((response.status, json.loads(response.read())))
        except Exception as error:  # noqa: BLE001 - any failure is a failed request, asserted below
            seen.append((None, repr(error)))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(seen,)) for seen in answers]
    for thread in threads:
        thread.start()
    try:
        while sum(len(seen) for seen in answers) < 40:
            time.sleep(0.01)
        write_small(path, 2)
        after = reload(daemon, "applied", 1)
        while min(sum(1 for _, body in seen if body == {"version": 2}) for seen in answers) < 5:
            assert all(thread.is_alive() for thread in threads), answers
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    everything = [answer for seen in answers for answer in seen]
    assert {status for status, _ in everything} == {200}, [a for a in everything if a[0] != 200][:5]
    for seen in answers:  # on each connection, once the new pipeline answered, the old one never does again
        versions = [body["version"] for _, body in seen]
        assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2, versions
    assert after["sha256"] != before["sha256"] and after["loaded_at"] >= before["loaded_at"]
    assert "configuration reloaded: kept site.main" in daemon.output
    assert "status tests passed after the reload" in daemon.output
    wait_state(daemon, ready=True)


def test_a_broken_file_is_reported_and_the_running_configuration_stays(small):
    daemon, path = small
    before = daemon.get_json("/status")[1]["config"]
    text = path.read_text()
    path.write_text(text.replace("set-value: {path: content", "set-valeu: {path: content")
                    .replace("methods: [GET]", "methods: [GETT]"))
    config = reload(daemon, "rejected", 1)
    errors = config["last_reload"]["errors"]
    assert len(errors) == 2, errors
    assert any(error.startswith("small.yaml:6:") and "GETT" in error for error in errors), errors
    assert any(error.startswith("small.yaml:15:") and "set-value" in error for error in errors), errors
    for error in errors:
        assert f"reload: {error}" in daemon.output
    assert "has 2 configuration errors; still running the configuration loaded before" in daemon.output
    assert config["sha256"] == before["sha256"]
    assert daemon.get_json("/answer") == (200, {"version": 1})
    wait_state(daemon, ready=True)


def test_status_tests_run_again_and_gate_readiness(small):
    daemon, path = small
    write_small(path, 2, expected=3)  # the new configuration answers 2; its status test wants 3
    reload(daemon, "applied", 1)
    body = wait_state(daemon, ready=False)
    assert "status tests failed after a reload" in body["reason"]
    assert daemon.get_json("/answer") == (200, {"version": 2})
    write_small(path, 3)
    reload(daemon, "applied", 2)
    wait_state(daemon, ready=True)
    assert daemon.get_json("/answer") == (200, {"version": 3})


def child_pids(daemon: Daemon) -> list[int]:
    processes = daemon.get_json("/status")[1]["components"]["ner.pool"]["processes"]
    return sorted(process["pid"] for process in processes)


@pytest.mark.slow
def test_only_the_services_whose_settings_changed_restart(tmp_path):
    """A changed store path replaces the store; the NER pool, whose settings did not change, keeps its
    children; a route added by the reload answers at once."""
    path = tmp_path / "dev.yaml"
    base = f"includes: [{os.path.join(ROOT, 'conf', 'dev.yaml')}]\nner: {{min_children: 1}}\n"
    path.write_text(base)
    daemon = Daemon(str(path), cwd=tmp_path, env=dict(os.environ, INGEST_DATA=str(tmp_path / "one")))
    try:
        daemon.wait_ready()
        pids = child_pids(daemon)
        article = {"id": "before", "body": "Angela Merkel met Emmanuel Macron in Paris."}
        assert post(daemon, article)[0] == 201
        path.write_text(base + f"stores: {{articles: {{path: {tmp_path / 'two.sqlite'}}}}}\n")
        reload(daemon, "applied", 1)
        assert child_pids(daemon) == pids, "the NER pool was restarted"
        assert "replaced store.articles" in daemon.output
        assert post(daemon, dict(article, id="after"))[0] == 201
        assert daemon.get_json("/articles/after")[0] == 200
        assert daemon.get_json("/articles/before")[0] == 404  # the new store is another file
        assert (tmp_path / "two.sqlite").exists()
        wait_state(daemon, ready=True)
    finally:
        daemon.terminate()
        try:
            assert daemon.wait(60) == 0, daemon.output[-3000:]
        finally:
            daemon.kill()


def post(daemon: Daemon, article: dict):
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    try:
        connection.request("POST", "/articles", json.dumps(article), {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_service_that_fails_to_start_leaves_the_running_configuration(small):
    daemon, path = small
    write_small(path, 2)
    with open(path, "a") as stream:  # a store whose file cannot be created: it fails when it starts
        stream.write("stores:\n  articles: {kind: sqlite, path: /dev/null/cannot/articles.sqlite}\n")
    config = reload(daemon, "failed", 1)
    assert "store.articles did not start" in config["last_reload"]["errors"][0]
    assert daemon.get_json("/answer") == (200, {"version": 1})
    wait_state(daemon, ready=True)
    write_small(path, 3)  # fixed: the next reload applies
    reload(daemon, "applied", 2)
    assert daemon.get_json("/answer") == (200, {"version": 3})
