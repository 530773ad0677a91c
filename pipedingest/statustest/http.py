"""A small HTTP client for status tests: real requests over loopback to the daemon's own site."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlencode

from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from pipedingest.httpclient import BytesProducer, read_body
from pipedingest.web.endpoint import unix_path


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StatusClient:
    """Talks to one base URL over a persistent connection, closed by :meth:`close` after the tests."""

    def __init__(self, reactor, base_url: str, headers: Optional[dict] = None, agent=None):
        """*agent* (``SiteService.client_agent``): makes the client that reaches the site where it listens (a
        UNIX socket, TLS trusting its certificate); default: plain HTTP."""
        # Over a UNIX socket the URL's host only names the site: the socket is the agent's.
        self.base_url = "http://localhost" if unix_path(base_url) is not None else base_url.rstrip("/")
        #: Sent with every request unless the test gives its own (the site's token, when it requires one).
        self.headers = dict(headers or {})
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = (agent or (lambda r, pool: Agent(r, pool=pool)))(reactor, self.pool)

    def close(self):
        """Close the connections kept between tests; a Deferred."""
        return self.pool.closeCachedConnections()

    @inlineCallbacks
    def request(self, method: str, path: str, query: Optional[dict] = None, json_body: Any = None,
                body: Optional[bytes] = None, headers: Optional[dict] = None):
        url = self.base_url + path
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query, doseq=True)
        sent = Headers({k.encode(): [str(v).encode()] for k, v in {**self.headers, **(headers or {})}.items()})
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            if not sent.hasHeader(b"content-type"):
                sent.setRawHeaders(b"content-type", [b"application/json"])
        producer = BytesProducer(body) if body is not None else None
        response = yield self.agent.request(method.encode("ascii"), url.encode("utf-8"), sent, producer)
        content = yield read_body(response)
        received = {k.decode().lower(): b", ".join(v).decode("latin-1")
                    for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, received, content)
