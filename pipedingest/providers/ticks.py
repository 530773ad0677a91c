"""``ticks: interval: <name>: {interval, processor}``: run a pipeline periodically.

Each tick runs the pipeline with a fresh baton ``{"tick": name, "time": now}``.
A tick whose previous run has not finished is skipped (the next run waits for
it), a failing run is logged without stopping the ticks, and stopping a tick
waits for the run in progress.  Ticks start once the sites listen (they are in
the ``tick`` stage of the service graph) and need what their pipeline needs.
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
from pipedingest.graph import TICK
from pipedingest.periodic import PeriodicService
from pipedingest.providers.base import IProvider, Provider

TICK_OPTIONS = {
    "interval": Option(float, doc="seconds between runs", above=0),
    "processor": Option(str, doc="the pipeline to run, as pipeline.<name>"),
    "auto_start": Option(bool, True, "start ticking when the daemon starts"),
    "run_at_start": Option(bool, False, "run once immediately at start"),
}


class TickService(PeriodicService):
    """Runs a pipeline every *interval* seconds on an injectable clock."""

    stage = TICK

    def __init__(self, name: str, interval: float, pipeline, clock, auto_start=True, run_at_start=False):
        super().__init__(interval, clock, now=run_at_start, auto_start=auto_start)
        self.setName(f"tick.{name}")
        self.tick = name
        self.pipeline = pipeline  # a Reference

    @property
    def runs(self) -> int:
        return self.calls

    def run_once(self):
        return self.pipeline.value({"tick": self.tick, "time": self.clock.seconds()})


@implementer(IPlugin, IProvider)
class TicksProvider(Provider):
    section = "ticks"
    order = 60

    def configure(self, value, where, runtime) -> None:
        errors = runtime.errors
        if value is None:
            return
        if not isinstance(value, dict) or set(value) - {"interval"}:
            errors.add("'ticks' takes one key, 'interval'", where,
                       "ticks: {interval: {reaper: {interval: 1, processor: pipeline.reap}}}")
            return
        ticks = value.get("interval") or {}
        if not isinstance(ticks, dict):
            errors.add("'ticks.interval' must map tick names to settings", value.where_of("interval"))
            return
        for name, spec in ticks.items():
            settings = check_section(TICK_OPTIONS, spec, f"tick {name!r}", errors, ticks.where_of(name))
            if settings is None:
                continue
            reference = runtime.pipeline_reference(settings["processor"], spec.where_of("processor"),
                                                   by=f"tick.{name}")
            if reference is None:
                continue
            service = TickService(name, settings["interval"], reference, runtime.clock,
                                  settings["auto_start"], settings["run_at_start"])
            runtime.register(f"tick.{name}", service, ticks.where_of(name), settings=settings)


provider = TicksProvider()
