"""The daemon's life as a dependency graph: services start in dependency order and stop in reverse.

The nodes are the named resources of a configuration (``pipeline.web.articles.create``,
``store.articles``, ``site.main`` …); the edges are the references between them, each
recorded with who needs what (:class:`~pipedingest.engine.runtime.Reference`).  A
resource that provides ``IService`` is a *service*; a service **needs** every service
it reaches through resources that are not services: ``site.main`` needs ``ner.pool``,
``pending.ner`` and ``store.articles`` because its routes' pipelines have steps that
name them.  A new provider declares its dependencies simply by taking references
(``runtime.reference(name, where, by=its own name)``, or ``step.reference`` in a
processor); nothing else is needed for its services to start and stop in the right place.

Each service belongs to a *stage*, read from its ``stage`` attribute:

* ``resource`` (the default): pools, stores, pending tables;
* ``site``: listens only once every resource has started;
* ``tick``: periodic work, started once the sites listen.

**Start**: stage by stage; within a stage, a service starts once every service it
needs has started, waiting for each ``startService`` Deferred (independent services
start side by side).  If one fails, nothing that needs it is started.

**Stop**: the sites first (each stops accepting and drains what it accepted, while
everything they use still runs); then every other service stops once every service
that needs it has stopped, waiting for each ``stopService`` Deferred.

A cycle of references is a configuration error, reported at the reference that
closes it; a reference to a resource that does not exist is reported by the runtime.
"""
from __future__ import annotations

from typing import Iterable, Optional

from twisted.application.service import IService
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger

from pipedingest.config.errors import Location

log = Logger()

RESOURCE, SITE, TICK = "resource", "site", "tick"
STAGES = (RESOURCE, SITE, TICK)

WAITING, STARTING, RUNNING, DRAINING, STOPPING, STOPPED, FAILED = (
    "waiting", "starting", "running", "draining", "stopping", "stopped", "failed")


class StartFailed(Exception):
    """Some services did not start; the first failure is ``failure``."""

    def __init__(self, names: list[str], failure):
        self.names = names
        self.failure = failure
        super().__init__(f"{', '.join(names)} did not start: {failure.getErrorMessage()}")


class ServiceNode:
    """One service of the graph: what it needs, its stage, and where it is in its life."""

    def __init__(self, name: str, service, where: Optional[Location]):
        self.name = name
        self.service = service
        self.where = where
        self.stage = getattr(service, "stage", RESOURCE)
        self.needs: list[str] = []
        self.needed_by: list[str] = []
        self.state = WAITING
        self.failure = None

    def as_json(self) -> dict:
        return {"state": self.state, "stage": self.stage, "needs": list(self.needs)}

    def __repr__(self) -> str:
        return f"<ServiceNode {self.name} {self.state}>"


class ServiceGraph:
    """The services of one configuration and what each needs; starts and stops them in order."""

    def __init__(self, resources: dict, definitions: dict, references: Iterable):
        self.edges: dict[str, dict[str, Location]] = {name: {} for name in resources}
        for ref in references:
            if ref.by in self.edges and ref.name in resources:
                self.edges[ref.by].setdefault(ref.name, ref.where)
        self.nodes: dict[str, ServiceNode] = {
            name: ServiceNode(name, value, definitions.get(name))
            for name, value in resources.items() if IService.providedBy(value)
        }
        for node in self.nodes.values():
            node.needs = sorted(self._services_reached_from(node.name))
            for need in node.needs:
                self.nodes[need].needed_by.append(node.name)
        self.stopping = False

    @classmethod
    def of(cls, runtime) -> "ServiceGraph":
        """The graph of a resolved runtime; its cycles are added to the runtime's errors."""
        graph = cls(runtime.resources, runtime.definitions, runtime.references)
        for message, where in graph.cycles():
            runtime.errors.add(message, where, "a resource cannot need itself, directly or through others")
        return graph

    def _services_reached_from(self, start: str) -> set[str]:
        found: set[str] = set()
        seen = {start}
        todo = list(self.edges[start])
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.nodes:
                found.add(name)  # a service: what it needs is its own business
            else:
                todo.extend(self.edges.get(name, ()))
        found.discard(start)
        return found

    def cycles(self) -> list[tuple[str, Location]]:
        """Each cycle of references once: ``("dependency cycle: a → b → a", where b names a)``."""
        reported: set[frozenset] = set()
        problems = []
        color: dict[str, int] = {}
        for root in self.edges:
            if color.get(root):
                continue
            path: list[str] = []
            stack = [(root, iter(sorted(self.edges[root])))]
            color[root] = 1
            path.append(root)
            while stack:
                name, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    path.pop()
                    color[name] = 2
                    continue
                state = color.get(child, 0)
                if state == 1:
                    loop = path[path.index(child):]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        text = " → ".join(loop + [child])
                        problems.append((f"dependency cycle: {text}", self.edges[name][child]))
                elif state == 0:
                    color[child] = 1
                    path.append(child)
                    stack.append((child, iter(sorted(self.edges.get(child, ())))))
        return problems

    # -- order ---------------------------------------------------------------------------------------------

    def start_steps(self) -> list[list[str]]:
        """The start order as steps; the services of one step start side by side."""
        steps: list[list[str]] = []
        for stage in STAGES:
            names = [name for name, node in self.nodes.items() if node.stage == stage]
            depth = self._depths(names, lambda node: node.needs)
            steps.extend(_grouped(depth))
        return steps

    def stop_steps(self) -> list[list[str]]:
        """The stop order as steps: the sites first, then each service after all that need it."""
        sites = sorted(name for name, node in self.nodes.items() if node.stage == SITE)
        rest = [name for name, node in self.nodes.items() if node.stage != SITE]
        depth = self._depths(rest, lambda node: node.needed_by)
        return ([sites] if sites else []) + _grouped(depth)

    def _depths(self, names: list[str], before) -> dict[str, int]:
        depth: dict[str, int] = {}

        def of(name: str) -> int:
            if name not in depth:
                depth[name] = 0  # guards against cycles, which are reported elsewhere
                earlier = [of(other) + 1 for other in before(self.nodes[name]) if other in names]
                depth[name] = max(earlier, default=0)
            return depth[name]

        for name in names:
            of(name)
        return depth

    def describe(self) -> str:
        """The graph as text: each service and what it needs, then the start and stop order."""
        lines = ["services (what each needs):"]
        for name in sorted(self.nodes):
            node = self.nodes[name]
            lines.append(f"  {name} [{node.stage}] ← needs {', '.join(node.needs) or 'nothing'}")
        lines.append("start order:")
        lines += [f"  {number}. {', '.join(step)}" for number, step in enumerate(self.start_steps(), 1)]
        lines.append("stop order:")
        lines += [f"  {number}. {', '.join(step)}" for number, step in enumerate(self.stop_steps(), 1)]
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {name: node.as_json() for name, node in self.nodes.items()}

    # -- start -----------------------------------------------------------------------------------------------

    @inlineCallbacks
    def start(self):
        """Start every service in order; fails with :class:`StartFailed` if any did not start."""
        for stage in STAGES:
            nodes = [node for node in self.nodes.values() if node.stage == stage]
            begun: dict = {}

            def begin(node):
                if node.name not in begun:
                    needs = [begin(self.nodes[name]) for name in node.needs if self.nodes[name].stage == stage]
                    begun[node.name] = DeferredList(needs, consumeErrors=True).addCallback(
                        lambda _, node=node: self._start(node))
                return begun[node.name]

            yield DeferredList([begin(node) for node in nodes], consumeErrors=True)
            failed = [node for node in nodes if node.failure is not None]
            if failed:
                raise StartFailed([node.name for node in failed], failed[0].failure)
            if self.stopping:
                return

    def _start(self, node: ServiceNode):
        if node.state == RUNNING:
            return None  # kept running from the configuration before a reload
        if self.stopping or any(self.nodes[name].state != RUNNING for name in node.needs):
            return None  # stopping already, or something it needs did not start: it stays waiting
        node.state = STARTING
        log.debug("starting {name}", name=node.name)
        starting = maybeDeferred(node.service.startService)

        def started(_):
            node.state = RUNNING
            return None

        def failed(failure):
            node.state = FAILED
            node.failure = failure
            log.error("{name} did not start: {reason}", name=node.name, reason=failure.getErrorMessage())
            return None

        return starting.addCallbacks(started, failed)

    @inlineCallbacks
    def start_again(self, names: Iterable[str]):
        """Start stopped services again, in start order (a reload that failed gives back what it stopped)."""
        for step in self.start_steps():
            for name in step:
                if name in names and self.nodes[name].state == STOPPED:
                    self.nodes[name].state = WAITING
                    yield self._start(self.nodes[name])

    # -- stop ------------------------------------------------------------------------------------------------

    @inlineCallbacks
    def stop(self, only: Optional[set] = None):
        """Stop every running service in order (or only those named in *only*, as a reload does with the
        services it replaced); fires True when all stopped cleanly."""
        nodes = {name: node for name, node in self.nodes.items() if only is None or name in only}
        if only is None:
            self.stopping = True
        clean = [True]
        sites = [node for node in nodes.values() if node.stage == SITE]
        yield DeferredList([self._stop(node, clean) for node in sites])
        rest = {name: node for name, node in nodes.items() if node.stage != SITE}
        ended: dict = {}

        def end(node):
            if node.name not in ended:
                ended[node.name] = succeed(None)  # guards against cycles, which are reported elsewhere
                after = [end(rest[name]) for name in node.needed_by if name in rest]
                ended[node.name] = DeferredList(after).addCallback(
                    lambda _, node=node: self._stop(node, clean))
            return ended[node.name]

        yield DeferredList([end(node) for node in rest.values()])
        return clean[0]

    def _stop(self, node: ServiceNode, clean: list):
        if not node.service.running:
            if node.state in (RUNNING, STARTING):
                node.state = STOPPED
            return succeed(None)
        node.state = DRAINING if node.stage == SITE else STOPPING
        log.debug("stopping {name}", name=node.name)

        def stopped(_):
            node.state = STOPPED
            return None

        def failed(failure):
            node.state = FAILED
            clean[0] = False
            log.failure("{name} did not stop cleanly", failure, name=node.name)
            return None

        return maybeDeferred(node.service.stopService).addCallbacks(stopped, failed)

    def unfinished(self) -> list[ServiceNode]:
        """The services still starting, draining or stopping."""
        return [node for node in self.nodes.values() if node.state in (STARTING, DRAINING, STOPPING)]


def _grouped(depth: dict[str, int]) -> list[list[str]]:
    steps: dict[int, list[str]] = {}
    for name, level in depth.items():
        steps.setdefault(level, []).append(name)
    return [sorted(steps[level]) for level in sorted(steps)]
