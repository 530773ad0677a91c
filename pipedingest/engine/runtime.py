"""Named resources and the references between them.

Everything a configuration defines gets a dotted resource name:
``pipeline.web.compute``, ``context.pending``, ``site.main`` …  While the
configuration is checked, processors and providers ask for the resources they
need as :class:`Reference` objects; once every section has registered its
resources, :meth:`Runtime.resolve` checks all references at once, so a
misspelt pipeline name is one more error in the report rather than a crash at
request time.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from pipedingest.config.errors import ConfigError, ErrorCollector, Location, close_matches_hint


class Reference:
    """A resource name seen in the configuration, resolved after loading."""

    _UNRESOLVED = object()

    def __init__(self, name: str, where: Location, wanted: str = "resource"):
        self.name = name
        self.where = where
        self.wanted = wanted
        self._value: Any = self._UNRESOLVED

    @property
    def value(self) -> Any:
        if self._value is self._UNRESOLVED:
            raise RuntimeError(f"reference {self.name!r} used before the configuration was resolved")
        return self._value

    def __repr__(self) -> str:
        return f"<Reference {self.name} at {self.where}>"


class Runtime:
    """The resources of one daemon, by name, and the references to them."""

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.errors = ErrorCollector()
        self.resources: dict[str, Any] = {}
        self.definitions: dict[str, Location] = {}
        self._references: list[Reference] = []

    def register(self, name: str, value: Any, where: Optional[Location] = None) -> None:
        if name in self.resources:
            first = self.definitions.get(name)
            self.errors.add(f"{name!r} is defined twice", where, f"first defined at {first}" if first else "")
            return
        self.resources[name] = value
        self.definitions[name] = where

    def reference(self, name: str, where: Location, wanted: str = "resource") -> Reference:
        ref = Reference(name, where, wanted)
        self._references.append(ref)
        return ref

    def get(self, name: str) -> Any:
        return self.resources[name]

    def names(self, prefix: str) -> list[str]:
        return [name for name in self.resources if name.startswith(prefix)]

    def resolve(self) -> None:
        """Resolve every reference taken so far, reporting each unknown name."""
        for ref in self._references:
            if ref.name in self.resources:
                ref._value = self.resources[ref.name]
                continue
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

    def where_of(self, key: str) -> Location:
        return self._option_locations.get(key, self.where)

    def pipeline_reference(self, name: str, key: str = "pipeline") -> Reference:
        """Reference a pipeline by absolute name, ``.sibling`` or ``..uncle`` name."""
        absolute = resolve_pipeline_name(name, self.pipeline)
        if absolute is None:
            raise ConfigError(f"relative pipeline name {name!r} climbs above the top of 'pipelines'",
                              "use fewer leading dots or an absolute name", key=key)
        return self.runtime.reference("pipeline." + absolute, self.where_of(key), "pipeline")

    def context_reference(self, name: str, key: str = "context") -> Reference:
        return self.runtime.reference("context." + name, self.where_of(key), "context")


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
