"""Named resources and the references between them.

Everything a configuration defines gets a dotted resource name:
``pipeline.web.compute``, ``context.pending``, ``site.main`` …  While the
configuration is checked, processors and providers ask for the resources they
need as :class:`Reference` objects; once every section has registered its
resources, :meth:`Runtime.resolve` checks all references at once, so a
misspelt pipeline name is one more error in the report rather than a crash at
request time.

Each reference also records *who* needs the resource (``by``): a route's site,
a pipeline whose step names it, a pending table's fallback.  Those edges are
the daemon's dependency graph, from which its services' start and stop order
follows (see :mod:`pipedingest.graph`).
"""
from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Iterator, Optional

from pipedingest.config.errors import ConfigError, ErrorCollector, Location, close_matches_hint
from pipedingest.config.schema import shown, type_name
from pipedingest.engine.registry import ProcessorRegistry


class Reference:
    """A resource name seen in the configuration, resolved after loading."""

    _UNRESOLVED = object()

    def __init__(self, name: str, where: Location, wanted: str = "resource", by: Optional[str] = None):
        self.name = name
        self.where = where
        self.wanted = wanted
        #: The resource that needs this one (None: nobody in particular, e.g. a test).
        self.by = by
        self._value: Any = self._UNRESOLVED

    def resolve(self, value: Any) -> None:
        self._value = value

    @property
    def value(self) -> Any:
        if self._value is self._UNRESOLVED:
            raise RuntimeError(f"reference {self.name!r} used before the configuration was resolved")
        return self._value

    def __repr__(self) -> str:
        return f"<Reference {self.name} at {self.where}>"


class Runtime:
    """The resources of one daemon, by name, and the references to them."""

    def __init__(self, reactor=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        #: What listens and connects (IReactorTCP ...).
        self.reactor = reactor
        #: What times things (IReactorTime): the reactor, or a ``task.Clock`` in tests.
        self.clock = clock if clock is not None else reactor
        self.errors = ErrorCollector()
        self.processors = ProcessorRegistry()
        self.resources: dict[str, Any] = {}
        self.definitions: dict[str, Location] = {}
        self.references: list[Reference] = []
        #: What each service was built from, as canonical text: a reload keeps a service running when this is
        #: unchanged (see :mod:`pipedingest.reload`); a service registered without it is always replaced.
        self.settings: dict[str, str] = {}
        #: Names whose definition was wrong (and reported): a reference to one of them is a consequence.
        self.failed: set[str] = set()
        self._owner: Optional[str] = None

    def register(self, name: str, value: Any, where: Optional[Location] = None, settings: Any = None) -> None:
        """Name *value*; *settings* (plain data) is what a service was built from, for reloads."""
        if name in self.resources:
            first = self.definitions.get(name)
            self.errors.add(f"{name!r} is defined twice", where, f"first defined at {first}" if first else "")
            return
        self.resources[name] = value
        self.definitions[name] = where
        if settings is not None:
            self.settings[name] = json.dumps(settings, sort_keys=True, default=repr)

    def definition_failed(self, name: str) -> None:
        """The definition of *name* (or of every ``name.*``: ``pipeline.web``, ``store``) was wrong.

        Its problem has been reported where it is written; the references to it are
        not reported again as unknown names, so that the root cause stands alone
        instead of behind one "unknown store" line per step that uses the store.
        """
        self.failed.add(name)

    def reference(self, name: str, where: Location, wanted: str = "resource", by: Optional[str] = None) -> Reference:
        """A reference to the resource *name*, needed by the resource *by*.

        Without *by*, the resource being built (see :meth:`building`) is the one
        that needs it, so a processor written before ``by`` existed still declares
        its dependency.
        """
        ref = Reference(name, where, wanted, by if by is not None else self._owner)
        self.references.append(ref)
        return ref

    def pipeline_reference(self, name: Any, where: Location, by: str) -> Optional[Reference]:
        """A reference to the pipeline *name*, written ``pipeline.x``; None after reporting a bad name."""
        if not isinstance(name, str):
            self.errors.add(f"{type_name(name)} cannot name a pipeline", where, "write pipeline.<name>")
            return None
        if not name.startswith("pipeline."):
            self.errors.add(f"{shown(name)} must name a pipeline", where, f"write pipeline.{name}")
            return None
        return self.reference(name, where, "pipeline", by=by)

    @contextlib.contextmanager
    def building(self, owner: str) -> Iterator[None]:
        """References taken inside this block are needed by *owner*."""
        outer, self._owner = self._owner, owner
        try:
            yield
        finally:
            self._owner = outer

    def get(self, name: str) -> Any:
        return self.resources[name]

    def names(self, prefix: str) -> list[str]:
        return [name for name in self.resources if name.startswith(prefix)]

    def resolve(self) -> None:
        """Resolve every reference taken so far, reporting each unknown name.

        A name whose definition failed is not reported again (see :meth:`definition_failed`),
        unless nothing else was: a configuration with an unresolved name is never clean.
        """
        consequences = []
        for ref in self.references:
            if ref.name in self.resources:
                ref.resolve(self.resources[ref.name])
            elif self._failed(ref.name):
                consequences.append(ref)
            else:
                self._unknown(ref)
        if consequences and not self.errors:
            for ref in consequences:
                self._unknown(ref)

    def _failed(self, name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:length]) in self.failed for length in range(1, len(parts) + 1))

    def _unknown(self, ref: Reference) -> None:
        kind = ref.name.split(".", 1)[0] + "."
        candidates = [name[len(kind):] for name in self.names(kind)]
        hint = close_matches_hint(ref.name[len(kind):], candidates, f"{ref.wanted}s")
        hint = _prefixed(hint, kind)
        self.errors.add(f"unknown {ref.wanted} {ref.name!r}", ref.where, hint)


def _prefixed(hint: str, kind: str) -> str:
    """Put the resource kind back on the names a hint quotes."""
    return re.sub(r"'([^']+)'", lambda m: f"'{kind}{m.group(1)}'", hint)


class StepContext:
    """What a processor may know about where it stands while it is configured."""

    def __init__(self, runtime: Runtime, pipeline: str, where: Location, option_locations: dict):
        self.runtime = runtime
        self.pipeline = pipeline
        self.where = where
        self._option_locations = option_locations

    @property
    def reactor(self):
        return self.runtime.reactor

    @property
    def clock(self):
        return self.runtime.clock

    def where_of(self, key: str) -> Location:
        return self._option_locations.get(key, self.where)

    def reference(self, name: str, key: Optional[str] = None, wanted: str = "resource") -> Reference:
        """A resource this step's pipeline needs; *key* is the option that names it (for error lines)."""
        where = self.where_of(key) if key else self.where
        return self.runtime.reference(name, where, wanted, by="pipeline." + self.pipeline)

    def pipeline_reference(self, name: str, key: str = "pipeline") -> Reference:
        """Reference a pipeline by absolute name, ``.sibling`` or ``..uncle`` name."""
        absolute = resolve_pipeline_name(name, self.pipeline)
        if absolute is None:
            raise ConfigError(f"relative pipeline name {name!r} climbs above the top of 'pipelines'",
                              "use fewer leading dots or an absolute name", key=key)
        return self.reference("pipeline." + absolute, key, "pipeline")

    def context_reference(self, name: str, key: str = "context") -> Reference:
        return self.reference("context." + name, key, "context")


def resolve_pipeline_name(name: str, current: str) -> Optional[str]:
    """Turn ``.sibling``/``..uncle.x`` into an absolute dotted pipeline name.

    One leading dot names a pipeline beside *current* (``web.compute`` +
    ``.write`` → ``web.write``); each further dot climbs one level.
    """
    if name.startswith("pipeline."):
        name = name[len("pipeline."):]
    if not name.startswith("."):
        return name
    stripped = name.lstrip(".")
    dots = len(name) - len(stripped)
    base = current.split(".")[:-1]
    if dots - 1 > len(base):
        return None
    base = base[: len(base) - (dots - 1)]
    return ".".join([*base, stripped]) if base else stripped
