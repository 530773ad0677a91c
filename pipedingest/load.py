"""``ingest-load``: post a file of articles to a running daemon and report how it went.

Reads JSON Lines (one article object per line), CSV (columns ``title`` and
``body`` or ``text``; other columns ``id``, ``source``, ``url``, ``published``
are passed on), or a ZIP holding one such CSV.  Keeps N requests in flight
over persistent connections, shows a progress bar, writes failed articles
(with the reason) and, if asked, results; ends with a summary: articles,
words, words/s, errors, latency p50/p99.

It is only an HTTP client: of the daemon it imports only the article's definition
(``pipedingest.article``, which imports nothing else) and ``pipedingest.httpclient``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from pipedingest.article import INPUT_FIELDS
from pipedingest.httpclient import BytesProducer, read_body


def read_articles(path: str, limit: Optional[int] = None) -> list[dict]:
    """The articles in *path* (JSONL, CSV or a ZIP of one CSV), at most *limit*."""
    articles = []
    for article in _iter_articles(path):
        if limit is not None and len(articles) >= limit:
            break
        articles.append(article)
    return articles


def _iter_articles(path: str) -> Iterator[dict]:
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".csv"))
            with archive.open(name) as raw:
                yield from _csv_articles(io.TextIOWrapper(raw, encoding="utf-8"))
        return
    with open(path, encoding="utf-8", newline="") as stream:
        if path.endswith(".csv"):
            yield from _csv_articles(stream)
            return
        for number, line in enumerate(stream, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise SystemExit(f"{path}:{number}: not a JSON line: {exc}") from None


def _csv_articles(stream) -> Iterator[dict]:
    csv.field_size_limit(1 << 30)
    for row in csv.DictReader(stream):
        body = row.get("body") or row.get("text") or ""
        article = {key: row[key] for key in INPUT_FIELDS if row.get(key)}
        article["body"] = body
        yield article


@dataclass
class Summary:
    articles: int = 0
    ok: int = 0
    errors: int = 0
    words: int = 0
    seconds: float = 0.0
    latencies: list = field(default_factory=list)
    statuses: dict = field(default_factory=dict)

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]

    def as_dict(self) -> dict:
        return {
            "articles": self.articles, "ok": self.ok, "errors": self.errors, "words": self.words,
            "seconds": round(self.seconds, 3),
            "words_per_second": round(self.words / self.seconds, 1) if self.seconds else 0.0,
            "articles_per_second": round(self.articles / self.seconds, 2) if self.seconds else 0.0,
            "latency_p50_ms": round(self.percentile(0.50) * 1000, 1),
            "latency_p99_ms": round(self.percentile(0.99) * 1000, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }

    def render(self) -> str:
        d = self.as_dict()
        return (f"articles {d['articles']} (ok {d['ok']}, errors {d['errors']}), words {d['words']}, "
                f"{d['seconds']} s, {d['words_per_second']} words/s, {d['articles_per_second']} articles/s, "
                f"latency p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms, statuses {d['statuses']}")


class Loader:
    """Posts articles with a bounded number in flight; records every outcome."""

    def __init__(self, reactor, url: str, concurrency: int, timeout: float, results=None, failed=None,
                 progress=None, token: Optional[str] = None):
        self.reactor = reactor
        self.url = url.encode("utf-8")
        self.semaphore = DeferredSemaphore(concurrency)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = concurrency
        self.agent = Agent(reactor, pool=pool, connectTimeout=timeout)
        self.pool = pool
        self.timeout = timeout
        self.headers = {b"content-type": [b"application/json"]}
        if token:
            self.headers[b"authorization"] = [b"Bearer " + token.encode("utf-8")]
        self.results = results
        self.failed = failed
        self.progress = progress
        self.summary = Summary()

    async def run(self, articles: list[dict]) -> Summary:
        started = time.perf_counter()
        await gatherResults([self.semaphore.run(lambda a=a: ensureDeferred(self._post(a))) for a in articles])
        self.summary.seconds = time.perf_counter() - started
        await self.pool.closeCachedConnections()
        return self.summary

    async def _post(self, article: dict) -> None:
        body = json.dumps(article, ensure_ascii=False).encode("utf-8")
        headers = Headers(self.headers)
        started = time.perf_counter()
        status, content, reason = 0, b"", ""
        try:
            response = await self.agent.request(b"POST", self.url, headers, BytesProducer(body)).addTimeout(
                self.timeout, self.reactor)
            content = await read_body(response)
            status = response.code
        except Exception as exc:  # a refused connection or a timeout is one failed article, not a crash
            reason = f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - started
        self._record(article, status, content, reason, latency)

    def _record(self, article, status, content, reason, latency) -> None:
        summary = self.summary
        summary.articles += 1
        summary.latencies.append(latency)
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        result = None
        if 200 <= status < 300:
            try:
                result = json.loads(content)
            except ValueError:
                reason = "the answer is not JSON"
        if result is not None:
            summary.ok += 1
            summary.words += int(result.get("words", 0))
            if self.results:
                self.results.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            summary.errors += 1
            if not reason:
                reason = f"HTTP {status}: {content[:300].decode('utf-8', 'replace')}"
            if self.failed:
                self.failed.write(json.dumps({"reason": reason, "article": article}, ensure_ascii=False) + "\n")
        if self.progress:
            self.progress.update(1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ingest-load", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="articles: .jsonl, .csv (title, body|text) or a .zip of one CSV")
    parser.add_argument("--url", default="http://127.0.0.1:8080/articles", help="where to POST each article")
    parser.add_argument("-n", "--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--limit", type=int, help="post at most this many articles")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--token", default=os.environ.get("INGEST_TOKEN"),
                        help="bearer token for a site that requires one (default: $INGEST_TOKEN)")
    parser.add_argument("--results", help="write each result (JSON Lines) here")
    parser.add_argument("--failed", default="failed.jsonl", help="write failed articles and reasons here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    articles = read_articles(args.file, args.limit)

    async def run(reactor):
        from contextlib import ExitStack

        with ExitStack() as stack:
            results = stack.enter_context(open(args.results, "w", encoding="utf-8")) if args.results else None
            failed = stack.enter_context(open(args.failed, "w", encoding="utf-8"))
            progress = None
            if not args.no_progress:
                from tqdm import tqdm

                progress = stack.enter_context(tqdm(total=len(articles), unit="article", file=sys.stderr))
            loader = Loader(reactor, args.url, args.concurrency, args.timeout, results, failed, progress,
                            args.token)
            summary = await loader.run(articles)
        print(json.dumps(summary.as_dict()) if args.json else summary.render())
        if summary.errors:
            print(f"{summary.errors} failed articles written to {args.failed}", file=sys.stderr)
            raise SystemExit(1)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
