"""The configuration as a Graphviz picture: ``twistd ingest -c FILE --graph``.

``--check`` prints the service graph as text; this draws what an operator edits and
what it sets running: each site's routes, the pipeline each route runs (a cluster:
its steps in order, its error steps dashed), and what each step names (another
pipeline, a pending table, a store, the NER pool, a stream) down to the services that
must run for it.  Each service shows its stage and its place in the start and stop
order, as :class:`~pipedingest.graph.ServiceGraph` computes them.

Everything is drawn from the references the checked configuration took
(:mod:`pipedingest.engine.runtime`): a step's are found among its processor's
attributes, every other reference is drawn from whoever took it.  A new processor or
provider therefore appears without any change here.  Nothing is started.

Node ids are the resource names (``pipeline.web.index``, ``store.articles``) and,
for steps and routes, names derived from them; all are quoted, so any name is valid
``dot``.  Render with ``dot -Tsvg``.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from pipedingest.engine.pipeline import Pipeline, Step
from pipedingest.engine.runtime import Reference
from pipedingest.graph import RESOURCE, SITE, ServiceGraph

FONT = "Helvetica"
SERVICE_FILL = {"resource": "#fff2cc", "site": "#dae8fc", "tick": "#e1d5e7"}
LEGEND = ("routes → pipelines (steps in order; dashed: on error) → what they name. "
          "Services show their stage and their step in the start and stop order.")


def quote(text: str) -> str:
    """*text* as a quoted dot string: any id or label is valid, and a label's lines stay lines."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def attributes(**values) -> str:
    shown = ", ".join(f"{key}={quote(value)}" for key, value in values.items() if value is not None)
    return f" [{shown}]" if shown else ""


def render(runtime, graph: ServiceGraph, title: str) -> str:
    """The dot text of a checked configuration (its runtime and its service graph)."""
    return "\n".join(_Drawing(runtime, graph, title).lines()) + "\n"


class _Drawing:
    def __init__(self, runtime, graph: ServiceGraph, title: str):
        self.runtime = runtime
        self.graph = graph
        self.title = title
        self.resources = runtime.resources
        self.pipelines = {name: value for name, value in self.resources.items() if isinstance(value, Pipeline)}
        self.sites = [name for name, node in graph.nodes.items() if node.stage == SITE]
        self.start_step = _step_numbers(graph.start_steps())
        self.stop_step = _step_numbers(graph.stop_steps())
        #: References drawn so far (by identity), so that each edge is drawn once.
        self.drawn: set[int] = set()

    def lines(self) -> Iterator[str]:
        yield f"digraph {quote(self.title)} {{"
        yield "  graph" + attributes(rankdir="LR", fontname=FONT, fontsize="11", labelloc="t", newrank="true",
                                     label=f"{self.title}\n{LEGEND}")
        yield "  node" + attributes(fontname=FONT, fontsize="10", shape="box", style="rounded")
        yield "  edge" + attributes(fontname=FONT, fontsize="9", color="#555555")
        for site in self.sites:
            yield from self.site(site)
        for name, pipeline in self.pipelines.items():
            yield from self.pipeline(name, pipeline)
        for name in self.other_resources():
            yield from self.resource(name)
        resources = [name for name, node in self.graph.nodes.items() if node.stage == RESOURCE]
        if resources:  # one column, the right-most reached: what everything above runs on
            yield "  { rank=same; " + " ".join(quote(name) for name in resources) + " }"
        for ref in self.runtime.references:
            if id(ref) not in self.drawn and ref.by is not None:
                yield from self.edge(ref.by, ref)
        yield "}"

    # -- sites and their routes -------------------------------------------------------------------------

    def site(self, name: str) -> Iterator[str]:
        service = self.resources[name]
        resource = service.resource
        yield f"  subgraph {quote('cluster_' + name)} {{"
        yield "    graph" + attributes(label="", style="rounded,filled", fillcolor="#f5f8fd", color="#6c8ebf")
        address = service.listener.shown
        yield f"    {quote(name)}" + self.service_attributes(name, f"{address}\n")
        routes = list(_routes(resource.tree))
        for number, route in enumerate(routes, 1):
            node = f"{name} route {number}"
            yield f"    {quote(node)}" + attributes(label=_route_label(route), shape="cds", style="filled",
                                                   fillcolor="#ffffff", tooltip=str(route.pipeline.where))
        if resource.builtin:
            paths = " ".join(f"/{path}" for path in sorted(resource.builtin))
            yield f"    {quote(name + ' built-in')}" + attributes(label=f"GET {paths}\n(built in)", shape="cds",
                                                                 style="filled,dashed", fillcolor="#ffffff")
        yield "  }"
        for number, route in enumerate(routes, 1):
            node = f"{name} route {number}"
            yield f"  {quote(name)} -> {quote(node)}" + attributes(arrowhead="none")
            yield from self.edge(node, route.pipeline)
        if resource.builtin:
            yield f"  {quote(name)} -> {quote(name + ' built-in')}" + attributes(arrowhead="none")
            if isinstance(resource.status, Reference):
                yield from self.edge(name + " built-in", resource.status)

    # -- pipelines and their steps --------------------------------------------------------------------------

    def pipeline(self, name: str, pipeline: Pipeline) -> Iterator[str]:
        yield f"  subgraph {quote('cluster_' + name)} {{"
        yield "    graph" + attributes(label=_short(pipeline.where), fontsize="9", labeljust="l",
                                       style="rounded,filled", fillcolor="#f7f7f7", color="#bbbbbb")
        yield f"    {quote(name)}" + attributes(label=name, style="rounded,filled,bold", fillcolor="#ffffff",
                                               tooltip=f"{name}, defined at {pipeline.where}")
        chains = [(pipeline.steps, "step", None)]
        if pipeline.error_steps:
            chains.append((pipeline.error_steps, "on error", "dashed"))
        for steps, kind, style in chains:
            for number, step in enumerate(steps, 1):
                yield f"    {quote(_step_id(name, kind, number))}" + attributes(
                    label=step.name, style=("rounded," + style) if style else None, tooltip=str(step.where))
        yield "  }"
        for steps, kind, style in chains:
            previous = name
            for number, step in enumerate(steps, 1):
                node = _step_id(name, kind, number)
                label = "on error" if style and number == 1 else None
                yield f"  {quote(previous)} -> {quote(node)}" + attributes(
                    style=style, label=label, color="#b85450" if style else "#000000", weight="10")
                previous = node
                for ref in _references_of(step, self.runtime.references):
                    yield from self.edge(node, ref)
        if pipeline.error_pipeline is not None:
            yield from self.edge(name, pipeline.error_pipeline, style="dashed", label="on error", color="#b85450")

    # -- services and other resources --------------------------------------------------------------------------

    def other_resources(self) -> list[str]:
        """Every service, and every resource a reference names or comes from, but pipelines and sites."""
        named = set(self.graph.nodes)
        for ref in self.runtime.references:
            named.update(name for name in (ref.name, ref.by) if name is not None)
        return [name for name in [*self.resources, *sorted(named - set(self.resources))]
                if name in named and name not in self.pipelines and name not in self.sites]

    def resource(self, name: str) -> Iterator[str]:
        if name in self.graph.nodes:
            yield f"  {quote(name)}" + self.service_attributes(name)
        else:
            where = self.runtime.definitions.get(name)
            yield f"  {quote(name)}" + attributes(shape="note", style="filled", fillcolor="#eeeeee",
                                                  tooltip=f"defined at {where}" if where else None)

    def service_attributes(self, name: str, detail: str = "") -> str:
        node = self.graph.nodes[name]
        order = f"{node.stage} · starts {self.start_step.get(name, '?')} · stops {self.stop_step.get(name, '?')}"
        tooltip = f"defined at {node.where}; needs {', '.join(node.needs) or 'nothing'}"
        return attributes(label=f"{name}\n{detail}{order}", style="filled,bold",
                          fillcolor=SERVICE_FILL.get(node.stage, "#ffffff"), tooltip=tooltip)

    # -- edges ---------------------------------------------------------------------------------------------------

    def edge(self, tail: str, ref: Reference, **style) -> Iterator[str]:
        self.drawn.add(id(ref))
        yield f"  {quote(tail)} -> {quote(ref.name)}" + attributes(tooltip=f"{ref.where}", **style)


def _routes(tree) -> Iterator:
    """Every route of a routing tree, depth first, as the site matches them."""
    yield from tree.routes
    for child in tree.children.values():
        yield from _routes(child)
    if tree.param is not None:
        yield from _routes(tree.param[1])


def _route_label(route) -> str:
    methods = set(route.methods or ())
    if "GET" in methods:
        methods.discard("HEAD")  # added by the site to every GET route
    label = f"{' '.join(sorted(methods)) or 'ANY'} {route.pattern}"
    if route.accepts:
        label += "\n" + ", ".join(sorted(route.accepts))
    return label


def _references_of(step: Step, references: Iterable[Reference]) -> list[Reference]:
    """The references *step*'s processor keeps, in the order they were taken."""
    held = {id(value) for value in _values(vars(step.processor)) if isinstance(value, Reference)}
    return [ref for ref in references if id(ref) in held]


def _values(value, depth: int = 0) -> Iterator:
    if depth > 3:
        return
    if isinstance(value, dict):
        for item in value.values():
            yield item
            yield from _values(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield item
            yield from _values(item, depth + 1)
    elif type(value).__module__.startswith("pipedingest.processors.") and hasattr(value, "__dict__"):
        yield from _values(vars(value), depth + 1)  # a processor's helper (KnownLabels) holding references


def _step_id(pipeline: str, kind: str, number: int) -> str:
    return f"{pipeline} {kind} {number}"


def _step_numbers(steps: list[list[str]]) -> dict[str, int]:
    return {name: number for number, step in enumerate(steps, 1) for name in step}


def _short(where) -> str:
    """``file:line`` of a definition (the column only clutters a cluster's label)."""
    return f"{where.file}:{where.line}" if where is not None and where.line else str(where or "")
