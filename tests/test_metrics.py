"""GET /metrics: Prometheus text that counts what the daemon did, behind the site's tokens and host names.

A real ``twistd`` daemon on conf/dev.yaml (real children, real SQLite) is sent real articles; its metrics,
parsed with prometheus_client's own parser, must agree with what was sent. In-process daemons show that
each daemon has its own registry, that routes are counted by pattern, and the Redis streams' figures.
"""
import json
import os
import urllib.error
import urllib.request

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from pipedingest.article import count_words
from pipedingest.load import read_articles
from pipedingest.metrics import UNMATCHED, resident_bytes
from pipedingest.pending import PendingTable
from tests.conftest import DEV, config_errors, until, url
from tests.corpus import corpus_path
from tests.test_redis_streams import STREAMS
from tests.twistd_process import Daemon

TOKEN = "metrics-test-token"


def parse(text: str) -> dict:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def matching(samples: dict, name: str, **labels) -> list[float]:
    """The values of the samples *name* whose labels include *labels*."""
    wanted = set(labels.items())
    return [value for (sample, given), value in samples.items() if sample == name and wanted <= set(given)]


def one(samples: dict, name: str, **labels) -> float:
    found = matching(samples, name, **labels)
    assert len(found) == 1, f"{len(found)} samples {name} {labels}"
    return found[0]


# -- a real twistd daemon -------------------------------------------------------------------------------------

def http(daemon, method: str, path: str, body=None, token=TOKEN, host=None, accept=None):
    """One request with urllib: (status, headers, body bytes)."""
    headers = {"content-type": "application/json"} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if host:
        headers["host"] = host
    if accept:
        headers["accept"] = accept
    data = json.dumps(body).encode("utf-8") if body is not None else None
    request = urllib.request.Request(daemon.base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def scrape(daemon) -> dict:
    status, headers, body = http(daemon, "GET", "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body.decode("utf-8"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    env = dict(os.environ, INGEST_DATA=str(folder / "data"), INGEST_TOKEN=TOKEN)
    daemon = Daemon(DEV, f'web.main.tokens=["{TOKEN}"]', cwd=folder, env=env)
    try:
        daemon.wait_ready()
        yield daemon
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def corpus():
    return [a for a in read_articles(corpus_path(), 40) if a["body"].strip()]


def test_the_metrics_count_what_the_daemon_did(daemon, corpus):
    before = scrape(daemon)
    articles = corpus[:12]
    ids = []
    for article in articles:
        status, _, answer = http(daemon, "POST", "/articles", {"title": article.get("title", ""),
                                                               "body": article["body"]})
        assert status == 201, answer
        ids.append(json.loads(answer)["id"])
    again = {"title": articles[0].get("title", ""), "body": articles[0]["body"]}
    assert http(daemon, "POST", "/articles", again)[0] == 200
    assert http(daemon, "GET", f"/articles/{ids[0]}")[0] == 200
    status, _, listed = http(daemon, "GET", "/articles?limit=100")
    assert status == 200 and json.loads(listed)["count"] == len(articles)
    after = scrape(daemon)

    def grew(name, **labels):
        return sum(matching(after, name, **labels)) - sum(matching(before, name, **labels))

    requests = "pipedingest_http_requests_total"
    assert one(after, requests, site="main", route="/articles", method="POST", status="201") == len(articles)
    assert one(after, requests, site="main", route="/articles", method="POST", status="200") == 1
    assert one(after, requests, site="main", route="/articles/{id}", method="GET", status="200") == 1
    assert grew("pipedingest_http_request_duration_seconds_count", route="/articles", method="POST") == 13
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(article_id in str(route) for route in routes for article_id in ids), "raw paths as labels"

    # The article posted again is answered from the store: neither extracted nor written again.
    words = sum(count_words(a["body"]) for a in articles)
    assert grew("pipedingest_ner_words_extracted_total") == words
    assert grew("pipedingest_ner_articles_extracted_total") == 12
    assert grew("pipedingest_ner_extraction_seconds_count") == 12
    assert one(after, "pipedingest_ner_children") == 2
    memory = matching(after, "pipedingest_ner_child_resident_memory_bytes")
    assert len(memory) == 2 and all(rss > 20 * 2**20 for rss in memory), memory

    writes = "pipedingest_store_writes_total"
    assert one(after, writes, store="articles", outcome="created") == len(articles)
    assert one(after, writes, store="articles", outcome="existing") == 0
    assert one(after, "pipedingest_store_failures_total", store="articles") == 0
    assert one(after, "pipedingest_store_commit_seconds_count", store="articles") == 12

    assert one(after, "pipedingest_pending_entries", table="ner") == 0
    assert grew("pipedingest_pending_completed_total", table="ner") == 12
    assert one(after, "pipedingest_ready") == 1
    passed = matching(after, "pipedingest_status_test_passed")
    assert passed and all(value == 1 for value in passed)
    assert one(after, "pipedingest_service_running", service="ner.pool") == 1


def test_metrics_need_the_token_and_a_served_host(daemon):
    status, headers, body = http(daemon, "GET", "/metrics", token=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert b"pipedingest_" not in body
    assert http(daemon, "GET", "/metrics", token="wrong")[0] == 401
    status, _, body = http(daemon, "GET", "/metrics", host="metrics.example.com")
    assert status == 421 and b"pipedingest_" not in body
    status, headers, body = http(daemon, "GET", "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    after = scrape(daemon)
    refused = "pipedingest_http_requests_total"
    assert one(after, refused, route="/metrics", method="GET", status="401") == 2
    assert one(after, refused, route="/metrics", method="GET", status="421") == 1


# -- in-process daemons -------------------------------------------------------------------------------------

SITE = """\
web:
  site:
    port: 0
    metrics: true
    routing:
      things:
        "{id}":
          __config__: {processor: pipeline.thing}
pipelines:
  thing:
    - eval-lambda: {input_path: request.path_params.id, output_path: content, lambda: "id: dict(id=id)"}
    - write-web-response
"""


async def metrics_of(daemon) -> dict:
    response = await treq.get(url(daemon, "/metrics"))
    assert response.code == 200
    return parse((await response.content()).decode("utf-8"))


@pytest_twisted.ensureDeferred
async def test_each_daemon_counts_its_own_requests_by_route_pattern(daemons):
    first = await daemons(SITE, name="first.yaml")
    second = await daemons(SITE, name="second.yaml")
    for thing in ("a", "b", "c"):
        response = await treq.get(url(first, f"/things/{thing}"))
        assert response.code == 200
        await response.content()
    for path, method in (("/nowhere", "GET"), ("/things/a", "BREW")):
        response = await treq.request(method, url(first, path))
        await response.content()
    mine, theirs = await metrics_of(first), await metrics_of(second)
    requests = "pipedingest_http_requests_total"
    assert one(mine, requests, route="/things/{id}", method="GET", status="200") == 3
    assert one(mine, requests, route=UNMATCHED, method="GET", status="404") == 1
    assert one(mine, requests, route="/things/{id}", method="other", status="200") == 1
    assert matching(theirs, requests, route="/things/{id}") == []
    assert first.runtime.get("daemon.metrics").registry is not second.runtime.get("daemon.metrics").registry


@pytest_twisted.ensureDeferred
async def test_metrics_are_served_only_when_asked_for(daemons):
    daemon = await daemons(SITE.replace("    metrics: true\n", ""))
    response = await treq.get(url(daemon, "/metrics"))
    assert response.code == 404
    await response.content()
    assert "daemon.metrics" not in daemon.runtime.resources


@pytest_twisted.ensureDeferred
async def test_a_site_without_routes_serves_the_metrics_of_a_daemon_without_a_web_api(daemons):
    daemon = await daemons("web: {metrics: {port: 0, metrics: true, routing: {}}}\n")
    found = await metrics_of(daemon)
    assert one(found, "pipedingest_service_running", service="site.metrics") == 1
    response = await treq.get(url(daemon, "/articles"))
    assert response.code == 404
    await response.content()


def test_a_route_named_metrics_is_a_config_error_when_the_site_serves_them(tmp_path):
    errors = config_errors(tmp_path, SITE.replace("      things:", "      metrics:\n        __config__: "
                                                  "{processor: pipeline.thing}\n      things:"))
    assert [error.replace(f"{tmp_path}/", "") for error in errors] == [
        "conf.yaml:4:14: web site 'site' serves /metrics (metrics: true) and its routing defines it too — "
        "remove the 'metrics' route, or set metrics: false"]
    assert config_errors(tmp_path, SITE.replace("metrics: true", "metrics: often")) != []


@pytest_twisted.ensureDeferred
async def test_redis_streams_show_their_runs_and_figures(daemons, redis):
    daemon = await daemons(STREAMS.replace("    port: 0\n", "    port: 0\n    metrics: true\n"))
    consumer = daemon.runtime.get("redis.consumer.take_jobs")
    await until(lambda: consumer.state()["consumer"], what="the consumer reading")
    for message in ({"n": 1}, {"n": 2}, {"n": 3, "fail": True}):
        response = await treq.post(url(daemon, "/send"), json.dumps(message).encode(),
                                   headers={"content-type": "application/json"})
        assert response.code == 202
        await response.content()
    await until(lambda: daemon.runtime.get("context.dead") == [3], what="the failing job given up")
    await until(lambda: consumer.observed.get("dead_letters") == 1 and consumer.observed.get("pending") == 0,
                what="Redis showing the dead letter")
    found = await metrics_of(daemon)
    assert one(found, "pipedingest_redis_entries_done_total", stream="take_jobs") == 2
    assert one(found, "pipedingest_redis_entries_failed_total", stream="take_jobs") == 2
    assert one(found, "pipedingest_redis_entries_dead_lettered_total", stream="take_jobs") == 1
    assert one(found, "pipedingest_redis_stream_dead_letters", stream="take_jobs") == 1
    assert one(found, "pipedingest_redis_stream_pending", stream="take_jobs") == 0
    assert one(found, "pipedingest_redis_stream_length", stream="take_jobs") == consumer.observed["length"]


# -- units ----------------------------------------------------------------------------------------------------------

def test_a_pending_table_reports_its_entries_oldest_age_and_reaped():
    from twisted.internet.defer import Deferred

    clock = Clock()
    table = PendingTable("ner", clock, timeout=10, reap_interval=1)
    waiting = [table.track({}, Deferred()) for _ in range(2)]
    clock.advance(4)
    found = parse_families(table.metrics())
    assert one(found, "pipedingest_pending_entries", table="ner") == 2
    assert one(found, "pipedingest_pending_oldest_age_seconds", table="ner") == 4
    clock.advance(7)
    table.reap()
    for result in waiting:
        result.addErrback(lambda _: None)
    found = parse_families(table.metrics())
    assert one(found, "pipedingest_pending_entries", table="ner") == 0
    assert one(found, "pipedingest_pending_oldest_age_seconds", table="ner") == 0
    assert one(found, "pipedingest_pending_reaped_total", table="ner") == 2


def parse_families(families) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families for sample in family.samples}


def test_resident_memory_is_read_from_proc():
    assert resident_bytes(os.getpid()) > 2**20
    assert resident_bytes(2**22 + 1) is None  # above any pid the kernel hands out
