"""Prometheus metrics: what ``GET /metrics`` shows, from one registry per daemon.

Two kinds of numbers, kept where they already are:

* **State, read at scrape time.** Gauges (children, busy children, queue depth, pending entries, a stream's
  lag) and the counts each component already keeps for ``/status`` (batches, crashes, commits, retries,
  reaped entries) are read when Prometheus asks, by each service's ``metrics()`` method, beside its
  ``state()``. Nothing is done for them while requests are served.
* **Events, recorded as they happen.** What ``/status`` does not keep, durations above all, is recorded
  where it happens, in histograms (and labelled counters) that the component owns: a site times each
  request as it is finished, the NER pool each article and batch, a store each commit. Those instruments
  belong to no registry (``registry=None``); their owner reports them through its ``metrics()``, with the
  labels that say which site, store or table it is (:func:`reported`).

:class:`DaemonMetrics` gathers it all: its own :class:`~prometheus_client.CollectorRegistry` (never the
global one: several daemons may live in one process, as in the tests), holding a :class:`DaemonCollector`
that walks the daemon's service graph at each scrape, plus the process, platform and garbage-collector
collectors of ``prometheus_client``. Sites with ``metrics: true`` serve it at ``/metrics``, on the reactor
thread, behind the site's tokens and host names like ``/status``. (``prometheus_client.twisted
.MetricsResource`` is not used: it serves the global registry by default, through WSGI in the reactor's
thread pool, where reading the daemon's state would race the reactor.)

Label values stay bounded: a request is counted under its route's pattern (``/articles/{id}``), never its
path, and under its method only if it is a standard one.
"""
from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger

log = Logger()

#: Seconds: from a few milliseconds (a stored read) to the longest deadlines of long articles.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: Seconds of one store commit: a local SQLite transaction takes about a millisecond.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Methods counted under their own name; any other is counted as ``other`` (a client chooses the method).
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
#: The route label of a request that matched no route (a 404, or a path that is not UTF-8).
UNMATCHED = "unmatched"


# -- instruments and families -----------------------------------------------------------------------------------

def histogram(name: str, documentation: str, labelnames: Iterable[str] = (),
              buckets=LATENCY_BUCKETS) -> Histogram:
    """A histogram that no registry collects: its owner reports it through its ``metrics()``."""
    return Histogram(name, documentation, tuple(labelnames), registry=None, buckets=buckets)


def counter(name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
    """A counter that no registry collects (for counts kept nowhere else, by label)."""
    return Counter(name, documentation, tuple(labelnames), registry=None)


def reported(instruments: Iterable, **labels: str) -> list[Metric]:
    """The families of *instruments*, each sample with *labels* added (which site, store, table).

    The ``_created`` samples ``prometheus_client`` adds to counters and histograms are left out: Prometheus
    does not need them, and they would double the series.
    """
    families = []
    for instrument in instruments:
        for family in instrument.collect():
            copy = Metric(family.name, family.documentation, family.type)
            copy.samples = [sample._replace(labels={**labels, **sample.labels}) for sample in family.samples
                            if not sample.name.endswith("_created")]
            families.append(copy)
    return families


def gauge(name: str, documentation: str, value: Optional[float], **labels: str) -> GaugeMetricFamily:
    """A gauge family with one sample (none when *value* is None: unknown is not zero)."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    if value is not None:
        family.add_metric(list(labels.values()), value)
    return family


def gauges(name: str, documentation: str, labelnames: Iterable[str],
           samples: Iterable[tuple[Iterable[str], float]]) -> GaugeMetricFamily:
    """A gauge family with a sample for each ``(label values, value)`` of *samples*."""
    return _filled(GaugeMetricFamily(name, documentation, labels=list(labelnames)), samples)


def count(name: str, documentation: str, value: float, **labels: str) -> CounterMetricFamily:
    """A counter family with one sample, for a count a component already keeps (*name* without ``_total``)."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counts(name: str, documentation: str, labelnames: Iterable[str],
           samples: Iterable[tuple[Iterable[str], float]]) -> CounterMetricFamily:
    """A counter family with a sample for each ``(label values, value)`` of *samples*."""
    return _filled(CounterMetricFamily(name, documentation, labels=list(labelnames)), samples)


def _filled(family, samples: Iterable[tuple[Iterable[str], float]]):
    for values, value in samples:
        family.add_metric([str(v) for v in values], value)
    return family


def method_label(method: bytes) -> str:
    """The method as a label value: a standard method's name, else ``other`` (bounded cardinality)."""
    name = method.decode("ascii", "replace").upper()
    return name if name in STANDARD_METHODS else "other"


def resident_bytes(pid: int) -> Optional[int]:
    """A process's resident memory now (``VmRSS`` of ``/proc/<pid>/status``); None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel writes it in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- a site's requests ------------------------------------------------------------------------------------------

class RequestMetrics:
    """What one site answered: requests by route pattern, method and status, and how long each took.

    Recorded as each response is finished (``PipelineSite.log``): a label lookup and two increments.
    The duration runs from the moment the request had wholly arrived to its last byte written.
    """

    def __init__(self, site: str):
        self.site = site
        self.requests = counter("pipedingest_http_requests",
                                "HTTP requests answered, by route pattern, method and status code",
                                ("route", "method", "status"))
        self.seconds = histogram("pipedingest_http_request_duration_seconds",
                                 "Seconds from a request's arrival to its answer, by route pattern and method",
                                 ("route", "method"))
        #: (route, method, status) → the counter and histogram children of those labels (``labels()`` is slow).
        self._children: dict = {}

    def observe(self, route: str, method: bytes, status: int, seconds: Optional[float]) -> None:
        key = (route, method_label(method), status)  # bounded: the raw method is the client's choice
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, key[1], str(status)),
                                              self.seconds.labels(route, key[1]))
        children[0].inc()
        if seconds is not None:
            children[1].observe(max(0.0, seconds))

    def families(self) -> list[Metric]:
        return reported((self.requests, self.seconds), site=self.site)


# -- the daemon ---------------------------------------------------------------------------------------------------

class DaemonCollector:
    """At each scrape: the daemon's readiness and status tests, and every service's own ``metrics()``.

    Families of one name reported by several services (two sites, two stores) are merged into one, each
    sample labelled by its service. A service whose ``metrics()`` fails is logged and left out: a broken
    reporter must not break the scrape.
    """

    def __init__(self, status):
        self.status = status  # the DaemonStatus: readiness, the status-test report, the service graph

    def collect(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        for family in [*self._daemon(), *self._services()]:
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = family
            elif known.type == family.type:
                known.samples.extend(family.samples)
        return list(merged.values())

    def _daemon(self) -> list[Metric]:
        status = self.status
        results = status.report.results if status.report is not None else ()
        tests = ["group", "test"]
        return [
            gauge("pipedingest_ready", "1 when /ready answers 200: started, status tests passed",
                  1 if status.ready else 0),
            gauges("pipedingest_status_test_passed", "The last result of each status test: 1 passed, 0 failed",
                   tests, [((r.group, r.name), 1 if r.result == "ok" else 0) for r in results]),
            gauges("pipedingest_status_test_duration_seconds", "Seconds the last run of each status test took",
                   tests, [((r.group, r.name), r.duration) for r in results]),
            gauges("pipedingest_service_running", "1 while the service is running", ["service"],
                   [((name,), 1 if node.state == "running" else 0) for name, node in self._nodes()]),
        ]

    def _nodes(self):
        graph = self.status.graph
        return sorted(graph.nodes.items()) if graph is not None else []

    def _services(self) -> list[Metric]:
        families = []
        for name, node in self._nodes():
            metrics = getattr(node.service, "metrics", None)
            if not callable(metrics):
                continue
            try:
                families.extend(metrics())
            except Exception:
                log.failure("{name} could not report its metrics", name=name)
        return families


class DaemonMetrics:
    """One daemon's registry, and the ``/metrics`` endpoint of its sites; registered as ``daemon.metrics``."""

    def __init__(self, status):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(status))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the ``Accept`` header asks for (Prometheus text, or OpenMetrics)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def serve(self, endpoint: str, request) -> None:
        """Answer ``GET /metrics`` (*request* is a :class:`~pipedingest.web.request.WebRequest`)."""
        body, content_type = self.exposition(request.headers.get("accept", ""))
        request.respond(200, body, content_type)
