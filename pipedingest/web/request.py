"""The web request as a pipeline sees it, and the one way to answer it.

Twisted's request speaks bytes; pipelines written in YAML want ``str``, so the
method, path, query arguments and headers are decoded once here.  Answering
goes through :meth:`WebRequest.respond`, which does nothing if the request was
already answered (say, by the reaper) or its client went away: whoever answers
second must not crash.

**Request ids.**  Every request has an id, to find all that was logged about it
and to quote in a bug report: the ``X-Request-Id`` it came with when that one is
sane (see :func:`request_id_from`: a proxy or a client may have given it, and the
same id then follows the request through both logs), otherwise a new one (32
hex digits, random).  It is sent back in the ``X-Request-Id`` header of every
response, written in every JSON error body (``"request_id"``) and every
access-log line, and carried by :class:`WebRequest` (``request.request_id``) into
the log lines about the request.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.web.http import RESPONSES
from twisted.web.server import Request

from pipedingest.web import accesslog
from pipedingest.web.body import BodyError, is_json_type, is_ndjson_type, parse_json, parse_ndjson, text

JSON_TYPE = "application/json"
REQUEST_ID_HEADER = b"x-request-id"
#: What an incoming X-Request-Id must be to be kept: 1 to 128 letters, digits, and ``. _ : -`` (a UUID, a
#: hex or ULID id, ``front-1:42``); anything else (spaces, quotes, control characters) is never echoed or logged.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(values: Optional[list]) -> str:
    """The id for a request whose ``X-Request-Id`` headers are *values*: the one given if sane, else a new one.

    Several ``X-Request-Id`` headers are not sane: which one would the caller be looking for?
    """
    if values and len(values) == 1:
        given = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        if SANE_REQUEST_ID.fullmatch(given):
            return given
    return new_request_id()


class LimitedRequest(Request):
    """A request that is refused as soon as it breaks the site's limits, and knows whether it was admitted.

    * A ``Content-Length`` over the site's ``max_body_bytes``, or a chunked body
      growing past it, is answered 413 at once and the connection closed: the rest
      is never read or buffered.
    * A request not wholly received (headers and body) within the site's
      ``read_timeout`` of its first line is answered 408 and closed, so a client
      sending a byte a second holds nothing for long.
    * ``admitted`` records whether the site was accepting work when the request's
      first line arrived: a stopping site still serves requests that began before.

    Whatever answers it, it is in the access log once (:mod:`pipedingest.web.accesslog`), and its
    :attr:`request_id` goes out in the ``X-Request-Id`` header.
    """

    refused = False
    #: True once the whole request (headers and body) has arrived.
    received = False
    _received = 0
    _request_id: Optional[str] = None

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        self._site = site
        self._clock = getattr(site, "reactor", None)
        #: When its first line arrived (the site's clock), for the access log's duration.
        self.arrived = self._clock.seconds() if self._clock is not None else None
        self.admitted = getattr(site, "accepting", True)
        self._read_timeout = getattr(site, "read_timeout", None)
        self._read_timer = channel.callLater(self._read_timeout, self._too_slow) if self._read_timeout else None

    def _limit(self) -> int:
        return getattr(self.channel.site, "max_body_bytes", 2 * 1024 * 1024)

    def gotLength(self, length):
        if length is not None and length > self._limit():
            self.refuse_early(413, "request body too large", limit_bytes=self._limit())
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.refuse_early(413, "request body too large", limit_bytes=self._limit())
            return
        super().handleContentChunk(data)

    @property
    def request_id(self) -> str:
        """This request's id (see the module's docstring), fixed the first time it is asked for."""
        if self._request_id is None:
            self._request_id = request_id_from(self.requestHeaders.getRawHeaders(REQUEST_ID_HEADER))
        return self._request_id

    def requestReceived(self, command, path, version):
        self._stop_read_timer()
        self.received = True
        super().requestReceived(command, path, version)

    def process(self):
        self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        super().process()

    def connectionLost(self, reason):
        self._stop_read_timer()
        if not (self.finished or self.refused):
            self.log_response(accesslog.CLIENT_CLOSED, 0)  # nothing was answered: the client went away first
        super().connectionLost(reason)

    def _stop_read_timer(self):
        if self._read_timer is not None and self._read_timer.active():
            self._read_timer.cancel()
        self._read_timer = None

    def _too_slow(self):
        self._read_timer = None
        requests = getattr(self.channel, "requests", [])
        if requests and requests[0] is not self:
            # Pipelined behind a request still being answered: the channel is not reading; wait for our turn.
            self._read_timer = self.channel.callLater(self._read_timeout, self._too_slow)
            return
        self.refuse_early(408, f"the request was not received within {self._read_timeout:g}s",
                          timeout_seconds=self._read_timeout)

    def refuse_early(self, status: int, message: str, **extra) -> None:
        """Answer before the request is complete, then close the connection: nothing more of it is read."""
        if self.refused:
            return
        self.refused = True
        self._stop_read_timer()
        if self.content is not None:
            self.content.seek(0)
            self.content.truncate()
        body = error_body(status, message, request_id=self.request_id, **extra)
        write_and_close(self.channel, status, body, self.request_id)
        self.log_response(status, len(body))

    def request_line(self) -> tuple[str, str, str]:
        """Method, target and protocol, as far as they arrived (``-`` for what did not)."""
        if self.received:
            parts = (self.method, self.uri, self.clientproto)
        else:  # refused while arriving: the channel holds the parsed first line until the request is whole
            channel = self.channel
            parts = tuple(getattr(channel, name, None) for name in ("_command", "_path", "_version"))
        return tuple(part.decode("latin-1") if isinstance(part, bytes) else "-" for part in parts)

    def log_response(self, status: int, length: int) -> None:
        """This request's access-log line: answered *status* with *length* bytes of body."""
        now = self._clock.seconds() if self._clock is not None else None
        accesslog.log_response(
            self.request_id, getattr(self.getClientAddress(), "host", None), *self.request_line(), status, length,
            site=getattr(getattr(self._site, "pipeline_resource", None), "name", None),
            referer=self._first_header(b"referer"), user_agent=self._first_header(b"user-agent"), when=now,
            duration=None if now is None or self.arrived is None else now - self.arrived)

    def _first_header(self, name: bytes) -> str:
        values = self.requestHeaders.getRawHeaders(name)
        return values[0].decode("latin-1") if values else ""


#: Seconds a connection answered early is kept half-open, what arrives discarded, before it is closed.
LINGER = 2.0


#: Reasons Twisted's RESPONSES lacks (RFC 6585).
_MORE_REASONS = {431: b"Request Header Fields Too Large"}


def write_and_close(channel, status: int, body: bytes, request_id: str) -> None:
    """A JSON response written straight to the connection, which then closes (no request object needed).

    The client may still be sending (the rest of a body too large or too slow); closing at once would reset
    the connection, and a reset can destroy the answer before the client reads it. So the connection is
    half-closed after the answer, what still arrives is discarded (``channel.discarding``), and it closes for
    good once the client closes or :data:`LINGER` seconds later.
    """
    reason = RESPONSES.get(status) or _MORE_REASONS.get(status, b"Error")
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body), request_id.encode("ascii")))
    channel.discarding = True
    transport = channel.transport
    transport.write(head + body)
    if hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
        channel.callLater(LINGER, transport.loseConnection)
    else:
        transport.loseConnection()


def error_body(status: int, message: str, request_id: Optional[str] = None, **extra: Any) -> bytes:
    """The JSON every error response carries: ``{"error": {"status", "message", ..., "request_id"}}``."""
    error = {"status": status, "message": message}
    error.update({key: value for key, value in extra.items() if value is not None})
    if request_id is not None:
        error["request_id"] = request_id
    return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8")


def path_segments(request: Request) -> list[str]:
    """The request's path segments (percent-decoded) as text; :class:`BodyError` (400) if one is not UTF-8."""
    segments = [text(segment, "the request path") for segment in request.postpath]
    if segments and segments[-1] == "":
        segments.pop()
    return segments


class WebRequest:
    """A decoded view of one HTTP request, placed in the baton as ``request``.

    Building it checks that the path and the query are UTF-8 (a :class:`BodyError`
    otherwise); :meth:`read_body` then parses a JSON or NDJSON body, by its content
    type, through :mod:`pipedingest.web.body`.
    """

    def __init__(self, request: Request, path_params: Optional[dict] = None, route: str = ""):
        self.raw = request
        #: The request's id (``X-Request-Id``): for the log lines about it.
        self.request_id: str = getattr(request, "request_id", None) or new_request_id()
        self.method = request.method.decode("ascii", "replace")
        self.path = text(unquote_to_bytes(request.path), "the request path")
        self.route = route
        self.path_params = path_params or {}
        self.args = {
            text(key, "the query"): [text(value, "the query") for value in values]
            for key, values in request.args.items()
        }
        self.headers = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        request.content.seek(0)
        self.body: bytes = request.content.read()
        #: The parsed body, when it was sent as JSON (see :meth:`read_body`).
        self.json: Any = None
        #: The parsed lines (each a value or a :class:`BodyError`), when the body was sent as NDJSON.
        self.ndjson: Optional[list] = None
        self.client = getattr(request.getClientAddress(), "host", None)
        #: Set once the response is finished or the client has gone away.
        self.ended = False
        #: True when the client went away before its answer was finished.
        self.disconnected = False
        self._waiters: list[Deferred] = []
        request.notifyFinish().addBoth(self._end)

    def _end(self, outcome) -> None:
        self.ended = True
        self.disconnected = outcome is not None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.disconnected)

    def when_ended(self) -> Deferred:
        """Fires when the request is over: with True if its client went away, False if it was answered."""
        if self.ended:
            return succeed(self.disconnected)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def read_body(self, accepts: Optional[frozenset] = None) -> None:
        """Parse the body by its content type; :class:`BodyError` if unusable, or (415) of a type not in *accepts*."""
        if not self.body:
            return
        content_type = self.content_type
        if accepts is not None and content_type not in accepts:
            given = content_type or "an untyped body"
            raise BodyError(415, f"this route takes {', '.join(sorted(accepts))}, not {given}")
        if is_json_type(content_type):
            self.json = parse_json(self.body)
        elif is_ndjson_type(content_type):
            self.ndjson = parse_ndjson(self.body)

    @property
    def finished(self) -> bool:
        """Answered, or its client went away: nothing more can be written."""
        return bool(self.raw.finished or self.ended)

    def respond(self, status: int, body: bytes, content_type: str = JSON_TYPE,
                headers: Optional[dict] = None) -> bool:
        """Answer the request; False (and nothing written) when it is already answered or gone."""
        if self.finished:
            return False
        raw = self.raw
        raw.setResponseCode(status)
        raw.setHeader(b"content-type", content_type.encode("latin-1"))
        for name, value in (headers or {}).items():
            raw.setHeader(name.encode("latin-1"), str(value).encode("latin-1"))
        raw.setHeader(b"content-length", str(len(body)).encode("ascii"))
        raw.write(body)
        raw.finish()
        return True

    def respond_json(self, status: int, content: Any, headers: Optional[dict] = None) -> bool:
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self.respond(status, body, JSON_TYPE, headers)

    def respond_error(self, status: int, message: str, headers: Optional[dict] = None, **extra: Any) -> bool:
        return self.respond(status, error_body(status, message, request_id=self.request_id, **extra), JSON_TYPE,
                            headers)

    def __repr__(self) -> str:
        return f"<WebRequest {self.method} {self.path} {self.request_id}>"
