"""Sites: routing HTTP requests to pipelines, and always answering them.

:class:`PipelineResource` is the one place where a request becomes a baton,
where the pipeline's outcome becomes a response, and where every failure
becomes a JSON error.  Whatever happens, the request is finished:

* the pipeline answered → done;
* the pipeline failed → 4xx/5xx JSON (a 500 carries an error id that is also in
  the log, with the traceback);
* the client went away → the pipeline's Deferred is cancelled, so work only
  that client waited for stops;
* nobody answered within ``response_timeout`` → 504 JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pipedingest.web.errors import describe_failure
from pipedingest.web.request import JSON_TYPE, LimitedRequest, WebRequest, error_body

log = Logger()


@dataclass
class Route:
    """A pipeline that answers some methods at one routing node."""

    pipeline: object  # a Reference to a Pipeline
    methods: Optional[frozenset] = None  # None: any method
    pattern: str = "/"


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


class PipelineSite(Site):
    """A :class:`Site` with a body limit and a switch to refuse new work while stopping."""

    requestFactory = LimitedRequest
    displayTracebacks = False

    def __init__(self, resource: "PipelineResource", max_body_bytes: int, **kwargs):
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.pipeline_resource = resource


class PipelineResource(Resource):
    """The root of a site: matches the routing tree and runs the route's pipeline."""

    isLeaf = True

    def __init__(self, name: str, tree: RouteNode, clock, response_timeout: float,
                 builtin: Optional[dict[str, Callable[[WebRequest], None]]] = None):
        super().__init__()
        self.name = name
        self.tree = tree
        self.clock = clock
        self.response_timeout = response_timeout
        self.builtin = builtin or {}
        self.accepting = True
        self.in_flight: set[Deferred] = set()
        self._idle_waiters: list[Deferred] = []

    def render(self, request):
        request.setHeader(b"server", b"pipedingest")
        segments = [s.decode("utf-8", "replace") for s in request.postpath]
        if segments and segments[-1] == "":
            segments.pop()
        if request.too_large:
            request.setHeader(b"connection", b"close")
            return self._error(request, 413, "request body too large",
                               limit_bytes=request.channel.site.max_body_bytes)
        if len(segments) == 1 and segments[0] in self.builtin:
            wrapped = WebRequest(request, route="/" + segments[0])
            self.builtin[segments[0]](wrapped)
            return NOT_DONE_YET
        node, params = self.tree.match(segments)
        if node is None or not node.routes:
            return self._error(request, 404, f"no route for {request.path.decode('utf-8', 'replace')}")
        method = request.method.decode("ascii", "replace")
        route = next((r for r in node.routes if r.methods is None or method in r.methods), None)
        if route is None:
            request.setHeader(b"allow", ", ".join(node.allowed()).encode("ascii"))
            return self._error(request, 405, f"method {method} is not allowed here", allowed=node.allowed())
        if not self.accepting:
            request.setHeader(b"retry-after", b"5")
            return self._error(request, 503, "the daemon is shutting down")
        wrapped = WebRequest(request, params, route.pattern)
        if wrapped.body and wrapped.wants_json():
            try:
                wrapped.json = json.loads(wrapped.body)
            except UnicodeDecodeError:
                return self._error(request, 400, "request body is not UTF-8")
            except ValueError as exc:
                return self._error(request, 400, f"malformed JSON: {exc}")
        self._run(route, wrapped)
        return NOT_DONE_YET

    def _error(self, request, status: int, message: str, **extra) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON_TYPE.encode("ascii"))
        return error_body(status, message, **extra)

    def _run(self, route: Route, wrapped: WebRequest) -> None:
        running = route.pipeline.value({"request": wrapped})
        self.in_flight.add(running)
        timeout = self.clock.callLater(self.response_timeout, self._timed_out, wrapped, running)

        def finished(_):
            if timeout.active():
                timeout.cancel()
            if not running.called:
                running.cancel()  # the client went away: stop work only it waited for

        wrapped.raw.notifyFinish().addBoth(finished)
        running.addCallbacks(self._completed, self._failed, callbackArgs=(wrapped, route),
                             errbackArgs=(wrapped, route))
        running.addBoth(self._done, running)

    def _completed(self, baton, wrapped: WebRequest, route: Route) -> None:
        if not wrapped.finished:
            log.debug("pipeline {pipeline} finished without answering {request}; it stays pending",
                      pipeline=route.pipeline.name, request=wrapped)

    def _failed(self, failure, wrapped: WebRequest, route: Route) -> None:
        if failure.check(CancelledError):
            return None  # the client went away, or the reaper answered and cancelled the work
        status, error, headers = describe_failure(failure, f"in {route.pipeline.name} for {wrapped}")
        wrapped.respond_json(status, {"error": error}, headers)
        return None

    def _timed_out(self, wrapped: WebRequest, running: Deferred) -> None:
        log.warn("{request} unanswered after {seconds}s; answering 504", request=wrapped,
                 seconds=self.response_timeout)
        wrapped.respond_error(504, "no response in time", timeout_seconds=self.response_timeout)
        if not running.called:
            running.cancel()

    def _done(self, _, running: Deferred) -> None:
        self.in_flight.discard(running)
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def idle(self) -> Deferred:
        """Fires when no pipeline started by this site is running."""
        if not self.in_flight:
            return succeed(None)
        waiter = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


class SiteService(Service):
    """Listens for one site; on stop, refuses new work, closes the port and lets work in flight finish."""

    def __init__(self, name: str, site: PipelineSite, port: int, interface: str, reactor):
        self.name = name
        self.site = site
        self.requested_port = port
        self.interface = interface
        self.reactor = reactor
        self.listening = None

    @property
    def port(self) -> Optional[int]:
        return self.listening.getHost().port if self.listening else None

    @property
    def url(self) -> str:
        host = self.interface if self.interface not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def startService(self):
        super().startService()
        self.listening = self.reactor.listenTCP(self.requested_port, self.site, interface=self.interface)
        log.info("web site {name!r} listening on {url}/", name=self.name, url=self.url)

    def stop_accepting(self) -> None:
        self.site.pipeline_resource.accepting = False

    def stopService(self):
        super().stopService()
        self.stop_accepting()
        listening, self.listening = self.listening, None
        stopped = listening.stopListening() if listening else succeed(None)
        return stopped.addCallback(lambda _: self.site.pipeline_resource.idle())
