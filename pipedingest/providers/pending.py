"""``pending:``: tables of requests waiting on work, each with a reaper.

::

    pending:
      ner:
        timeout: 30                 # seconds an entry may wait when its request sets no deadline
        reap_interval: 0.5          # how often the reaper looks
        fallback: pipeline.web.articles.timed-out   # answers a reaped request

Registered as ``pending.<name>``, a service that needs its fallback pipeline (and
so whatever that pipeline uses); processors that wait on slow work (such as
``extract-entities``) name the table they enter their baton in.
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option
from pipedingest.pending import PendingTable
from pipedingest.providers.base import IProvider, Provider

TABLE_OPTIONS = {
    "timeout": Option(float, 30.0, "seconds an entry may wait when its request sets no deadline", above=0),
    "reap_interval": Option(float, 0.5, "seconds between the reaper's looks", above=0),
    "fallback": Option((str, type(None)), None, "the pipeline that answers a reaped request (pipeline.x)"),
}


@implementer(IPlugin, IProvider)
class PendingProvider(Provider):
    section = "pending"
    order = 20
    entry_options = TABLE_OPTIONS
    entry_kind = "pending table"
    example = "pending: {ner: {timeout: 30, fallback: pipeline.web.timed-out}}"
    resource_prefix = "pending."

    def configure_entry(self, name, settings, spec, where, runtime) -> None:
        fallback = None
        if settings["fallback"]:
            fallback = runtime.pipeline_reference(settings["fallback"], spec.where_of("fallback"),
                                                  by=f"pending.{name}")
        table = PendingTable(name, runtime.clock, settings["timeout"], settings["reap_interval"], fallback)
        runtime.register(f"pending.{name}", table, where, settings=settings)


provider = PendingProvider()
