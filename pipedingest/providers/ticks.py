"""``ticks: interval: <name>: {interval, processor}``: run a pipeline periodically.

Each tick runs the pipeline with a fresh baton ``{"tick": name, "time": now}``.
A tick whose previous run has not finished is skipped (LoopingCall waits), and
a failing run is logged without stopping the ticks.
"""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
from pipedingest.providers.base import IProvider, Provider

log = Logger()

TICK_OPTIONS = {
    "interval": Option(float, doc="seconds between runs"),
    "processor": Option(str, doc="the pipeline to run, as pipeline.<name>"),
    "auto_start": Option(bool, True, "start ticking when the daemon starts"),
    "run_at_start": Option(bool, False, "run once immediately at start"),
}


class TickService(Service):
    """Runs a pipeline every *interval* seconds on an injectable clock."""

    def __init__(self, name: str, interval: float, pipeline, clock, auto_start=True, run_at_start=False):
        self.name = name
        self.interval = interval
        self.pipeline = pipeline  # a Reference
        self.clock = clock
        self.auto_start = auto_start
        self.run_at_start = run_at_start
        self.loop = LoopingCall(self.tick)
        self.loop.clock = clock
        self.runs = 0

    def tick(self):
        self.runs += 1
        baton = {"tick": self.name, "time": self.clock.seconds()}
        return self.pipeline.value(baton).addErrback(self._failed)

    def _failed(self, failure):
        log.failure("tick {name!r} failed", failure, name=self.name)

    def startService(self):
        super().startService()
        if self.auto_start:
            self.loop.start(self.interval, now=self.run_at_start)

    def stopService(self):
        super().stopService()
        if self.loop.running:
            self.loop.stop()


@implementer(IPlugin, IProvider)
class TicksProvider(Provider):
    section = "ticks"
    order = 60

    def configure(self, value, where, daemon) -> None:
        errors = daemon.runtime.errors
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
            if settings["interval"] <= 0:
                errors.add(f"tick {name!r} needs a positive interval", spec.where_of("interval"))
                continue
            reference = daemon.pipeline_reference(settings["processor"], spec.where_of("processor"))
            if reference is None:
                continue
            service = TickService(name, settings["interval"], reference, daemon.runtime.reactor,
                                  settings["auto_start"], settings["run_at_start"])
            daemon.runtime.register(f"tick.{name}", service, ticks.where_of(name))
            daemon.add_service(service, "ticks")


provider = TicksProvider()
