"""Reloading the configuration of a running daemon (SIGHUP): what is kept, what is replaced, in what order.

A reload builds the new configuration completely (every problem reported with its file and line, and the
old configuration kept running if there is any) and then compares it with the running one, service by
service. What each service was built from is recorded when it is registered
(``runtime.register(..., settings=...)``):

* a service whose settings did not change, and whose needed services are all kept, **keeps running**: the new
  configuration's references resolve to the running object (a NER pool keeps its children, a store its
  connection, a pending table the requests waiting in it); when the reload is applied, the references the
  kept service holds itself (a pending table's fallback, a tick's or a consumer's pipeline) are pointed at
  the new configuration's resources;
* a service with an ``adopt`` method (a web site) is kept whenever its own settings (its port and interface)
  did not change, whatever it needs: it adopts the newly built object (routes, limits, timeouts) on the spot,
  so its port and its open connections stay, and what it needs follows the new routes;
* every other service is **replaced**: the new one is started beside the old, and the old one stops once the
  requests accepted before the reload are over (a service marked ``exclusive``, such as a stream consumer
  that must not read beside its successor under the same consumer name, stops before its successor starts).

Contexts keep their contents; pipelines, routes and everything that is not a service are simply new.
Requests accepted before the swap finish on the pipelines they started on; later ones use the new.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from twisted.application.service import IService

from pipedingest.config.loader import plain
from pipedingest.graph import RUNNING, ServiceGraph


@dataclass
class Carried:
    """What a newly built configuration takes over from the running one."""

    #: Services kept running, by name: the running objects, now also the new configuration's.
    kept: dict = field(default_factory=dict)
    #: Kept services that take over a newly built object when the reload is applied: name → that object.
    adopting: dict = field(default_factory=dict)
    #: The running configuration's references held by kept services (pointed at the new resources on apply).
    references: list = field(default_factory=list)


def carry_over(previous_runtime, previous_graph: ServiceGraph, runtime) -> Carried:
    """Decide what *runtime* (configured, not yet resolved) keeps of the running configuration, and substitute
    the running objects for the ones it built."""
    draft = ServiceGraph(runtime.resources, runtime.definitions, runtime.references)
    decided: dict[str, bool] = {}

    def keepable(name: str) -> bool:
        if name not in decided:
            decided[name] = False  # guards against cycles, which are configuration errors anyway
            old = previous_graph.nodes.get(name)
            new = draft.nodes[name]
            same = (old is not None and old.state == RUNNING and type(old.service) is type(new.service)
                    and name in runtime.settings and previous_runtime.settings.get(name) == runtime.settings[name])
            if same and not hasattr(old.service, "adopt"):
                same = all(keepable(need) for need in new.needs)
            decided[name] = same
        return decided[name]

    carried = Carried()
    for name in draft.nodes:
        if keepable(name):
            built, running = runtime.resources[name], previous_graph.nodes[name].service
            carried.kept[name] = running
            if hasattr(running, "adopt"):
                carried.adopting[name] = built
            runtime.resources[name] = running
    for name, value in previous_runtime.resources.items():
        if name.startswith("context.") and name in runtime.resources:
            runtime.resources[name] = value  # state, not settings: what the pipelines parked there stays
    carried.references = [ref for ref in previous_runtime.references
                          if ref.by in carried.kept and ref.by not in carried.adopting]
    return carried


def mark_kept(graph: ServiceGraph, carried: Carried) -> None:
    """The kept services are running already: the new graph's start passes over them."""
    for name in carried.kept:
        graph.nodes[name].state = RUNNING


def replaced(previous_graph: ServiceGraph, carried: Carried) -> set[str]:
    """The running services the new configuration does not keep."""
    kept = {id(service) for service in carried.kept.values()}
    return {name for name, node in previous_graph.nodes.items()
            if id(node.service) not in kept and IService.providedBy(node.service)}


def checksum(config) -> str:
    """The SHA-256 of a loaded configuration (includes, variables and overrides applied), canonical JSON."""
    text = json.dumps(plain(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
