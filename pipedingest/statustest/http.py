"""A small HTTP client for status tests: real requests over loopback to the daemon's own site."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.internet.defer import succeed
from zope.interface import implementer


@implementer(IBodyProducer)
class _Bytes:
    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


class _Collect(Protocol):
    """Gathers a response body (readBody warns about transports without abortConnection)."""

    def __init__(self, done: Deferred):
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response) -> Deferred:
    done: Deferred = Deferred()
    response.deliverBody(_Collect(done))
    return done


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StatusClient:
    """Talks to one base URL; keeps no connections open between tests."""

    def __init__(self, reactor, base_url: str):
        self.base_url = base_url.rstrip("/")
        pool = HTTPConnectionPool(reactor, persistent=False)
        pool._factory.noisy = False  # one log line per test connection is noise
        self.agent = Agent(reactor, pool=pool)

    @inlineCallbacks
    def request(self, method: str, path: str, query: Optional[dict] = None, json_body: Any = None,
                body: Optional[bytes] = None, headers: Optional[dict] = None):
        url = self.base_url + path
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query, doseq=True)
        sent = Headers({k.encode(): [str(v).encode()] for k, v in (headers or {}).items()})
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            if not sent.hasHeader(b"content-type"):
                sent.setRawHeaders(b"content-type", [b"application/json"])
        producer = _Bytes(body) if body is not None else None
        response = yield self.agent.request(method.encode("ascii"), url.encode("utf-8"), sent, producer)
        content = yield read_body(response)
        received = {k.decode().lower(): b", ".join(v).decode("latin-1")
                    for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, received, content)
