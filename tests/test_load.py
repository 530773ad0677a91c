"""``ingest-load`` against a real daemon over HTTP (a light pipeline: the loader is what is tested here)."""
import json
import os
import sys

import pytest_twisted
from twisted.internet import utils

from pipedingest.load import read_articles
from tests.conftest import url

LOADER = os.path.join(os.path.dirname(sys.executable), "ingest-load")

COUNTING = """\
web:
  site:
    port: 0
    routing:
      articles:
        __config__: {processor: pipeline.count, methods: [POST]}
pipelines:
  count:
    - validate-article
    - eval-lambda:
        input_path: article
        output_path: result
        lambda: "a: dict(id=a['id'], words=len(a['body'].split())) if a['body'] != 'fail me' else 1 / 0"
    - write-web-response: {input_path: result}
"""


def test_read_articles_from_jsonl_and_csv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "one"}\n\n{"body": "two", "id": "x"}\n')
    (tmp_path / "a.csv").write_text('title,text,extra\nT1,"Body, one",z\nT2,Body two,z\n')
    assert read_articles(str(tmp_path / "a.jsonl")) == [{"body": "one"}, {"body": "two", "id": "x"}]
    assert read_articles(str(tmp_path / "a.csv"), limit=1) == [{"title": "T1", "body": "Body, one"}]


@pytest_twisted.ensureDeferred
async def test_the_loader_posts_everything_and_reports(daemons, tmp_path):
    daemon = await daemons(COUNTING)
    articles = [{"id": f"a{i}", "body": "word " * (i + 1)} for i in range(20)] + [{"id": "bad", "body": "fail me"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(a) + "\n" for a in articles))
    failed, results = tmp_path / "failed.jsonl", tmp_path / "results.jsonl"
    out, err, code = await utils.getProcessOutputAndValue(LOADER, [
        str(source), "--url", url(daemon, "/articles"), "-n", "4", "--json", "--no-progress",
        "--failed", str(failed), "--results", str(results)], env=dict(os.environ))
    assert code == 1, err  # some articles failed
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert (summary["articles"], summary["ok"], summary["errors"]) == (21, 20, 1)
    assert summary["words"] == sum(range(1, 21))
    assert summary["statuses"] == {"200": 20, "500": 1}
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    (failure,) = [json.loads(line) for line in failed.read_text().splitlines()]
    assert failure["article"]["id"] == "bad" and failure["reason"].startswith("HTTP 500")
    stored = sorted(json.loads(line)["id"] for line in results.read_text().splitlines())
    assert stored == sorted(f"a{i}" for i in range(20))


@pytest_twisted.ensureDeferred
async def test_an_unreachable_daemon_is_a_failed_article_not_a_crash(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"body": "x"}\n')
    out, err, code = await utils.getProcessOutputAndValue(LOADER, [
        str(source), "--url", "http://127.0.0.1:9/articles", "--json", "--no-progress", "--timeout", "5",
        "--failed", str(tmp_path / "f.jsonl")], env=dict(os.environ))
    assert code == 1
    assert json.loads(out.decode().strip().splitlines()[-1])["errors"] == 1
    assert "ConnectionRefusedError" in (tmp_path / "f.jsonl").read_text()
