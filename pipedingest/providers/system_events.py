"""``system-events: startup|shutdown: <name>: pipeline.<x>``: pipelines run when the daemon starts or stops.

Startup pipelines run once every service has started (sites listen, ticks tick),
before the status tests; shutdown pipelines run when a stop begins, before any
service stops.  Each gets the baton ``{"event": "startup"|"shutdown", "name": name}``.
Registered as ``event.<startup|shutdown>.<name>``, each needing its pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.providers.base import IProvider, Provider

EVENTS = ("startup", "shutdown")


@dataclass
class SystemEvent:
    """A pipeline to run when the daemon starts or stops."""

    event: str
    name: str
    pipeline: object  # a Reference

    def run(self):
        return self.pipeline.value({"event": self.event, "name": self.name})


@implementer(IPlugin, IProvider)
class SystemEventsProvider(Provider):
    section = "system-events"
    order = 60

    def configure(self, value, where, runtime) -> None:
        errors = runtime.errors
        if value is None:
            return
        if not isinstance(value, dict):
            errors.add("'system-events' must be a mapping with 'startup' and/or 'shutdown'", where)
            return
        for event, handlers in value.items():
            if event not in EVENTS:
                errors.add(f"unknown system event {event!r}", value.where_of_key(event),
                           "use 'startup' or 'shutdown'")
                continue
            if not isinstance(handlers, dict):
                errors.add(f"'system-events.{event}' must map names to pipelines", value.where_of(event),
                           f"system-events: {{{event}: {{my-task: pipeline.my-task}}}}")
                continue
            for name, processor in handlers.items():
                resource = f"event.{event}.{name}"
                reference = runtime.pipeline_reference(processor, handlers.where_of(name), by=resource)
                if reference is not None:
                    runtime.register(resource, SystemEvent(event, name, reference), handlers.where_of(name))


provider = SystemEventsProvider()
