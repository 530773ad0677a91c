"""``web:``: HTTP sites whose routing trees hand requests to pipelines.

::

    web:
      main:
        port: 8080                 # 0: any free port (the log says which)
        interface: 127.0.0.1
        # or, instead of port/interface, a Twisted endpoint (pipedingest/web/endpoint.py):
        # endpoint: ssl:8443:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1
        max_body_bytes: 2097152    # larger bodies get 413, as soon as Content-Length says so
        response_timeout: 60       # each request's deadline; unanswered requests get 504 after it
        read_timeout: 30           # a request not wholly received by then gets 408
        idle_timeout: 60           # idle keep-alive connections are closed after this
        tokens: ["${INGEST_TOKEN}"]   # optional: require Authorization: Bearer <token> (not on /health, /ready)
        allowed_hosts: [localhost]    # optional: Host names served (default on loopback: loopback names)
        metrics: true              # serve GET /metrics (Prometheus text; behind the tokens, like /status)
        routing:
          __config__: {processor: pipeline.web.compute}
          articles:
            __config__:
              - {processor: pipeline.web.articles.create, methods: [POST], accepts: [application/json]}
              - {processor: pipeline.web.articles.list, methods: [GET], query: [source, limit]}
            "{id}":
              __config__: {processor: pipeline.web.articles.get, methods: [GET]}

Every site also answers ``/health``, ``/ready`` and ``/status`` unless its
routing defines those paths itself; with ``metrics: true`` it serves the whole
daemon's metrics at ``/metrics`` (see :mod:`pipedingest.metrics`; the daemon's one
``daemon.metrics`` is made for the first site that asks).  Registered as
``site.<name>``, a service that needs every pipeline its routes name (and so what
their steps use).
"""
from __future__ import annotations

import ipaddress
import re

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.errors import ErrorCollector
from pipedingest.config.loader import LocatedDict, LocatedList
from pipedingest.config.schema import Option, check_section
from pipedingest.metrics import DaemonMetrics
from pipedingest.providers.base import IProvider, Provider
from pipedingest.status import BUILTIN_ENDPOINTS
from pipedingest.web.access import Access
from pipedingest.web.endpoint import EndpointError, Listener, parse_listener
from pipedingest.web.site import PipelineResource, PipelineSite, Route, RouteNode, SiteService

SITE_OPTIONS = {
    "port": Option(int, 8080, "the TCP port; 0 picks a free one", minimum=0),
    "interface": Option(str, "127.0.0.1", "the IP address to listen on ('' or 0.0.0.0: every IPv4 address)"),
    "endpoint": Option((str, type(None)), None,
                       "a Twisted server endpoint string instead of port/interface: tcp:8080:interface=127.0.0.1, "
                       "ssl:8443:privateKey=key.pem:certKey=cert.pem, unix:/run/pipedingest/ingest.sock, "
                       "systemd:domain=INET:index=0"),
    "max_body_bytes": Option(int, 2 * 1024 * 1024, "larger request bodies are answered with 413", minimum=1),
    "response_timeout": Option(float, 60.0, "seconds a request may take: its deadline; 504 after it", above=0),
    "read_timeout": Option(float, 30.0, "seconds a request may take to arrive, headers and body (408 after)",
                           above=0),
    "idle_timeout": Option(float, 60.0, "seconds an idle connection is kept open", above=0),
    "tokens": Option(list, [], "bearer tokens; when any, every request but /health and /ready needs one",
                     items=str),
    "allowed_hosts": Option((list, type(None)), None,
                            "Host names served (['*']: any); default: loopback names on a loopback interface",
                            items=str),
    "builtin_endpoints": Option(bool, True, "serve /health, /ready and /status"),
    "metrics": Option(bool, False, "serve GET /metrics: the daemon's metrics in Prometheus text (behind the "
                                   "site's tokens and allowed_hosts, like /status)"),
    "debug": Option((dict, type(None)), None,
                    "{allow: [client addresses]}: a 500 answered to these clients carries the traceback"),
    "routing": Option(dict, doc="the routing tree: path segments → {__config__: {processor: pipeline.x}}"),
}
ROUTE_OPTIONS = {
    "processor": Option(str, doc="the pipeline that answers, as pipeline.<dotted.name>"),
    "methods": Option((list, str, type(None)), None, "the HTTP methods it answers (default: any)", items=str),
    "accepts": Option((list, str, type(None)), None,
                      "the content types a request body may have (415 otherwise; default: any)", items=str),
    "query": Option((list, str, type(None)), None,
                    "the query parameters it takes ([source, limit]; 'any': whatever it is sent); others get 400 "
                    "naming them; default: none", items=str),
}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


@implementer(IPlugin, IProvider)
class WebProvider(Provider):
    section = "web"
    order = 40
    resource_prefix = "site."
    entry_options = SITE_OPTIONS
    entry_kind = "web site"
    example = "web: {main: {port: 8080, routing: {...}}}"

    def configure_entry(self, name, settings, spec, where, runtime) -> None:
        errors = runtime.errors
        if settings["port"] > 65535:
            errors.add(f"port {settings['port']} is out of range", spec.where_of("port"), "use 0 to 65535")
        interface = settings["interface"]
        if interface not in ("", "localhost") and not _is_address(interface):
            errors.add(f"interface {interface!r} is not an IP address", spec.where_of("interface"),
                       "use 127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 address) or an address of it")
        listener = _listener(name, settings, spec, errors)
        tokens = settings["tokens"]
        for index, token in enumerate(tokens):
            if not isinstance(token, str) or not token.strip():
                errors.add(f"token #{index + 1} of web site {name!r} is empty or not text",
                           _where(spec, "tokens", index),
                           "an unset variable gives an empty token: set it, or remove the entry")
        hosts = settings["allowed_hosts"]
        if hosts is not None and not all(isinstance(host, str) and host for host in hosts):
            errors.add("allowed_hosts must list host names", spec.where_of("allowed_hosts"),
                       "for example: [ingest.example.com, localhost]; ['*'] allows any")
            hosts = None
        resource_name = f"site.{name}"
        tree = RouteNode()
        build_routes(settings["routing"], tree, "", runtime, errors, resource_name)
        status, builtin = None, frozenset()
        if settings["builtin_endpoints"]:
            status = runtime.reference("daemon.status", where, by=resource_name)
            builtin = frozenset(path for path in BUILTIN_ENDPOINTS if path not in tree.children)
        if settings["metrics"]:
            if "metrics" in tree.children:
                errors.add(f"web site {name!r} serves /metrics (metrics: true) and its routing defines it too",
                           spec.where_of("metrics"), "remove the 'metrics' route, or set metrics: false")
            builtin |= {"metrics"}
        if listener is not None and listener.loopback is None and hosts is None:
            errors.add(f"web site {name!r} listens on a socket systemd passes it: allowed_hosts must say which Host "
                       "names it serves", spec.where_of("endpoint"),
                       "the socket's address is not in this configuration: allowed_hosts: [ingest.example.com] "
                       "(['*']: any)")
        loopback = listener.loopback if listener is not None else None
        access = Access(interface, [t for t in tokens if isinstance(t, str)], hosts, loopback=loopback)
        resource = PipelineResource(name, tree, runtime.clock, settings["response_timeout"], status, builtin, access)
        resource.debug_clients = _debug_clients(settings["debug"], spec, errors)
        resource.metrics = _daemon_metrics(runtime, where) if settings["metrics"] else None
        site = PipelineSite(resource, settings["max_body_bytes"], settings["read_timeout"], settings["idle_timeout"])
        # What it listens on: a reload keeps the site (its port, its connections) while this stays the same,
        # and gives it the new routes and settings (SiteService.adopt); a changed endpoint gives a new site.
        listener = listener or Listener.tcp(0, "127.0.0.1")  # the configuration has errors: never started
        runtime.register(resource_name, SiteService(name, site, listener, runtime.reactor), where,
                         settings={"endpoint": listener.description})


def _listener(name: str, settings, spec, errors: ErrorCollector):
    """The site's :class:`Listener`: its ``endpoint``, or the short form ``port``/``interface``; None if wrong."""
    description = settings["endpoint"]
    if description is None:
        return Listener.tcp(settings["port"], settings["interface"])
    given = [key for key in ("port", "interface") if isinstance(spec, dict) and key in spec]
    if given:
        errors.add(f"web site {name!r} has both an endpoint and {' and '.join(given)}", spec.where_of(given[0]),
                   "the endpoint says where it listens: remove port/interface, or the endpoint")
        return None
    try:
        return parse_listener(description)
    except EndpointError as error:
        errors.add(f"web site {name!r}: {error}", spec.where_of("endpoint"), error.hint or "")
        return None


def build_routes(node: LocatedDict, tree: RouteNode, prefix: str, runtime, errors: ErrorCollector, by: str) -> None:
    for key, child in node.items():
        where = node.where_of(key)
        if key == "__config__":
            entries = child if isinstance(child, LocatedList) else [child]
            for index, entry in enumerate(entries):
                entry_where = entries.where_of(index) if isinstance(entries, LocatedList) else where
                route = _route(entry, prefix or "/", runtime, errors, entry_where, by)
                if route is not None:
                    tree.routes.append(route)
            continue
        if not isinstance(key, str) or "/" in key or not key:
            errors.add(f"routing key {key!r} must be one path segment", node.where_of_key(key),
                       "nest mappings for deeper paths, e.g. articles: {batch: {...}}")
            continue
        if not isinstance(child, dict):
            errors.add(f"routing entry {key!r} must be a mapping", where,
                       "give it a __config__: {processor: pipeline.x} and/or child segments")
            continue
        path = f"{prefix}/{key}"
        is_param = key.startswith("{") and key.endswith("}")
        if ("{" in key or "}" in key) and not (is_param and _PARAM_NAME.match(key[1:-1])):
            errors.add(f"routing key {key!r} is neither a plain segment nor a parameter", node.where_of_key(key),
                       "a parameter is a whole segment: '{name}', the name a Python identifier")
            continue
        if is_param:
            if tree.param is not None and tree.param[0] != key[1:-1]:
                errors.add(f"two parameter segments at {prefix or '/'}: {{{tree.param[0]}}} and {key}", where)
                continue
            sub = tree.param[1] if tree.param else RouteNode()
            tree.param = (key[1:-1], sub)
        else:
            sub = tree.children.setdefault(key, RouteNode())
        build_routes(child, sub, path, runtime, errors, by)


def _route(entry, pattern: str, runtime, errors: ErrorCollector, where, by: str):
    settings = check_section(ROUTE_OPTIONS, entry, f"the route at {pattern}", errors, where)
    if settings is None:
        return None
    processor = settings["processor"]
    if not processor.startswith("pipeline."):
        errors.add(f"route processor {processor!r} must name a pipeline", entry.where_of("processor"),
                   f"write processor: pipeline.{processor}")
        return None
    reference = runtime.reference(processor, entry.where_of("processor"), "pipeline", by=by)
    methods = settings["methods"]
    if isinstance(methods, str):
        methods = [methods]
    if methods is not None:
        methods = [str(m).upper() for m in methods]
        bad = [m for m in methods if m not in HTTP_METHODS]
        if bad or not methods:
            problem = f"unknown HTTP method(s) {', '.join(bad)}" if bad else "'methods' is empty: nothing would match"
            errors.add(problem, entry.where_of("methods"), "use " + ", ".join(HTTP_METHODS))
            return None
        methods = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())
    accepts = settings["accepts"]
    if isinstance(accepts, str):
        accepts = [accepts]
    if accepts is not None:
        accepts = [str(a).strip().lower() for a in accepts]
        if not accepts or not all(_MEDIA_TYPE.match(a) for a in accepts):
            errors.add(f"'accepts' must list media types, not {accepts!r}", entry.where_of("accepts"),
                       "for example: [application/json, application/x-ndjson]")
            return None
        accepts = frozenset(accepts)
    query = _query(settings["query"], entry, errors)
    if query is False:
        return None
    return Route(reference, methods, pattern, accepts, query)


def _query(query, entry, errors: ErrorCollector):
    """A route's ``query``: a frozenset of names, None for 'any', or False (reported) when it is malformed."""
    if query is None:
        return frozenset()  # a route takes no query parameters unless it says so
    if query == "any":
        return None
    if isinstance(query, str):  # one name is a list too: 'query: anything' must not mean a parameter 'anything'
        errors.add(f"'query' must be 'any' or a list of parameter names, not {query!r}", entry.where_of("query"),
                   f"query: [{query}] takes one parameter; query: any takes whatever the route is sent")
        return False
    if not query or not all(isinstance(name, str) and name.strip() and name == name.strip() for name in query):
        errors.add(f"'query' must be 'any' or a list of parameter names, not {query!r}", entry.where_of("query"),
                   "for example: query: [source, limit]; query: any takes whatever the route is sent")
        return False
    return frozenset(query)


def _daemon_metrics(runtime, where) -> DaemonMetrics:
    """The daemon's one :class:`DaemonMetrics` (``daemon.metrics``), made for the first site that serves it."""
    metrics = runtime.resources.get("daemon.metrics")
    if metrics is None:
        metrics = DaemonMetrics(runtime.get("daemon.status"))
        runtime.register("daemon.metrics", metrics, where)
    return metrics


def _debug_clients(debug, spec, errors) -> frozenset:
    """The client addresses of ``debug: {allow: [...]}`` (``localhost`` meaning the loopback addresses)."""
    if debug is None:
        return frozenset()
    allow = debug.get("allow") if isinstance(debug, dict) else None
    if set(debug) - {"allow"} or not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        errors.add("'debug' takes one key, 'allow', a list of client addresses", spec.where_of("debug"),
                   "debug: {allow: [localhost]}")
        return frozenset()
    clients = set()
    for address in allow:
        clients |= {"127.0.0.1", "::1"} if address == "localhost" else {address}
    return frozenset(clients)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _where(spec, key: str, index: int):
    items = spec.get(key) if isinstance(spec, dict) else None
    return items.where_of(index) if isinstance(items, LocatedList) else spec.where_of(key)


provider = WebProvider()
