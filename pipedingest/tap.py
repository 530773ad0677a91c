"""``twistd ingest``: command-line options and the service they build.

Modes:

* default — build the daemon and hand it to twistd;
* ``--check`` — load and check the configuration, print every problem, exit
  0 when clean and 2 otherwise; a clean one also prints its service graph (what
  each service needs, the start and stop order); nothing is started;
* ``--self-test`` — start the daemon, run its status tests, print a
  trial-style report, stop, and exit 0 (all passed), 1 (some failed) or 2
  (configuration errors).

Configuration problems always end the process with status 2 before any port is
bound; services that fail to start (a database that cannot be opened, a model
that does not load) end it with status 3 after a clean stop.
"""
from __future__ import annotations

import sys

from twisted.python import usage

EXIT_OK, EXIT_TESTS_FAILED, EXIT_CONFIG = 0, 1, 2


class Options(usage.Options):
    synopsis = "-c CONFIG [-O KEY=VALUE ...] [--check | --self-test]"
    longdesc = "Run the pipedingest daemon described by a YAML configuration."
    optParameters = [["config", "c", None, "the YAML configuration file"]]
    optFlags = [
        ["check", None, "check the configuration, print every problem and exit (0 clean, 2 otherwise)"],
        ["self-test", None, "start, run the status tests, print a report, stop; exit 0 only if all passed"],
    ]

    def __init__(self):
        super().__init__()
        self["overrides"] = []

    def opt_override(self, value):
        """KEY.PATH=VALUE: set a value in the loaded configuration (VALUE is YAML); repeatable."""
        self["overrides"].append(value)

    opt_O = opt_override

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("give a configuration file with -c/--config")
        if self["check"] and self["self-test"]:
            raise usage.UsageError("--check and --self-test cannot be combined")


def load_daemon(options, reactor=None, stream=None):
    """Load, check and build; on configuration errors print them all and exit 2."""
    from pipedingest.config.errors import ConfigErrors
    from pipedingest.config.loader import load_config
    from pipedingest.service import build_daemon

    stream = stream or sys.stderr
    try:
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
        raise SystemExit(EXIT_OK)
    if options["self-test"]:
        raise SystemExit(run_self_test(daemon))
    daemon.owns_process = True
    return daemon


def run_self_test(daemon, reactor=None) -> int:
    """Run *daemon* just long enough to run its status tests; the exit status."""
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if reactor is None:
        from twisted.internet import reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    outcome = {"code": EXIT_TESTS_FAILED}

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
