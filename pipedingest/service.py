"""The daemon: the service graph built from a checked configuration, and its life.

:func:`build_daemon` gives every provider its section; each reports its problems
and registers named resources, taking references for what they need.  The
references become the :class:`~pipedingest.graph.ServiceGraph`; only when the
whole configuration (cycles included) is clean is an :class:`IngestService`
returned, so no port is bound for a configuration with mistakes.

**Start**: the services in dependency order (resources, then sites, then ticks;
see :mod:`pipedingest.graph`), each ``startService`` waited for; then the startup
system events; then the status tests, whose outcome makes the daemon ready (or
not).  A service that fails to start stops what had started.

**Stop** (SIGTERM): readiness turns to "stopping", the shutdown events run, the
sites stop accepting and drain what they accepted while everything they use
still runs, then the other services stop in reverse dependency order (stores
flush, the pool finishes and stops its children).  ``daemon.shutdown_timeout``
bounds it all: when it passes, every request still open is answered 503 and
logged, every service still stopping is logged by name, and the stop ends
unclean.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import signal
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure

from pipedingest.config.errors import close_matches_hint
from pipedingest.config.loader import LocatedDict
from pipedingest.engine.runtime import Runtime
from pipedingest.graph import DRAINING, ServiceGraph, StartFailed
from pipedingest.providers.daemon import default_settings
from pipedingest.providers.system_events import SystemEvent
from pipedingest.reload import carry_over, checksum, mark_kept, replaced
from pipedingest.sdnotify import SystemdNotifier
from pipedingest.status import FAILED, READY, STARTING, STOPPING, DaemonStatus
from pipedingest.statustest.http import StatusClient

log = Logger()

#: The exit status of a daemon whose services failed to start.
EXIT_START_FAILED = 3
#: The exit status of a daemon whose stop was cut short by ``shutdown_timeout`` or failed.
EXIT_STOP_UNCLEAN = 1


def load_providers() -> dict:
    """Every provider by its section.

    Each module is imported first: twisted.plugin skips a module that fails to import
    with a log line, and a section would then be "unknown"; a broken provider is a bug
    to see at once.
    """
    import pipedingest.providers
    from pipedingest.providers.base import IProvider

    for module in pkgutil.iter_modules(pipedingest.providers.__path__, "pipedingest.providers."):
        importlib.import_module(module.name)
    return {provider.section: provider for provider in getPlugins(IProvider, pipedingest.providers)}


class IngestService(Service):
    """The whole daemon: its resources, their graph, its status and its life."""

    def __init__(self, runtime: Runtime, graph: ServiceGraph, status: DaemonStatus):
        self.setName("pipedingest")
        self.runtime = runtime
        self.graph = graph
        self.status = status
        status.graph = graph
        settings = runtime.resources.get("daemon.settings") or default_settings()
        self.shutdown_timeout = settings["shutdown_timeout"]
        self.started: Optional[Deferred] = None
        self.stopped: Optional[Deferred] = None
        #: Set by ``twistd ingest`` (not by --self-test or tests): the daemon owns the process, so it takes
        #: SIGTERM (a graceful stop exits 0), and ends the process with a status that says how it went.
        self.owns_process = False
        #: The configuration file and ``-O`` overrides it was built from: what a reload reads again.
        self.source: Optional[tuple[str, list]] = None
        #: Seconds to wait for what services wait for (Redis, credentials) before the status tests; None: no
        #: limit (a daemon stays not ready until then); ``--self-test`` sets one so that it always ends.
        self.missing_limit: Optional[float] = None
        self._reloading: Optional[Deferred] = None
        self._reload_again = False
        #: Tells systemd (``Type=notify``) when the daemon is ready, reloading, stopping; ``twistd ingest`` gives
        #: it ``$NOTIFY_SOCKET``, and without one it does nothing.
        self.notifier = SystemdNotifier(None)

    # -- what the configuration defined ----------------------------------------------------------------

    def _named(self, prefix: str) -> dict:
        return {name[len(prefix):]: value for name, value in self.runtime.resources.items()
                if name.startswith(prefix)}

    @property
    def sites(self) -> dict:
        return self._named("site.")

    @property
    def pipelines(self) -> dict:
        return self._named("pipeline.")

    @property
    def status_tests(self):
        return self.runtime.resources.get("status-tests")

    def _events(self, event: str) -> list[SystemEvent]:
        return [value for value in self.runtime.resources.values()
                if isinstance(value, SystemEvent) and value.event == event]

    # -- start ----------------------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.owns_process:
            self.runtime.reactor.callWhenRunning(self._take_sigterm)
        self.started = self._start()
        return self.started

    @inlineCallbacks
    def _start(self):
        self.status.set(STARTING, "services are starting")
        try:
            yield self.graph.start()
        except StartFailed as failed:
            yield self.graph.stop()
            self._start_failed(failed.failure)
            if self.owns_process:
                return None
            raise failed.failure.value from None
        if self.graph.stopping:
            return None
        try:
            for event in self._events("startup"):
                yield event.run()
        except Exception:
            failure = Failure()
            yield self.graph.stop()
            self._start_failed(failure)
            if self.owns_process:
                return None
            failure.raiseException()
        yield self._until_nothing_is_missing()
        report = yield self.run_status_tests()
        if report is not None and not report.passed:
            self.status.set(FAILED, "startup status tests failed")
            log.error("status tests FAILED; /ready answers 503\n{report}", report=report.render())
            self.notifier.status("not ready: the startup status tests failed")
            return report
        if report is not None:
            log.info("status tests passed\n{report}", report=report.render())
        self.status.set(READY)
        log.info("ready")
        self.notifier.ready("ready: every service runs and the status tests passed")
        return report

    @inlineCallbacks
    def _until_nothing_is_missing(self):
        """Wait until no service waits for something outside (Redis, credentials): the status tests would only
        fail. A daemon waits as long as it takes (not ready meanwhile); ``--self-test`` at most
        :attr:`missing_limit` seconds, then runs the tests, which fail saying what was missing."""
        said = None
        clock = self.runtime.clock
        give_up_at = None if self.missing_limit is None else clock.seconds() + self.missing_limit
        while not self.graph.stopping:
            missing = self.status.waiting_for()
            if missing is None:
                return
            if give_up_at is not None and clock.seconds() >= give_up_at:
                log.error("still waiting after {seconds}s: {missing}; running the status tests anyway",
                          seconds=self.missing_limit, missing=missing)
                return
            if missing != said:
                log.warn("waiting before the status tests: {missing}", missing=missing)
                said = missing
            self.status.set(STARTING, f"waiting: {missing}")
            yield deferLater(self.runtime.clock, 0.5, lambda: None)

    def run_status_tests(self):
        runner = self.status_tests
        if runner is None or not runner.count:
            return maybeDeferred(lambda: None)
        site = runner.site.value
        client = StatusClient(self.runtime.reactor, site.url, site.resource.access.client_headers(), site.client_agent)
        running = runner.run(client, self.runtime)

        def keep(report):
            self.status.report = report
            return report

        return running.addCallback(keep).addBoth(lambda outcome: client.close().addCallback(lambda _: outcome))

    def _start_failed(self, failure):
        self.status.set(FAILED, f"start-up failed: {failure.getErrorMessage()}")
        log.failure("the daemon failed to start", failure)
        if self.owns_process:
            # A daemon that cannot start should not linger half-alive: stop cleanly, then exit
            # non-zero so that a service manager notices (twistd itself would exit 0).
            self._exit_after_stop(EXIT_START_FAILED)
            self._stop_reactor()

    # -- the process ------------------------------------------------------------------------------------------

    def _take_sigterm(self):
        """Handle SIGTERM ourselves: twistd's own handler makes a graceful stop look like a death by signal.
        SIGHUP reloads the configuration (without a handler, it would end the process)."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum, frame):
        self.runtime.reactor.callFromThread(self.reload)

    def _on_sigterm(self, signum, frame):
        log.info("SIGTERM received: stopping gracefully (at most {seconds}s)", seconds=self.shutdown_timeout)
        self.runtime.reactor.callFromThread(self._stop_reactor)

    def _stop_reactor(self):
        try:
            self.runtime.reactor.stop()
        except ReactorNotRunning:
            pass

    def _exit_after_stop(self, status: int):
        # twistd has no way to set its exit status: leave with it once the reactor has stopped.
        self.runtime.reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)

    # -- reload --------------------------------------------------------------------------------------------------

    def reload(self) -> Deferred:
        """Read the configuration again and apply it (see :mod:`pipedingest.reload`); fires with the outcome:
        ``"applied"``, ``"rejected"`` (it has errors: the running one stays), ``"failed"`` (a new service did
        not start: the running one stays) or ``"ignored"`` (starting or stopping). A reload asked for while
        one runs happens once that one is over, so the last file written is the one loaded."""
        if self.source is None or self.stopped is not None or self.status.state == STARTING:
            log.warn("not reloading the configuration: the daemon is {state}", state=self.status.state)
            return maybeDeferred(lambda: "ignored")
        if self._reloading is not None:
            log.info("reload asked for while one runs: reloading again once it is over")
            self._reload_again = True
            return self._reloading
        self.notifier.reloading()
        self._reloading = self._reload().addErrback(self._reload_broke)

        def over(outcome):
            self._reloading = None
            if self._reload_again and self.stopped is None:
                self._reload_again = False
                return self.reload()
            if self.stopped is None:
                self.notifier.ready(f"reload {outcome}; {self.status.state}")
            return outcome

        return self._reloading.addBoth(over)

    def _reload_broke(self, failure) -> str:
        log.failure("reloading the configuration failed", failure)
        self.status.reloaded("failed", self.runtime.clock.seconds(), [failure.getErrorMessage()])
        return "failed"

    @inlineCallbacks
    def _reload(self):
        from pipedingest.config.errors import ConfigErrors
        from pipedingest.config.loader import load_config

        path, overrides = self.source
        clock = self.runtime.clock
        log.info("reloading the configuration from {path}", path=path)
        try:
            config = load_config(path, overrides)
            runtime, graph, carried = build_configuration(config, self.runtime.reactor, clock, previous=self)
        except ConfigErrors as errors:
            for error in errors.errors:
                log.error("reload: {error}", error=error.render())
            count = len(errors.errors)
            log.error("{path} has {count} configuration error{s}; still running the configuration loaded before",
                      path=path, count=count, s="s" if count != 1 else "")
            self.status.reloaded("rejected", clock.seconds(), [error.render() for error in errors.errors])
            return "rejected"
        old_graph = self.graph
        leaving = replaced(old_graph, carried)
        exclusive = {name for name in leaving if getattr(old_graph.nodes[name].service, "exclusive", False)}
        if exclusive:
            yield old_graph.stop(only=exclusive)
        try:
            yield graph.start()
        except StartFailed as failed:
            log.failure("reload: a service of the new configuration did not start; keeping the running one",
                        failed.failure)
            yield graph.stop(only={name for name in graph.nodes if name not in carried.kept})
            yield old_graph.start_again(exclusive)
            self.status.reloaded("failed", clock.seconds(), [str(failed)])
            return "failed"
        if self.stopped is not None:  # SIGTERM while the new services started: the stop has the old graph
            yield graph.stop(only={name for name in graph.nodes if name not in carried.kept})
            return "ignored"
        retired = [self.graph.nodes[name].service.adopt(newer) for name, newer in carried.adopting.items()]
        for ref in carried.references:
            if ref.name in runtime.resources:
                ref.resolve(runtime.resources[ref.name])
        self.runtime, self.graph, self.status.graph = runtime, graph, graph
        settings = runtime.resources.get("daemon.settings") or default_settings()
        self.shutdown_timeout = settings["shutdown_timeout"]
        self.status.loaded(checksum(config), clock.seconds())
        self.status.reloaded("applied", clock.seconds(), [])
        kept = sorted(carried.kept)
        log.info("configuration reloaded: kept {kept}; replaced {replaced}", kept=", ".join(kept) or "nothing",
                 replaced=", ".join(sorted(leaving)) or "nothing")
        # The requests accepted before the swap finish on the old pipelines and the services they use.
        yield DeferredList([resource.idle.wait() for resource in retired])
        yield old_graph.stop(only=leaving - exclusive)
        if self.stopped is not None:
            return "applied"
        if self.status.waiting_for() is not None:
            yield self._until_nothing_is_missing()
        report = yield self.run_status_tests()
        if report is not None and not report.passed:
            self.status.set(FAILED, "status tests failed after a reload")
            log.error("status tests FAILED after the reload; /ready answers 503\n{report}", report=report.render())
        elif self.status.state != STOPPING:
            if report is not None:
                log.info("status tests passed after the reload\n{report}", report=report.render())
            self.status.set(READY)
        return "applied"

    # -- stop ----------------------------------------------------------------------------------------------------

    def stopService(self):
        super().stopService()
        if self.stopped is not None:
            return self.stopped
        self.status.set(STOPPING, "the daemon is stopping")
        self.notifier.stopping()
        clock = self.runtime.clock
        began = clock.seconds()
        result = Deferred()
        cut = clock.callLater(self.shutdown_timeout, self._cut, result)

        def ended(clean):
            if cut.active():
                cut.cancel()
            if not result.called:
                result.callback(clean)

        def broke(failure):
            log.failure("stopping the daemon failed", failure)
            ended(False)

        self._stop().addCallbacks(ended, broke)
        self.stopped = result.addCallback(self._stopped, began)
        return self.stopped

    @inlineCallbacks
    def _stop(self):
        for event in self._events("shutdown"):
            try:
                yield event.run()
            except Exception:
                log.failure("shutdown event {name!r} failed", name=event.name)
        clean = yield self.graph.stop()
        if self._reloading is not None:  # it stops what it started, or what it replaced, itself
            yield self._reloading
        return clean

    def _cut(self, result: Deferred):
        """``shutdown_timeout`` passed: answer what is still open, name what has not stopped, and end."""
        abandoned_by = set()
        for node in self.graph.nodes.values():
            if node.state == DRAINING and hasattr(node.service, "abandon"):
                abandoned = node.service.abandon()
                abandoned_by.add(node.name)
                if abandoned:
                    log.error("{name} still had {n} requests open after {seconds}s; answered 503: {requests}",
                              name=node.name, n=len(abandoned), seconds=self.shutdown_timeout,
                              requests="; ".join(abandoned))
        for node in self.graph.unfinished():
            if node.name in abandoned_by:
                continue
            log.error("{name} was still {state} after {seconds}s; not waiting for it", name=node.name,
                      state=node.state, seconds=self.shutdown_timeout)
        result.callback(False)

    def _stopped(self, clean: bool, began: float):
        took = self.runtime.clock.seconds() - began
        if clean:
            log.info("stopped cleanly in {seconds:.3f}s", seconds=took)
        else:
            log.error("stopped in {seconds:.3f}s, not cleanly", seconds=took)
            if self.owns_process:
                self._exit_after_stop(EXIT_STOP_UNCLEAN)
        return clean


def build_daemon(config: LocatedDict, reactor=None, clock=None) -> IngestService:
    """Check *config* and build the daemon; raise ConfigErrors listing every problem."""
    runtime, graph, _ = build_configuration(config, reactor, clock)
    daemon = IngestService(runtime, graph, runtime.resources["daemon.status"])
    daemon.status.loaded(checksum(config), runtime.clock.seconds())
    return daemon


def build_configuration(config: LocatedDict, reactor=None, clock=None, previous: Optional[IngestService] = None):
    """Check *config* and build its resources and service graph: ``(runtime, graph, carried)``.

    With *previous*, the running daemon, it is a reload: what it keeps of the running configuration is
    decided and substituted before the references are resolved (see :mod:`pipedingest.reload`).
    """
    runtime = Runtime(reactor, clock)
    status = previous.status if previous is not None else DaemonStatus(runtime.clock)
    runtime.register("daemon.status", status, config.where)
    providers = load_providers()
    for section in config:
        if section not in providers:
            runtime.errors.add(f"unknown section {section!r}", config.where_of_key(section),
                               close_matches_hint(str(section), providers, "sections"))
    for provider in sorted(providers.values(), key=lambda p: (p.order, p.section)):
        value = config.get(provider.section)
        where = config.where_of(provider.section) if provider.section in config else config.where
        provider.configure(value, where, runtime)
    carried = None
    if previous is not None and not runtime.errors:
        carried = carry_over(previous.runtime, previous.graph, runtime)
    runtime.resolve()
    graph = ServiceGraph.of(runtime)
    runtime.errors.raise_if_any()
    if carried is not None:
        mark_kept(graph, carried)
    return runtime, graph, carried
