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
from urllib.parse import unquote

from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

JSON_TYPE = "application/json"


class LimitedRequest(Request):
    """A request that stops buffering its body past the site's limit, and knows whether it was admitted.

    The limit is checked while the body arrives, so an oversized upload costs
    no memory; the site answers it with 413 once the body is complete.
    ``admitted`` records whether the site was accepting work when the request's
    first line arrived: a stopping site still serves requests that began before.
    """

    too_large = False
    _received = 0

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        self.admitted = getattr(getattr(channel, "site", None), "accepting", True)

    def _limit(self) -> int:
        return getattr(self.channel.site, "max_body_bytes", 2 * 1024 * 1024)

    def gotLength(self, length):
        if length is not None and length > self._limit():
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def error_body(status: int, message: str, **extra: Any) -> bytes:
    """The JSON every error response carries."""
    error = {"status": status, "message": message}
    error.update({key: value for key, value in extra.items() if value is not None})
    return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8")


class WebRequest:
    """A decoded view of one HTTP request, placed in the baton as ``request``."""

    def __init__(self, request: Request, path_params: Optional[dict] = None, route: str = ""):
        self.raw = request
        self.method = request.method.decode("ascii", "replace")
        self.path = unquote(request.path.decode("utf-8", "replace"))
        self.route = route
        self.path_params = path_params or {}
        self.args = {
            key.decode("utf-8", "replace"): [value.decode("utf-8", "replace") for value in values]
            for key, values in request.args.items()
        }
        self.headers = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        request.content.seek(0)
        self.body: bytes = request.content.read()
        self.json: Any = None
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

    def wants_json(self) -> bool:
        return self.content_type == JSON_TYPE or self.content_type.endswith("+json")

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
