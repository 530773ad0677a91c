"""Generated hostile HTTP requests against a real daemon, and what must hold for every one of them.

Used by ``tests/test_http_fuzz.py`` (a few hundred requests, in CI) and ``bench/http_fuzz.py`` (``make fuzz``,
10,000 and more, printing the figures). The daemon is a real ``twistd ingest -c conf/dev.yaml`` process; each
request is written as raw bytes on its own connection, so that malformed framing can be sent too.

For every request: an answer arrives within :data:`ANSWER_WITHIN` seconds, its body is JSON, its status is below
500, and the daemon is still alive. Over the run: every article id in the store had been answered 2xx (for a
batch: that item's own status), so nothing is stored without a 2xx.
"""
from __future__ import annotations

import base64
import json
import socket
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

from pipedingest.article import INPUT_FIELDS

#: Seconds a request may wait for its answer before it counts as a hang.
ANSWER_WITHIN = 15.0
#: What the fuzzed daemon is started with: small read and idle timeouts, so that lying framing is answered fast.
OVERRIDES = ("web.main.read_timeout=1", "web.main.idle_timeout=5")

# Weighted by repetition: most requests go where the work is.
ROUTES = ["/articles"] * 8 + ["/articles/batch"] * 4 + ["/entities"] * 2 + [
    "/articles/x", "/", "/status", "/health", "/ready", "/_status/articles", "/nowhere", "/articles/batch/extra",
    "/sources/wire/entities", "/sources/%ff%fe/entities", "/entities/apple/timeline", "/entities/Apple%7CORG/timeline",
    "/entities/%ed%a0%80/timeline", "/entities/x/timeline/extra"]
#: The query arguments of the read routes (and n=, which no route of conf/dev.yaml takes: 400 naming it).
QUERY_NAMES = ["limit", "source", "n", "entity", "label", "since", "until", "cursor", "bucket"]
METHODS = ["POST"] * 10 + ["GET", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"]
CONTENT_TYPES = ["application/json"] * 6 + ["application/x-ndjson"] * 3 + [
    "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
    "application/vnd.api+json", "", "multipart/form-data"]


@dataclass
class Sent:
    """One generated request and what came back."""

    wire: bytes
    kind: str
    status: int = 0
    body: bytes = b""
    seconds: float = 0.0
    problem: str = ""  # hang, not-json, 5xx, no-answer


# -- what is sent --------------------------------------------------------------------------------------------

surrogates = st.characters(categories=["Cs"])
text_values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.one_of(st.characters(), surrogates), max_size=20),
    st.sampled_from(["Apple hired Tim Cook in California.", "Paris", " ", "", "\u2028", "\u0085", "a/b", "__x__",
                     "x" * 1600, "Oslo \ud800 Lima", "\ufeff"]),
)
#: Hostile values of query arguments: bytes, dates and limits at and past their edges, forged cursors.
query_values = st.one_of(
    st.binary(max_size=8).map(quote_from_bytes),
    st.sampled_from(["2017-02-07", "2017/2/7 9:30", "0000-00-00", "9999-12-31T23:59:59Z", "2017-02-30", "-1", "0",
                     "1001", "1e3", "ORG", "org", "PERSON%0A", "day", "week", "%00", "Apple%7CORG", "+", "%2B1"]),
    st.lists(st.one_of(st.text(max_size=30), st.integers(), st.none()), max_size=3).map(
        lambda position: base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")),
    st.sampled_from(["WyIyMDE3LTAyLTA3VDA5OjMwOjAwLjAwMDAwMFoiLCIuLiJd", "W10", "e30", "!!!", "x" * 3000]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text_values)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(text_values, inner, max_size=4)),
                           max_leaves=12)


@st.composite
def articles(draw):
    """An article-ish object: real fields, wrong types, odd text, unknown keys, odd ids."""
    article = {}
    for name in draw(st.lists(st.sampled_from(INPUT_FIELDS), unique=True, max_size=6)):
        article[name] = draw(st.one_of(text_values, json_values) if draw(st.booleans()) else text_values)
    if draw(st.integers(0, 4)) == 0:
        article[draw(text_values)] = draw(json_values)
    if draw(st.integers(0, 3)):
        article["body"] = draw(st.sampled_from(["Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
                                                "Google opened an office in Zurich.", "Rome."]))
        if draw(st.booleans()):
            article["body"] += " " + draw(st.text(max_size=30))
    return article


def as_json(value, draw) -> bytes:
    """JSON text as a careless or hostile client might send it."""
    encoded = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    data = encoded.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, 12))
    if cut == 0 and data:
        data = data[:draw(st.integers(0, len(data)))]  # truncated
    elif cut == 1:
        data = data.replace(b"e", b"\xe9", 1)  # a stray Latin-1 byte
    elif cut == 2:
        data = b"\xed\xa0\x80" + data  # CESU-8 for a surrogate
    return data


@st.composite
def bodies(draw, content_type: str) -> tuple[str, bytes]:
    shape = draw(st.sampled_from(["article"] * 6 + ["articles", "articles", "ndjson", "ndjson", "value", "deep",
                                                    "bytes", "empty", "huge"]))
    if shape == "article":
        return shape, as_json(draw(articles()), draw)
    if shape == "articles":
        return shape, as_json(draw(st.lists(articles(), max_size=6)), draw)
    if shape == "ndjson":
        lines = [as_json(draw(articles()), draw) for _ in range(draw(st.integers(1, 6)))]
        separator = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", "\u2028".encode()]))
        return shape, separator.join(lines)
    if shape == "value":
        return shape, as_json(draw(json_values), draw)
    if shape == "deep":
        depth = draw(st.sampled_from([31, 33, 200, 5000, 100_000]))
        return shape, b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    if shape == "bytes":
        return shape, draw(st.binary(max_size=200))
    if shape == "huge":
        return shape, b'{"body": "' + b"Oslo " * 500_000 + b'"}'
    return shape, b""


@st.composite
def well_formed(draw):
    """A correct article post (some must get through, to show that only the bad ones are refused)."""
    article = {"body": draw(st.sampled_from(["Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
                                             "Google opened an office in Zurich.", "Lima is in Peru."]))
                       + " " + draw(st.text(max_size=40))}
    for name in draw(st.lists(st.sampled_from(["id", "title", "source", "url", "published"]), unique=True)):
        article[name] = draw(st.text(min_size=1, max_size=20).filter(lambda text: "/" not in text))
    body = json.dumps(article, ensure_ascii=draw(st.booleans())).encode("utf-8")
    path = draw(st.sampled_from(["/articles", "/entities"]))
    wire = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    return f"POST {path} well-formed", wire


@st.composite
def requests(draw):
    """Raw bytes of one HTTP/1.1 request, and a word for its kind."""
    if draw(st.integers(0, 4)) == 0:
        return draw(well_formed())
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 3)) == 0:
        path += "?" + "&".join(f"{name}={draw(query_values)}"
                               for name in draw(st.lists(st.sampled_from(QUERY_NAMES), min_size=1, max_size=4)))
    oversize = draw(st.sampled_from([None] * 14 + ["line"] + [None] * 14 + ["header"]))  # 414, 431: past 16 KiB
    if oversize == "line":
        path += ("&" if "?" in path else "?") + "limit=" + "9" * 20_000
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    kind, body = draw(bodies(content_type))
    hosts = [b"localhost", b"localhost", b"127.0.0.1", b"[::1]:1", b"evil.example"]
    headers = [b"Host: " + draw(st.sampled_from(hosts))]
    if oversize == "header":
        headers.append(b"X-Padding: " + b"p" * 20_000)
    if content_type:
        headers.append(b"Content-Type: " + content_type.encode())
    framing = draw(st.sampled_from(["length"] * 10 + ["chunked", "chunked", "lie-short", "lie-long", "none",
                                                      "garbage"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif framing == "lie-short":
        headers.append(b"Content-Length: %d" % max(0, len(body) - 3))
    elif framing == "lie-long":
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.sampled_from([1, 10, 99999999999]))))
    elif framing == "garbage":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"-1", b"abc", b"1, 2", b""])))
    headers.append(b"Connection: close")
    line = method.encode() + b" " + path.encode() + b" HTTP/1.1"
    return f"{method} {path.split('?')[0]} {kind} {framing}{' ' + oversize if oversize else ''}", line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


# -- sending and judging ------------------------------------------------------------------------------------------

def send(port: int, wire: bytes, kind: str) -> Sent:
    sent = Sent(wire, kind)
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN)
    try:
        try:
            sock.sendall(wire)
        except OSError:
            pass  # the daemon may answer and close before all is sent (413): read what it said
        answer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except socket.timeout:
            sent.problem = "hang"
        except OSError:
            pass
    finally:
        sock.close()
    sent.seconds = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        sent.status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        sent.problem = sent.problem or "no-answer"
        return sent
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            body = body[:int(value)]
    sent.body = body
    if sent.status >= 500:
        sent.problem = "5xx"
    elif body and not wire.startswith(b"HEAD "):
        try:
            json.loads(body)
        except ValueError:
            sent.problem = "not-json"
    return sent


def acknowledged_ids(sent: Sent) -> set:
    """The article ids a 2xx answer says were stored (or already were)."""
    if not 200 <= sent.status < 300 or not sent.body:
        return set()
    try:
        answer = json.loads(sent.body)
    except ValueError:
        return set()
    if isinstance(answer, dict) and isinstance(answer.get("results"), list):
        return {item["id"] for item in answer["results"]
                if isinstance(item, dict) and 200 <= item.get("status", 0) < 300 and "id" in item}
    if isinstance(answer, dict) and isinstance(answer.get("id"), str) and "entities" in answer:
        return {answer["id"]}
    return set()


@dataclass
class Tally:
    """What a fuzz run saw."""

    sent: int = 0
    problems: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    acknowledged: set = field(default_factory=set)
    examples: dict = field(default_factory=dict)
    slowest: float = 0.0

    def add(self, sent: Sent) -> None:
        self.sent += 1
        self.statuses[sent.status] += 1
        self.slowest = max(self.slowest, sent.seconds)
        self.acknowledged |= acknowledged_ids(sent)
        if sent.problem:
            self.problems[sent.problem] += 1
            self.examples.setdefault(sent.problem, (sent.kind, sent.wire[:300], sent.status, sent.body[:300]))


def stored_ids(database_path) -> set:
    database = sqlite3.connect(database_path)
    try:
        return {row[0] for row in database.execute("SELECT id FROM articles")}
    finally:
        database.close()
