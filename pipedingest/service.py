"""The daemon: one MultiService built from a checked configuration.

:func:`build_daemon` gives every provider its section; each reports its
problems and contributes services and named resources.  Only when the whole
configuration is clean is an :class:`IngestService` returned, so no port is
bound for a configuration with mistakes.

Start-up order: resources (pools, stores), then sites, then ticks; then the
startup system events; then the status tests, whose outcome makes the daemon
ready (or not).  Shut-down runs the shutdown events, stops the sites from
accepting work, and stops the services in reverse order, within a deadline.
"""
from __future__ import annotations

import os
from typing import Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.plugin import getPlugins

from pipedingest.config.errors import Location, close_matches_hint
from pipedingest.config.loader import LocatedDict
from pipedingest.engine.registry import ProcessorRegistry
from pipedingest.engine.runtime import Runtime
from pipedingest.status import FAILED, READY, STOPPING, DaemonStatus
from pipedingest.statustest.http import StatusClient

log = Logger()

#: The exit status of a daemon whose services failed to start.
EXIT_START_FAILED = 3

#: Services start in this order and stop in the reverse one.
STAGES = ("resources", "sites", "ticks")


def load_providers() -> dict:
    import pipedingest.providers
    from pipedingest.providers.base import IProvider

    return {provider.section: provider for provider in getPlugins(IProvider, pipedingest.providers)}


class IngestService(MultiService):
    """The whole daemon."""

    def __init__(self, runtime: Runtime, shutdown_timeout: float = 30.0):
        super().__init__()
        self.runtime = runtime
        self.registry = ProcessorRegistry()
        self.status = DaemonStatus(runtime.reactor)
        self.pipelines: dict = {}
        self.sites: dict = {}
        self.events: dict[str, list] = {"startup": [], "shutdown": []}
        self.status_tests = None
        self._status_site: Optional[str] = None
        self._status_site_where: Optional[Location] = None
        self._staged: dict[str, list[Service]] = {stage: [] for stage in STAGES}
        self.shutdown_timeout = shutdown_timeout
        self.started = None
        #: Set by ``twistd ingest`` (not by --self-test or tests): a failed start ends the process.
        self.exit_on_start_failure = False

    # -- contributions from providers ------------------------------------

    def add_service(self, service: Service, stage: str = "resources") -> None:
        self._staged[stage].append(service)

    def add_site(self, name: str, service, where: Location) -> None:
        self.sites[name] = service
        self.runtime.register(f"site.{name}", service, where)
        self.add_service(service, "sites")

    def pipeline_reference(self, name: str, where: Location):
        if not name.startswith("pipeline."):
            self.runtime.errors.add(f"{name!r} must name a pipeline", where, f"write pipeline.{name}")
            return None
        return self.runtime.reference(name, where, "pipeline")

    def set_status_tests(self, runner, site: Optional[str], where: Location) -> None:
        self.status_tests = runner
        self._status_site = site
        self._status_site_where = where

    def finish_configuration(self) -> None:
        """Checks that need every section: called once all providers have run."""
        for stage in STAGES:
            for service in self._staged[stage]:
                service.setServiceParent(self)
        if self.status_tests is not None and self.status_tests.count:
            if not self.sites and not self.runtime.errors:
                self.runtime.errors.add("status tests need a web site to talk to", self._status_site_where,
                                        "add a 'web:' section")
            elif self._status_site is not None and self._status_site not in self.sites:
                self.runtime.errors.add(f"unknown web site {self._status_site!r} for status tests",
                                        self._status_site_where, close_matches_hint(self._status_site, self.sites))

    # -- life cycle -------------------------------------------------------

    def startService(self):
        Service.startService(self)
        starting = [maybeDeferred(child.startService) for child in self]
        self.started = gatherResults(starting, consumeErrors=True)
        self.started.addCallback(lambda _: self._after_start())
        self.started.addErrback(self._start_failed)
        return self.started

    @inlineCallbacks
    def _after_start(self):
        for name, reference in self.events["startup"]:
            yield reference.value({"event": "startup", "name": name})
        report = yield self.run_status_tests()
        if report is not None and not report.passed:
            self.status.set(FAILED, "startup status tests failed")
            log.error("status tests FAILED; /ready answers 503\n{report}", report=report.render())
            return report
        if report is not None:
            log.info("status tests passed\n{report}", report=report.render())
        self.status.set(READY)
        log.info("ready")
        return report

    def run_status_tests(self):
        if self.status_tests is None or not self.status_tests.count:
            return maybeDeferred(lambda: None)
        site = self.sites[self._status_site] if self._status_site else next(iter(self.sites.values()))
        client = StatusClient(self.runtime.reactor, site.url)
        running = self.status_tests.run(client, self.runtime)

        def keep(report):
            self.status.report = report
            return report

        return running.addCallback(keep)

    def _start_failed(self, failure):
        self.status.set(FAILED, f"start-up failed: {failure.getErrorMessage()}")
        log.failure("the daemon failed to start", failure)
        if not self.exit_on_start_failure:
            return failure
        # A daemon that cannot start should not linger half-alive: stop cleanly, then
        # exit non-zero so that a service manager notices (twistd itself would exit 0).
        reactor = self.runtime.reactor
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, EXIT_START_FAILED)
        reactor.callLater(0, reactor.stop)
        return None

    def stopService(self):
        self.status.set(STOPPING, "the daemon is stopping")
        for site in self.sites.values():
            site.stop_accepting()
        stopping = self._run_shutdown_events()
        stopping.addBoth(lambda _: MultiService.stopService(self))
        stopping.addTimeout(self.shutdown_timeout, self.runtime.reactor)
        return stopping.addCallbacks(self._stopped_cleanly, self._stop_failed)

    def _stopped_cleanly(self, _):
        # twistd re-raises the signal that stopped the reactor, so a daemon that
        # finished a graceful SIGTERM stop would still "die" of SIGTERM.  A clean,
        # complete stop is a normal exit (status 0), as service managers expect.
        if getattr(self.runtime.reactor, "_exitSignal", None) is not None:
            self.runtime.reactor._exitSignal = None
        log.info("stopped cleanly")

    @inlineCallbacks
    def _run_shutdown_events(self):
        for name, reference in self.events["shutdown"]:
            try:
                yield reference.value({"event": "shutdown", "name": name})
            except Exception:
                log.failure("shutdown event {name!r} failed", name=name)

    def _stop_failed(self, failure):
        log.failure("the daemon did not stop cleanly within {seconds}s", failure, seconds=self.shutdown_timeout)


def build_daemon(config: LocatedDict, reactor=None) -> IngestService:
    """Check *config* and build the daemon; raise ConfigErrors listing every problem."""
    runtime = Runtime(reactor)
    daemon = IngestService(runtime)
    providers = load_providers()
    for section in config:
        if section not in providers:
            runtime.errors.add(f"unknown section {section!r}", config.where_of_key(section),
                               close_matches_hint(str(section), providers, "sections"))
    for provider in sorted(providers.values(), key=lambda p: (p.order, p.section)):
        value = config.get(provider.section)
        where = config.where_of(provider.section) if provider.section in config else config.where
        provider.configure(value, where, daemon)
    runtime.resolve()
    daemon.finish_configuration()
    runtime.errors.raise_if_any()
    return daemon
