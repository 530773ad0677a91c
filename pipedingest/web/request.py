"""The web request as a pipeline sees it, and the one way to answer it.

Twisted's request speaks bytes; pipelines written in YAML want ``str``, so the
method, path, query arguments and headers are decoded once here.  Answering
goes through :meth:`WebRequest.respond`, which does nothing if the request was
already answered (say, by the reaper) or its client went away: whoever answers
second must not crash.
"""
from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.server import Request

from pipedingest.web.body import BodyError, is_json_type, is_ndjson_type, parse_json, parse_ndjson, text

log = Logger()

JSON_TYPE = "application/json"


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
    """

    refused = False
    _received = 0

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
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

    def requestReceived(self, command, path, version):
        self._stop_read_timer()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        self._stop_read_timer()
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
        write_and_close(self.channel, status, error_body(status, message, **extra))


#: Seconds a connection answered early is kept half-open, what arrives discarded, before it is closed.
LINGER = 2.0


def write_and_close(channel, status: int, body: bytes) -> None:
    """A JSON response written straight to the connection, which then closes (no request object needed).

    The client may still be sending (the rest of a body too large or too slow); closing at once would reset
    the connection, and a reset can destroy the answer before the client reads it. So the connection is
    half-closed after the answer, what still arrives is discarded (``channel.discarding``), and it closes for
    good once the client closes or :data:`LINGER` seconds later.
    """
    reason = RESPONSES.get(status, b"Error")
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body)))
    channel.discarding = True
    transport = channel.transport
    transport.write(head + body)
    if hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
        channel.callLater(LINGER, transport.loseConnection)
    else:
        transport.loseConnection()
    log.info("answered {status} before the request was complete; closing the connection", status=status)


def error_body(status: int, message: str, **extra: Any) -> bytes:
    """The JSON every error response carries."""
    error = {"status": status, "message": message}
    error.update({key: value for key, value in extra.items() if value is not None})
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
        return self.respond(status, error_body(status, message, **extra), JSON_TYPE, headers)

    def __repr__(self) -> str:
        return f"<WebRequest {self.method} {self.path}>"
