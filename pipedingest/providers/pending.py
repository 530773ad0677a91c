"""``pending:``: tables of requests waiting on work, each with a reaper.

::

    pending:
      ner:
        timeout: 30                 # seconds a request may wait
        reap_interval: 0.5          # how often the reaper looks
        fallback: pipeline.web.articles.timed-out   # answers a reaped request

Registered as ``pending.<name>``; processors that wait on slow work (such as
``extract-entities``) name the table they enter their baton in.
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
from pipedingest.pending import PendingTable, Reaper
from pipedingest.providers.base import IProvider, Provider

TABLE_OPTIONS = {
    "timeout": Option(float, 30.0, "seconds a request may wait before the reaper answers it"),
    "reap_interval": Option(float, 0.5, "seconds between the reaper's looks"),
    "fallback": Option((str, type(None)), None, "the pipeline that answers a reaped request (pipeline.x)"),
}


@implementer(IPlugin, IProvider)
class PendingProvider(Provider):
    section = "pending"
    order = 20

    def configure(self, value, where, daemon) -> None:
        errors = daemon.runtime.errors
        if value is None:
            return
        if not isinstance(value, dict):
            errors.add("'pending' must map table names to their settings", where,
                       "pending: {ner: {timeout: 30, fallback: pipeline.web.timed-out}}")
            return
        for name, spec in value.items():
            settings = check_section(TABLE_OPTIONS, spec, f"pending table {name!r}", errors, value.where_of(name))
            if settings is None:
                continue
            for key in ("timeout", "reap_interval"):
                if settings[key] <= 0:
                    errors.add(f"{key} of pending table {name!r} must be positive", spec.where_of(key))
            fallback = None
            if settings["fallback"]:
                fallback = daemon.pipeline_reference(settings["fallback"], spec.where_of("fallback"))
            table = PendingTable(name, daemon.runtime.reactor, settings["timeout"], fallback)
            daemon.runtime.register(f"pending.{name}", table, value.where_of(name))
            daemon.add_service(Reaper(table, settings["reap_interval"], daemon.runtime.reactor), "ticks")
            daemon.status.add_component(f"pending.{name}", table.state)


provider = PendingProvider()
