"""Sites: routing HTTP requests to pipelines, always answering them, and draining on stop.

:class:`PipelineResource` is the one place where a request becomes a baton,
where the pipeline's outcome becomes a response, and where every failure
becomes a JSON error.  Whatever happens, the request is finished:

* the pipeline answered → done;
* the pipeline failed → 4xx/5xx JSON (a 500 carries an error id that is also in
  the log, with the traceback);
* the client went away → the pipeline's Deferred is cancelled, so work only
  that client waited for stops;
* nobody answered by the request's deadline → 504 JSON (the site's backstop).

Each accepted request is an :class:`Exchange`: its request, its pipeline run and
its :class:`~pipedingest.deadline.Deadline` (``response_timeout`` from its
arrival; the baton carries it as ``deadline``).  The exchange is over when the
request is finished *and* the pipeline has settled; then its one timer, the
backstop, is cancelled.  A request answered synchronously never gets a timer.

**Stopping** (:class:`SiteService`): one reactor turn after the stop begins (so
that requests whose bytes had already arrived are read and accepted), the site
stops accepting: a request that starts arriving later gets 503 with
``Retry-After`` and ``Connection: close``.  The port stays open while the site
drains, so those 503s are answered (and access-logged) rather than refused.  Once
every accepted exchange is over, the port closes and idle connections are closed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pipedingest.deadline import Deadline
from pipedingest.graph import SITE
from pipedingest.idle import WhenIdle
from pipedingest.metrics import UNMATCHED, RequestMetrics, gauge
from pipedingest.web.access import OPEN_ENDPOINTS, Access
from pipedingest.web.body import BodyError
from pipedingest.web.endpoint import Listener
from pipedingest.web.errors import describe_failure
from pipedingest.web.accesslog import log_response
from pipedingest.web.request import (JSON_TYPE, LimitedRequest, WebRequest, error_body, new_request_id, path_segments,
                                     write_and_close)

log = Logger()

#: Seconds after a request's deadline before the site answers it 504 itself: whoever
#: waits on its work (the NER pool, a pending table's reaper) answers at the deadline.
BACKSTOP_GRACE = 1.0
#: What a 503 sent while stopping asks the client to wait, in seconds.
RETRY_AFTER_STOPPING = 5


@dataclass
class Route:
    """A pipeline that answers some methods (and, with a body, some content types) at one routing node."""

    pipeline: object  # a Reference to a Pipeline
    methods: Optional[frozenset] = None  # None: any method
    pattern: str = "/"
    accepts: Optional[frozenset] = None  # None: a body of any content type
    query: Optional[frozenset] = frozenset()  # the query parameters it takes (400 naming others); None: any


    def unknown_query(self, args: dict) -> list[str]:
        """The names in a request's query that this route does not take, sorted (none when it takes any)."""
        if self.query is None:
            return []
        names = {name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in args}
        return sorted(names - self.query)


@dataclass
class RouteNode:
    """One path segment of the routing tree."""

    children: dict = field(default_factory=dict)
    param: Optional[tuple] = None  # (name, RouteNode) for a ``{name}`` segment
    routes: list = field(default_factory=list)

    def match(self, segments: list[str]) -> tuple[Optional["RouteNode"], dict]:
        node, params = self, {}
        for segment in segments:
            child = node.children.get(segment)
            if child is None and node.param is not None:
                name, child = node.param
                params[name] = segment
            if child is None:
                return None, {}
            node = child
        return node, params

    def allowed(self) -> list[str]:
        methods = set()
        for route in self.routes:
            methods |= set(route.methods or ())
        return sorted(methods)


class Exchange:
    """One accepted request: over once it is finished and its pipeline has settled."""

    __slots__ = ("request", "route", "deadline", "running", "answered", "settled", "backstop")

    def __init__(self, request: WebRequest, route: Route, deadline: Deadline):
        self.request = request
        self.route = route
        self.deadline = deadline
        self.running: Optional[Deferred] = None
        self.answered = False
        self.settled = False
        self.backstop = None

    @property
    def over(self) -> bool:
        return self.answered and self.settled

    def describe(self) -> str:
        request = self.request
        return (f"{request.method} {request.path} from {request.client} (route {self.route.pattern}, "
                f"request {request.request_id})")


class TrackedChannel(HTTPChannel):
    """An HTTP connection its site knows of (a stopping site closes the idle ones), answering errors in JSON.

    Once a request on it has been refused before it was complete (``LimitedRequest.refuse_early``), the
    connection only closes: nothing more it receives is parsed.  Twisted's limits on what arrives before a
    request is complete are answered here, in JSON, where Twisted would close the connection or answer a bare
    400: a request line longer than 16 KiB gets 414; header lines over 16 KiB in all (or one longer than that),
    or more than 500 of them, get 431.
    """

    discarding = False

    def connectionMade(self):
        super().connectionMade()
        self.site.channels.add(self)

    def connectionLost(self, reason):
        self.site.channels.discard(self)
        super().connectionLost(reason)

    def rawDataReceived(self, data):
        if not self.discarding:
            super().rawDataReceived(data)

    def lineReceived(self, line):
        if self.discarding:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:  # Twisted's check, answered here
            self._too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        # LineReceiver: a line longer than MAX_LENGTH (16 KiB) before its end arrived. Twisted only closes.
        if not self.discarding:
            self._too_large()

    def _too_large(self) -> None:
        """431 when the headers are too large, 414 when the request line is (a request line that does not fit)."""
        if self._arriving() is not None:
            self._refuse(431, f"the request's header lines exceed {self.totalHeadersSize} bytes",
                         limit_bytes=self.totalHeadersSize)
        else:
            self._refuse(414, f"the request line exceeds {min(self.MAX_LENGTH, self.totalHeadersSize)} bytes",
                         limit_bytes=min(self.MAX_LENGTH, self.totalHeadersSize))

    def _respondToBadRequestAndDisconnect(self):
        # Twisted answers malformed framing (a bad request line, headers, length or chunk) here, with a bare
        # 400; overriding this private method is the only way to answer in JSON like everywhere else.
        if self._receivedHeaderCount > self.maxHeaders:
            self._refuse(431, f"the request has more than {self.maxHeaders} header lines", limit=self.maxHeaders)
        else:
            self._refuse(400, "malformed HTTP request")

    def _arriving(self):
        """The request whose first line arrived and whose headers or body are arriving, or None."""
        return self.requests[-1] if self.requests and not self.requests[-1].received else None

    def _refuse(self, status: int, message: str, **extra) -> None:
        """Answer *status* in JSON before a request is complete, access-log it, and read nothing more."""
        self.discarding = True
        arriving = self._arriving()
        if arriving is not None:
            arriving.refuse_early(status, message, **extra)  # with its id, if its headers gave one
            return
        request_id = new_request_id()  # not even a first line: no request to speak of
        body = error_body(status, message, request_id=request_id, **extra)
        write_and_close(self, status, body, request_id)
        log_response(request_id, getattr(self.transport.getPeer(), "host", None), "-", "-", "-", status, len(body),
                     site=self.site.pipeline_resource.name, when=self.site.reactor.seconds())


class PipelineSite(Site):
    """A :class:`Site` with a body limit, its open connections, and a switch to refuse new work."""

    requestFactory = LimitedRequest
    protocol = TrackedChannel
    displayTracebacks = False

    def __init__(self, resource: "PipelineResource", max_body_bytes: int, read_timeout: Optional[float] = None,
                 idle_timeout: Optional[float] = None, **kwargs):
        if idle_timeout is not None:
            kwargs["timeout"] = idle_timeout  # seconds an idle connection is kept (Twisted's default: 60)
        # Form bodies are not parsed into request.args: a route reads its body itself (web/body.py).
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_bytes = max_body_bytes
        #: Seconds a request may take to arrive, from its first line to the end of its body (408 after).
        self.read_timeout = read_timeout
        self.pipeline_resource = resource
        #: Requests that start arriving while this is true are accepted (``LimitedRequest.admitted``).
        self.accepting = True
        self.channels: set = set()
        #: The requests it answered, for /metrics (the site, and so its counts, outlives a reload's new routes).
        self.request_metrics = RequestMetrics(resource.name)

    def log(self, request) -> None:
        """A response was finished: its access-log line; and for /metrics, a count under its route pattern,
        method and status, and its duration from ``render`` (the request wholly arrived) to now."""
        request.log_response(request.code, request.sentLength)  # the access log (web/accesslog.py)
        resource = self.pipeline_resource
        try:
            started = getattr(request, "started_at", None)
            took = resource.clock.seconds() - started if started is not None else None
            self.request_metrics.observe(resource.route_of(request), request.method, request.code, took)
        except Exception:  # counting must never keep a response from being finished
            log.failure("could not count the request {request!r}", request=request)

    def close_idle_connections(self) -> None:
        for channel in list(self.channels):
            if not channel.requests:
                channel.transport.loseConnection()


def closing(request) -> None:
    """Ask the client to close the connection after this response, and close it."""
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False


class PipelineResource(Resource):
    """The root of a site: matches the routing tree and runs the route's pipeline."""

    isLeaf = True

    def __init__(self, name: str, tree: RouteNode, clock, response_timeout: float, status=None,
                 builtin: frozenset = frozenset(), access: Optional[Access] = None):
        super().__init__()
        self.name = name
        self.tree = tree
        self.clock = clock
        self.response_timeout = response_timeout
        self.status = status  # a Reference to the DaemonStatus that serves the built-in endpoints
        self.builtin = builtin
        self.access = access or Access("127.0.0.1", allowed_hosts=["*"])
        #: Client addresses whose 500 answers carry the traceback (the site's ``debug: {allow: [...]}``).
        self.debug_clients: frozenset = frozenset()
        #: The daemon's DaemonMetrics when the site serves /metrics (the site's ``metrics: true``).
        self.metrics = None
        self.exchanges: set[Exchange] = set()
        self.idle = WhenIdle(lambda: not self.exchanges)
        self.draining = False
        self.answered = 0

    def render(self, request):
        """Answer at once (an error, a built-in endpoint) or start the route's pipeline; never raise."""
        request.started_at = self.clock.seconds()  # the request has wholly arrived: its duration starts
        try:
            return self._render(request)
        except BodyError as error:
            return self._error(request, error.status, error.message)
        except Exception:
            status, error, _ = describe_failure(Failure(), f"while reading {request.method!r} {request.uri!r}",
                                                request_id=request.request_id)
            return self._error(request, status, error["message"], id=error.get("id"))

    def _render(self, request):
        request.setHeader(b"server", b"pipedingest")
        if self.draining:
            closing(request)
        if request.refused:
            return NOT_DONE_YET  # already answered (413, 408) and closing
        refused = self.access.host_refused(request.getHeader(b"host"))
        if refused:
            return self._error(request, 421, refused, hint="set allowed_hosts for this site")
        segments = path_segments(request)
        endpoint = segments[0] if len(segments) == 1 and segments[0] in self.builtin else None
        if endpoint not in OPEN_ENDPOINTS and not self.access.authorized(request.getHeader(b"authorization")):
            request.setHeader(b"www-authenticate", b'Bearer realm="pipedingest"')
            return self._error(request, 401, "a valid bearer token is required")
        if endpoint is not None:
            server = self.metrics if endpoint == "metrics" else self.status.value
            server.serve(endpoint, WebRequest(request, route="/" + endpoint))
            return NOT_DONE_YET
        node, params = self.tree.match(segments)
        if node is None or not node.routes:
            return self._error(request, 404, f"no route for /{'/'.join(segments)}")
        method = request.method.decode("ascii", "replace")
        route = next((r for r in node.routes if r.methods is None or method in r.methods), None)
        if route is None:
            request.setHeader(b"allow", ", ".join(node.allowed()).encode("ascii"))
            return self._error(request, 405, f"method {method} is not allowed here", allowed=node.allowed())
        unknown = route.unknown_query(request.args)
        if unknown:
            return self._error(request, 400, f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                                             f"{', '.join(map(repr, unknown))}", unknown=unknown,
                               accepted=sorted(route.query))
        if not request.admitted:
            request.setHeader(b"retry-after", str(RETRY_AFTER_STOPPING).encode("ascii"))
            closing(request)
            return self._error(request, 503, "the daemon is shutting down")
        wrapped = WebRequest(request, params, route.pattern)
        wrapped.read_body(route.accepts)
        self._run(route, wrapped)
        return NOT_DONE_YET

    def _error(self, request, status: int, message: str, **extra) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON_TYPE.encode("ascii"))
        return error_body(status, message, request_id=request.request_id, **extra)

    def route_of(self, request) -> str:
        """The route pattern a request falls under (``/articles/{id}``), for counting it: never its raw path."""
        try:
            segments = path_segments(request)
        except (BodyError, AttributeError):  # not UTF-8; or never routed (no postpath)
            return UNMATCHED
        if len(segments) == 1 and segments[0] in self.builtin:
            return "/" + segments[0]
        node, _ = self.tree.match(segments)
        return node.routes[0].pattern if node is not None and node.routes else UNMATCHED

    # -- an exchange --------------------------------------------------------------------------------------

    def _run(self, route: Route, wrapped: WebRequest) -> None:
        deadline = Deadline.after(self.clock, self.response_timeout)
        exchange = Exchange(wrapped, route, deadline)
        self.exchanges.add(exchange)
        wrapped.when_ended().addCallback(self._request_ended, exchange)
        running = exchange.running = route.pipeline.value({"request": wrapped, "deadline": deadline})
        running.addCallbacks(self._completed, self._failed, callbackArgs=(exchange,), errbackArgs=(exchange,))
        running.addBoth(self._pipeline_settled, exchange)
        if not exchange.over:
            exchange.backstop = self.clock.callLater(max(0.0, deadline.remaining()) + BACKSTOP_GRACE,
                                                     self._backstop, exchange)

    def _completed(self, baton, exchange: Exchange) -> None:
        if not exchange.request.finished:
            log.debug("pipeline {pipeline} finished without answering {request}; it stays pending",
                      pipeline=exchange.route.pipeline.name, request=exchange.request,
                      request_id=exchange.request.request_id)

    def _failed(self, failure, exchange: Exchange) -> None:
        if failure.check(CancelledError):
            return None  # the client went away, or the request was answered by a reaper or the backstop
        status, error, headers = describe_failure(failure, f"in {exchange.route.pipeline.name} for "
                                                           f"{exchange.request}", exchange.request.request_id)
        if status >= 500 and exchange.request.client in self.debug_clients:
            error["traceback"] = failure.getTraceback()
        exchange.request.respond_json(status, {"error": error}, headers)
        return None

    def _request_ended(self, disconnected: bool, exchange: Exchange) -> None:
        exchange.answered = True
        if disconnected and exchange.running is not None and not exchange.running.called:
            exchange.running.cancel()  # the client went away: stop work only it waited for
        self._maybe_over(exchange)

    def _pipeline_settled(self, _, exchange: Exchange) -> None:
        exchange.settled = True
        self._maybe_over(exchange)

    def _maybe_over(self, exchange: Exchange) -> None:
        if not exchange.over or exchange not in self.exchanges:
            return
        if exchange.backstop is not None and exchange.backstop.active():
            exchange.backstop.cancel()
        exchange.backstop = None
        self.exchanges.discard(exchange)
        self.answered += 1
        self.idle.check()

    def _backstop(self, exchange: Exchange) -> None:
        remaining = exchange.deadline.remaining()
        if remaining > 0:  # extended since (a long article): wait for the new deadline
            exchange.backstop = self.clock.callLater(remaining + BACKSTOP_GRACE, self._backstop, exchange)
            return
        exchange.backstop = None
        if not exchange.request.finished:
            log.warn("{request} unanswered by its deadline; answering 504", request=exchange.request,
                     request_id=exchange.request.request_id)
            exchange.request.respond_error(504, "no response in time", timeout_seconds=self.response_timeout)
        if not exchange.running.called:
            exchange.running.cancel()

    # -- stopping -------------------------------------------------------------------------------------------

    def drain(self) -> Deferred:
        """From now on every response closes its connection; fires when every accepted exchange is over."""
        self.draining = True
        for exchange in self.exchanges:
            if not exchange.request.finished:
                closing(exchange.request.raw)
        return self.idle.wait()

    def abandon(self) -> list[str]:
        """Answer every open exchange 503 and cancel its work (a stop ran out of time); their descriptions."""
        abandoned = []
        for exchange in list(self.exchanges):
            abandoned.append(exchange.describe())
            log.warn("stopping with {request} still open; answering 503", request=exchange.describe(),
                     request_id=exchange.request.request_id)
            exchange.request.respond_error(503, "the daemon stopped before this request was finished",
                                           {"retry-after": str(RETRY_AFTER_STOPPING)})
            if exchange.running is not None and not exchange.running.called:
                exchange.running.cancel()
            exchange.answered = exchange.settled = True
            self._maybe_over(exchange)
        return abandoned


class SiteService(Service):
    """Listens for one site; on stop, stops accepting, drains what it accepted, then closes its port."""

    stage = SITE

    def __init__(self, name: str, site: PipelineSite, listener: Listener, reactor):
        self.setName(f"site.{name}")
        self.site_name = name
        self.site = site
        #: What it listens on (pipedingest/web/endpoint.py): a reload that changes it gives a new SiteService.
        self.listener = listener
        self.reactor = reactor
        self.listening = None
        #: Routing roots a reload replaced, until the requests they had accepted are over.
        self.retired: set[PipelineResource] = set()

    @property
    def resource(self) -> PipelineResource:
        return self.site.pipeline_resource

    def adopt(self, newer: "SiteService") -> PipelineResource:
        """Serve with *newer*'s routes and settings from now on, on this port and these connections.

        A reload built *newer* from the new configuration; this site listens on the same port, so it
        takes over newer's root resource, body limit and timeouts instead of closing its port. Requests
        already accepted finish on the old root (and its pipelines): it is kept in :attr:`retired` until
        they are over, and returned, so that the reload can wait for it.
        """
        site, old, new = self.site, self.resource, newer.site.pipeline_resource
        site.resource = site.pipeline_resource = new
        site.max_body_bytes, site.read_timeout, site.timeOut = (newer.site.max_body_bytes, newer.site.read_timeout,
                                                                newer.site.timeOut)
        new.answered = old.answered
        if old.exchanges:
            self.retired.add(old)
            old.idle.wait().addCallback(lambda _: self.retired.discard(old))
        return old

    def _resources(self) -> list[PipelineResource]:
        return [self.resource, *self.retired]

    @property
    def port(self) -> Optional[int]:
        return getattr(self.listening.getHost(), "port", None) if self.listening else None

    @property
    def url(self) -> str:
        """Where it answers, from the address it is bound to (``http+unix://<quoted path>`` for a UNIX socket)."""
        return self.listener.url(self.listening.getHost())

    def client_agent(self, reactor, pool):
        """An HTTP client that reaches this site where it listens (its UNIX socket; TLS trusting its certificate)."""
        return self.listener.agent(reactor, pool, self.listening.getHost())

    def startService(self):
        super().startService()
        self.site.accepting = True
        # Twisted's tcp, ssl, unix and adopted (systemd) endpoints bind at once: their Deferred has fired, and a
        # failure to bind is raised here, as listenTCP's was.
        outcome = []
        self.listener.endpoint(self.reactor).listen(self.site).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.listening = outcome[0]
        log.info("web site {name!r} listening on {url}/", name=self.site_name, url=self.url)

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        # One reactor turn first: bytes that arrived before the stop are read, and their requests accepted.
        yield deferLater(self.reactor, 0, lambda: None)
        self.site.accepting = False
        open_now = sum(len(resource.exchanges) for resource in self._resources())
        if open_now:
            log.info("web site {name!r} stopped accepting; draining {n} open requests", name=self.site_name,
                     n=open_now)
        for resource in self._resources():
            yield resource.drain()
        listening, self.listening = self.listening, None
        if listening is not None:
            yield listening.stopListening()
        self.site.close_idle_connections()

    def abandon(self) -> list[str]:
        """Answer what is still open with 503 (the daemon's stop ran out of time)."""
        return [request for resource in self._resources() for request in resource.abandon()]

    def state(self) -> dict:
        return {"url": self.url if self.listening else None, "accepting": bool(self.site.accepting and self.running),
                "open_requests": sum(len(resource.exchanges) for resource in self._resources()),
                "answered": self.resource.answered}

    def metrics(self) -> list:
        """For /metrics: the requests it answered, and its open requests and connections now."""
        return [*self.site.request_metrics.families(),
                gauge("pipedingest_http_open_requests", "Requests accepted and not yet over",
                      self.state()["open_requests"], site=self.site_name),
                gauge("pipedingest_http_connections", "Open HTTP connections", len(self.site.channels),
                      site=self.site_name)]
