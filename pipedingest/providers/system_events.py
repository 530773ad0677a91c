"""``system-events: startup|shutdown: <name>: pipeline.<x>``: pipelines run when the daemon starts or stops.

Startup pipelines run once every service has started (sites are listening);
shutdown pipelines run before any service stops.  Each gets the baton
``{"event": "startup"|"shutdown", "name": name}``.
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.providers.base import IProvider, Provider

EVENTS = ("startup", "shutdown")


@implementer(IPlugin, IProvider)
class SystemEventsProvider(Provider):
    section = "system-events"
    order = 60

    def configure(self, value, where, daemon) -> None:
        errors = daemon.runtime.errors
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
                if not isinstance(processor, str):
                    errors.add(f"system event {name!r} must name a pipeline", handlers.where_of(name))
                    continue
                reference = daemon.pipeline_reference(processor, handlers.where_of(name))
                if reference is not None:
                    daemon.events[event].append((name, reference))


provider = SystemEventsProvider()
