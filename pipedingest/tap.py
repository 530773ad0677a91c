"""``twistd ingest``: command-line options and the service they build.

Modes:

* default — build the daemon and hand it to twistd;
* ``--check`` — load and check the configuration, print every problem, exit
  0 when clean and 2 otherwise; a clean one also prints its service graph (what
  each service needs, the start and stop order), and warns (on stderr, still
  exit 0) when the NER children would not fit in the cgroup's memory limit;
  nothing is started;
* ``--self-test`` — start the daemon, run its status tests, print a
  trial-style report, stop, and exit 0 (all passed), 1 (some failed) or 2
  (configuration errors);
* ``--graph`` — load and check like ``--check``, then print the configuration
  as a Graphviz dot graph (routes → pipelines → steps → services; see
  :mod:`pipedingest.dot`) on stdout and exit 0; nothing is started;
* ``--version`` — print pipedingest's version (twistd's own ``--version``, given
  after ``ingest``, would print Twisted's) and exit 0.

Configuration problems always end the process with status 2 before any port is
bound; services that fail to start (a database that cannot be opened, a model
that does not load) end it with status 3 after a clean stop.
"""
from __future__ import annotations

import sys

from twisted.python import usage

EXIT_OK, EXIT_TESTS_FAILED, EXIT_CONFIG = 0, 1, 2
#: Seconds ``--self-test`` waits for what the services wait for (Redis, credentials) before its tests run.
SELF_TEST_WAIT = 30.0


class Options(usage.Options):
    synopsis = "-c CONFIG [--env-file FILE] [-O KEY=VALUE ...] [--check | --self-test | --graph]"
    longdesc = "Run the pipedingest daemon described by a YAML configuration."
    optParameters = [["config", "c", None, "the YAML configuration file"],
                     ["env-file", None, None, "KEY=VALUE lines to add to the environment before the configuration "
                                              "is loaded (variables already set win), as systemd's "
                                              "EnvironmentFile= reads them"],
                     ["log-format", None, None, "text or json (one JSON object per line); default: the "
                                                "configuration's daemon.log_format, else text"]]
    optFlags = [
        ["check", None, "check the configuration, print every problem and exit (0 clean, 2 otherwise)"],
        ["self-test", None, "start, run the status tests, print a report, stop; exit 0 only if all passed"],
        ["graph", None, "check the configuration, print it as a Graphviz dot graph and exit (render: dot -Tsvg)"],
    ]

    def __init__(self):
        super().__init__()
        self["overrides"] = []
        #: twistd's log observer factory, once installed (pipedingest/logs.py); None outside twistd.
        self.logging = None

    def opt_override(self, value):
        """KEY.PATH=VALUE: set a value in the loaded configuration (VALUE is YAML); repeatable."""
        self["overrides"].append(value)

    opt_O = opt_override

    def opt_version(self):
        """Print pipedingest's version and exit."""
        print(version())
        raise SystemExit(EXIT_OK)

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("give a configuration file with -c/--config")
        modes = [f"--{mode}" for mode in ("check", "self-test", "graph") if self[mode]]
        if len(modes) > 1:
            raise usage.UsageError(f"{' and '.join(modes)} cannot be combined")
        from pipedingest.logs import LOG_FORMATS, TwistdLogging

        if self["log-format"] not in (None, *LOG_FORMATS):
            raise usage.UsageError(f"--log-format must be {' or '.join(LOG_FORMATS)}, not {self['log-format']!r}")
        try:
            self.logging = TwistdLogging.install(self.parent, self["log-format"])
        except ValueError as error:
            raise usage.UsageError(str(error)) from None


def version() -> str:
    """``pipedingest 0.1.0 (Twisted …, Python …)``: the installed package's version, from its metadata."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from twisted import __version__ as twisted_version

    try:
        ours = installed("pipedingest")
    except PackageNotFoundError:
        ours = "(not installed: run scripts/bootstrap)"
    return f"pipedingest {ours} (Twisted {twisted_version}, Python {platform.python_version()})"


def load_daemon(options, reactor=None, stream=None):
    """Load, check and build; on configuration errors print them all and exit 2."""
    from pipedingest.config.errors import ConfigErrors
    from pipedingest.config.loader import load_config
    from pipedingest.envfile import apply_env_file
    from pipedingest.service import build_daemon

    stream = stream or sys.stderr
    try:
        if options["env-file"]:
            apply_env_file(options["env-file"])
        config = load_config(options["config"], options["overrides"])
        return build_daemon(config, reactor)
    except ConfigErrors as errors:
        print(errors.render(), file=stream)
        count = len(errors.errors)
        print(f"{count} configuration error{'s' if count != 1 else ''} in {options['config']}; "
              "nothing was started", file=stream)
        raise SystemExit(EXIT_CONFIG) from None


def makeService(options):
    daemon = load_daemon(options)
    if options["check"]:
        print(f"{options['config']}: configuration OK ({len(daemon.pipelines)} pipelines, "
              f"{len(daemon.sites)} sites, {daemon.status_tests.count if daemon.status_tests else 0} status tests)")
        print(daemon.graph.describe())
        from pipedingest.providers.ner import memory_warning

        warning = memory_warning(daemon.runtime)
        if warning:
            print(warning, file=sys.stderr)
        raise SystemExit(EXIT_OK)
    if options["graph"]:
        from pipedingest.dot import render

        print(render(daemon.runtime, daemon.graph, options["config"]), end="")
        raise SystemExit(EXIT_OK)
    from pipedingest.providers.daemon import settings_of

    log_format = options["log-format"] or settings_of(daemon.runtime)["log_format"]
    if options["self-test"]:
        raise SystemExit(run_self_test(daemon, log_format=log_format))
    if options.logging is not None:
        options.logging.format = log_format
    daemon.owns_process = True
    daemon.source = (options["config"], list(options["overrides"]))
    from pipedingest.sdnotify import SystemdNotifier

    daemon.notifier = SystemdNotifier.from_environment()
    return daemon


def run_self_test(daemon, reactor=None, log_format: str = "text") -> int:
    """Run *daemon* just long enough to run its status tests (logging to stderr); the exit status."""
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import globalLogBeginner

    from pipedingest.logs import observer_for

    if reactor is None:
        from twisted.internet import reactor
    globalLogBeginner.beginLoggingTo([observer_for(log_format, sys.stderr)], redirectStandardIO=False)
    outcome = {"code": EXIT_TESTS_FAILED}
    daemon.missing_limit = SELF_TEST_WAIT

    async def run():
        try:
            daemon.startService()
            await daemon.started
            report = daemon.status.report
            if report is None:
                print("no status tests are configured; nothing to check", flush=True)
                outcome["code"] = EXIT_TESTS_FAILED
            else:
                print(report.render(), flush=True)
                outcome["code"] = EXIT_OK if report.passed else EXIT_TESTS_FAILED
        except Exception as exc:
            print(f"the daemon failed to start: {exc}", file=sys.stderr, flush=True)
        finally:
            await daemon.stopService()
            reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run()))
    reactor.run()
    return outcome["code"]
