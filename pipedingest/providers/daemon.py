"""``daemon:``: settings of the daemon as a whole, registered as ``daemon.settings``.

::

    daemon:
      shutdown_timeout: 30     # seconds a graceful stop (SIGTERM) may take: drain the sites, flush the stores
      log_format: text         # or json: one JSON object per line (pipedingest/logs.py); --log-format wins
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option
from pipedingest.logs import LOG_FORMATS
from pipedingest.providers.base import IProvider, Provider

DAEMON_OPTIONS = {
    "shutdown_timeout": Option(float, 30.0, "seconds a graceful stop may take before what is open is cut short",
                               above=0),
    "log_format": Option(str, "text", "the log's format: text (twistd's) or json (one JSON object per line); "
                                      "the command line's --log-format wins", choices=LOG_FORMATS),
}


def default_settings() -> dict:
    return {key: option.default for key, option in DAEMON_OPTIONS.items()}


def settings_of(runtime) -> dict:
    """The ``daemon:`` settings a configuration gave (the defaults where it gave none)."""
    return {**default_settings(), **(runtime.resources.get("daemon.settings") or {})}


@implementer(IPlugin, IProvider)
class DaemonProvider(Provider):
    section = "daemon"
    order = 1
    options = DAEMON_OPTIONS

    def configure_section(self, settings, value, where, runtime) -> None:
        runtime.register("daemon.settings", settings, where)


provider = DaemonProvider()
