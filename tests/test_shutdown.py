"""SIGTERM under load, seen from the clients: every request sent before the signal is answered 2xx and stored.

A real ``twistd ingest`` process serves 8 clients, each on its own persistent HTTP connection, posting real
news articles one after another.  After some answers, the test sends SIGTERM and notes the moment.  Every
request whose bytes were all sent before that moment must be answered 2xx (not 503); requests sent later may
get 503 (with Retry-After) or find the port closed.  The daemon must exit 0; restarted on the same data, it must
have every article it acknowledged.  The same with ``conf/prod.yaml`` against Google's Firestore emulator.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from pipedingest.load import read_articles
from tests.conftest import DEV, PROD
from tests.test_articles import corpus_path
from tests.twistd_process import Daemon

CLIENTS = 8
ANSWERS_BEFORE_SIGNAL = 24


@dataclass
class Outcome:
    article_id: str
    sent_at: float
    answered_at: float
    status: int | None  # None: the connection failed (the port had closed)
    body: bytes = b""


def client(port: int, articles: list[dict], outcomes: list[Outcome], token: str | None) -> None:
    """Post *articles* one after another on one persistent connection; stop once the daemon is gone."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        for article in articles:
            body = json.dumps(article).encode("utf-8")
            try:
                connection.request("POST", "/articles", body, headers)
                sent_at = time.monotonic()  # request() returns once every byte has been written
                response = connection.getresponse()
                content = response.read()
                outcomes.append(Outcome(article["id"], sent_at, time.monotonic(), response.status, content))
            except OSError:  # refused, reset: the daemon has closed its port
                outcomes.append(Outcome(article["id"], time.monotonic(), time.monotonic(), None))
                return
    finally:
        connection.close()


def signal_under_load(config: str, cwd, env, signum=signal.SIGTERM) -> dict:
    articles = [{"id": f"doc-{index}", "source": "load", "title": article.get("title", ""), "body": article["body"]}
                for index, article in enumerate(read_articles(corpus_path(), 400)) if article["body"].strip()]
    daemon = Daemon(config, cwd=cwd, env=env)
    try:
        daemon.wait_ready()
        outcomes: list[Outcome] = []
        threads = [threading.Thread(target=client, args=(daemon.port, articles[n::CLIENTS], outcomes, daemon.token))
                   for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        while sum(1 for outcome in outcomes if outcome.status in (200, 201)) < ANSWERS_BEFORE_SIGNAL:
            assert all(thread.is_alive() for thread in threads), "a client ended before the signal"
            time.sleep(0.01)
        signalled_at = time.monotonic()
        daemon.process.send_signal(signum)
        for thread in threads:
            thread.join(300)
        exit_code = daemon.wait(120)
    finally:
        daemon.kill()
    return {"outcomes": outcomes, "signalled_at": signalled_at, "exit_code": exit_code, "output": daemon.output}


def check(run: dict, restart) -> dict:
    outcomes, signalled_at, output = run["outcomes"], run["signalled_at"], run["output"]
    assert run["exit_code"] == 0, output[-5000:]
    sent_before = [outcome for outcome in outcomes if outcome.sent_at < signalled_at]
    refused_before = [(o.article_id, o.status, o.body[:200]) for o in sent_before if o.status not in (200, 201)]
    assert not refused_before, f"requests sent before SIGTERM were not answered 2xx: {refused_before}"
    in_flight = [o for o in sent_before if o.answered_at > signalled_at]
    assert in_flight, "no request was in flight at the signal: the drain was not exercised"
    acknowledged = {o.article_id: json.loads(o.body) for o in outcomes if o.status in (200, 201)}
    after = [o for o in outcomes if o.sent_at >= signalled_at]
    assert all(o.status in (200, 201, 503, None) for o in after), [o.status for o in after]
    refused = [o for o in after if o.status == 503]
    for outcome in refused:
        assert json.loads(outcome.body)["error"]["message"] == "the daemon is shutting down"
    assert len(re.findall(r'"POST /articles HTTP/1\.1" 503 ', output)) == len(refused), \
        "the access log misses 503s sent while draining"
    match = re.search(r"stopped cleanly in ([0-9.]+)s", output)
    assert match, output[-3000:]
    missing = restart(acknowledged)
    assert missing == [], f"acknowledged but not stored: {missing}"
    return {"sent_before_sigterm": len(sent_before), "2xx_of_those": len(sent_before) - len(refused_before),
            "in_flight_at_sigterm": len(in_flight), "acknowledged": len(acknowledged),
            "503_after_sigterm": len(refused), "missing_after_restart": len(missing),
            "drain_seconds": float(match.group(1))}


def restarted_lookup(config: str, cwd, env):
    def lookup(acknowledged: dict) -> list[str]:
        daemon = Daemon(config, cwd=cwd, env=env)
        try:
            daemon.wait_ready()
            missing = []
            for article_id, answer in acknowledged.items():
                status, stored = daemon.get_json(f"/articles/{article_id}")
                if status != 200 or stored["entities"] != answer["entities"]:
                    missing.append(article_id)
            daemon.terminate()
            assert daemon.wait(120) == 0, daemon.output[-3000:]
        finally:
            daemon.kill()
        return missing

    return lookup


def report(name: str, figures: dict) -> None:
    print(f"\n{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))


@pytest.mark.slow
def test_sigterm_under_load_answers_everything_sent_before_it_sqlite(tmp_path):
    env = dict(os.environ, INGEST_DATA=str(tmp_path / "data"))
    run = signal_under_load(DEV, tmp_path, env)
    report("dev.yaml (SQLite)", check(run, restarted_lookup(DEV, tmp_path, env)))


@pytest.mark.slow
def test_sigterm_under_load_answers_everything_sent_before_it_firestore(tmp_path, firestore):
    # FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT come from the fixture; prod.yaml requires a token
    env = dict(os.environ, INGEST_TOKEN=uuid.uuid4().hex)
    run = signal_under_load(PROD, tmp_path, env)
    report("prod.yaml (Firestore emulator)", check(run, restarted_lookup(PROD, tmp_path, env)))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["dev", "prod"])
def test_sigkill_under_load_loses_no_acknowledged_article(tmp_path, config, request):
    """No grace at all: requests in flight fail, but every article answered 2xx is in the store."""
    if config == "dev":
        path, env = DEV, dict(os.environ, INGEST_DATA=str(tmp_path / "data"))
    else:
        request.getfixturevalue("firestore")
        path, env = PROD, dict(os.environ, INGEST_TOKEN=uuid.uuid4().hex)
    run = signal_under_load(path, tmp_path, env, signal.SIGKILL)
    assert run["exit_code"] == -signal.SIGKILL
    acknowledged = {o.article_id: json.loads(o.body) for o in run["outcomes"] if o.status in (200, 201)}
    assert len(acknowledged) >= ANSWERS_BEFORE_SIGNAL
    missing = restarted_lookup(path, tmp_path, env)(acknowledged)
    assert missing == [], f"acknowledged but lost: {missing}"
    report(f"SIGKILL {config}", {"acknowledged": len(acknowledged), "missing_after_restart": len(missing),
                                  "failed_in_flight": sum(1 for o in run["outcomes"] if o.status is None)})


@pytest.mark.slow
def test_the_log_holds_no_value_of_the_environment(tmp_path):
    secrets = {"PIPEDINGEST_TEST_SECRET": f"secret-{uuid.uuid4().hex}",
               "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex,
               "DATABASE_URL": f"postgres://ingest:{uuid.uuid4().hex}@db.internal/articles"}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "INGEST_DATA": str(tmp_path / "data"), **secrets}
    daemon = Daemon(DEV, cwd=tmp_path, env=env)
    try:
        daemon.wait_ready()
        status, answer = daemon.get_json("/status")
        assert status == 200 and answer["ready"] and answer["components"]["ner.pool"]["children"] == 2
        daemon.terminate()
        assert daemon.wait(120) == 0
    finally:
        daemon.kill()
    output = daemon.output
    assert "NER pool up" in output and "stopped cleanly" in output
    leaked = {name: value for name, value in env.items() if value in output}
    assert not leaked, f"the log shows environment values: {sorted(leaked)}"
