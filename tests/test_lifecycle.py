"""The daemon's life as a dependency graph: what needs what, start order, drain and stop order, cuts."""
import http.client
import json
import os

import pytest_twisted
import treq
from twisted.internet import defer, threads
from twisted.logger import formatEvent, globalLogPublisher

from pipedingest.config.loader import load_config
from pipedingest.graph import DRAINING, RUNNING, STARTING, STOPPED, STOPPING, WAITING
from pipedingest.service import build_daemon
from tests.conftest import DEV, ROOT, config_errors, until, url, write_config

STORE_SITE = """\
web:
  site:
    port: 0
    routing:
      parked:
        "{id}":
          __config__: {processor: pipeline.parked}
      articles:
        "{id}":
          __config__: {processor: pipeline.get}
contexts:
  parked: {}
stores:
  articles: {kind: sqlite, path: var/articles.sqlite}
  unused: {kind: sqlite, path: var/unused.sqlite}
daemon:
  shutdown_timeout: 30
pipelines:
  parked:                     # waits until the test releases it, then reads the store
    - fetch-context: {context: parked}
    - exec-code:
        namespace: {Deferred: twisted.internet.defer.Deferred}
        code: |
            waiting = Deferred()
            baton['parked'][baton['request'].path_params['id']] = waiting
            return waiting.addCallback(lambda _: baton)
    - fetch-article: {store: articles}
    - write-web-response
  get:
    - fetch-article: {store: articles}
    - write-web-response
"""
ARTICLE = {"id": "a1", "source": "wire", "body": "Oslo is in Norway.", "entities": [], "words": 4}


def raw_get(port: int, path: str):
    """``(status, headers, body)`` of a GET with the stdlib client, which shows every header as sent."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_the_graph_of_conf_dev_yaml():
    daemon = build_daemon(load_config(DEV, ["web.main.port=0"]))
    graph = daemon.graph
    assert graph.nodes["site.main"].needs == ["ner.pool", "pending.ner", "store.articles", "store.statustests"]
    assert all(not graph.nodes[name].needs for name in graph.nodes if name != "site.main")
    assert graph.start_steps() == [["ner.pool", "pending.ner", "store.articles", "store.statustests"],
                                   ["site.main"]]
    assert graph.stop_steps() == [["site.main"], ["ner.pool", "pending.ner", "store.articles", "store.statustests"]]


def test_docs_architecture_draws_the_graph_of_conf_dev_yaml():
    daemon = build_daemon(load_config(DEV, ["web.main.port=0"]))
    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as stream:
        doc = stream.read()
    assert daemon.graph.describe() in doc, "docs/architecture.md no longer shows what --check prints"


def test_needs_pass_through_pipelines_contexts_and_fallbacks(tmp_path):
    daemon = build_daemon(load_config(write_config(tmp_path, STORE_SITE + """\
  fallback:
    - fetch-article: {store: unused}
    - write-web-response
pending:
  slow: {fallback: pipeline.fallback}
ticks:
  interval:
    sweep: {interval: 5, processor: pipeline.get}
""")))
    graph = daemon.graph
    assert graph.nodes["site.site"].needs == ["store.articles"]
    assert graph.nodes["pending.slow"].needs == ["store.unused"]
    assert graph.nodes["tick.sweep"].needs == ["store.articles"]
    assert graph.nodes["tick.sweep"].stage == "tick"
    assert graph.start_steps() == [["store.articles", "store.unused"], ["pending.slow"], ["site.site"],
                                   ["tick.sweep"]]
    assert graph.stop_steps() == [["site.site"], ["pending.slow", "tick.sweep"], ["store.articles", "store.unused"]]


def test_a_dependency_cycle_is_a_config_error_at_the_reference_that_closes_it(tmp_path):
    errors = config_errors(tmp_path, """\
plugins:
  bundles:
    demo: [bundle_demo]
pending:
  work:
    fallback: pipeline.answer
pipelines:
  answer:
    - hold: {pending: work}
    - write-web-response
  ping:
    - run-pipeline: {pipeline: .pong}
  pong:
    - run-pipeline: {pipeline: .ping}
""")
    assert [error.replace(f"{tmp_path}/", "") for error in errors] == [
        "conf.yaml:6:15: dependency cycle: pipeline.answer → pending.work → pipeline.answer — a resource cannot "
        "need itself, directly or through others",
        "conf.yaml:14:32: dependency cycle: pipeline.ping → pipeline.pong → pipeline.ping — a resource cannot "
        "need itself, directly or through others",
    ]


def test_a_missing_dependency_is_a_config_error_with_its_line(tmp_path):
    errors = config_errors(tmp_path, """\
web:
  site:
    port: 0
    routing:
      x:
        __config__: {processor: pipeline.extract}
pipelines:
  extract:
    - extract-entities
    - store-article: {store: nowhere}
""")
    assert [error.replace(f"{tmp_path}/", "") for error in errors] == [
        "conf.yaml:9:7: unknown NER pool 'ner.pool'",
        "conf.yaml:10:30: unknown store 'store.nowhere'",
    ]


@pytest_twisted.ensureDeferred
async def test_a_slow_starting_store_delays_listening(daemons):
    gate = defer.Deferred()

    def slow_store(daemon):
        store = daemon.runtime.get("store.articles")
        start = store.startService
        store.startService = lambda: start().addCallback(lambda _: gate)

    daemon = await daemons(STORE_SITE, wait=False, prepare=slow_store)
    nodes = daemon.graph.nodes
    await until(lambda: nodes["store.unused"].state == RUNNING, what="the other store started")
    assert nodes["store.articles"].state == STARTING
    assert nodes["site.site"].state == WAITING and daemon.sites["site"].listening is None
    assert daemon.status.as_json()["services"]["store.articles"]["state"] == STARTING
    gate.callback(None)
    await daemon.started
    assert nodes["site.site"].state == RUNNING
    response = await treq.get(url(daemon, "/articles/nope"))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_the_site_drains_first_while_a_slow_store_still_serves_it(daemons):
    release = defer.Deferred()
    order = []

    def slow_flush(daemon):
        store = daemon.runtime.get("store.articles")
        stop = store.stopService

        def stopping():
            order.append(("store.articles stops", daemon.graph.nodes["site.site"].state))
            return release.addCallback(lambda _: stop())

        store.stopService = stopping

    daemon = await daemons(STORE_SITE, prepare=slow_flush)
    try:
        await drain_while_the_store_serves(daemon, release, order)
    finally:
        if not release.called:
            release.callback(None)


async def drain_while_the_store_serves(daemon, release, order):
    await daemon.runtime.get("store.articles").put(ARTICLE)
    parked = daemon.runtime.get("context.parked")
    accepted = treq.get(url(daemon, "/parked/a1"))
    await until(lambda: "a1" in parked, what="the request parked")

    stopped = daemon.stopService()
    nodes = daemon.graph.nodes
    await until(lambda: not daemon.sites["site"].site.accepting, what="the site stopped accepting")
    assert nodes["site.site"].state == DRAINING and nodes["store.articles"].state == RUNNING
    status, headers, body = await threads.deferToThread(raw_get, daemon.sites["site"].port, "/articles/a1")
    assert status == 503 and headers["retry-after"] == "5" and headers["connection"] == "close"
    assert json.loads(body)["error"]["message"] == "the daemon is shutting down"
    assert daemon.status.as_json()["services"]["site.site"]["state"] == DRAINING

    parked["a1"].callback(None)
    answer = await accepted
    assert answer.code == 200 and json.loads(await answer.content())["id"] == "a1"
    await until(lambda: order, what="the store asked to stop")
    assert order == [("store.articles stops", STOPPED)]
    assert nodes["store.articles"].state == STOPPING
    release.callback(None)
    assert await stopped is True
    assert nodes["store.articles"].state == STOPPED and nodes["store.unused"].state == STOPPED


@pytest_twisted.ensureDeferred
async def test_shutdown_timeout_answers_what_is_open_with_503_and_names_it(daemons, tmp_path):
    from twisted.internet import task

    clock = task.Clock()
    daemon = await daemons(STORE_SITE, clock=clock)
    logged = []
    observer = logged.append
    globalLogPublisher.addObserver(observer)
    try:
        parked = daemon.runtime.get("context.parked")
        stuck = treq.get(url(daemon, "/parked/a1"))
        await until(lambda: "a1" in parked, what="the request parked")
        stopped = daemon.stopService()
        await until(lambda: daemon.graph.nodes["site.site"].state == DRAINING, what="draining")
        clock.advance(29)
        assert not stopped.called
        clock.advance(1)
        assert await stopped is False
        answer = await stuck
        assert answer.code == 503
        assert json.loads(await answer.content())["error"]["message"] == \
            "the daemon stopped before this request was finished"
        nodes = daemon.graph.nodes.values()
        await until(lambda: all(node.state == STOPPED for node in nodes), what="the rest stopped after the cut")
    finally:
        globalLogPublisher.removeObserver(observer)
    texts = [formatEvent(event) for event in logged]
    assert any("site.site still had 1 requests open after 30s; answered 503: GET /parked/a1 from 127.0.0.1"
               in text for text in texts), texts
