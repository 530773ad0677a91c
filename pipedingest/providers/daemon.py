"""``daemon:``: settings of the daemon as a whole.

::

    daemon:
      shutdown_timeout: 30     # seconds a graceful stop (SIGTERM) may take: finish requests, flush stores
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
from pipedingest.providers.base import IProvider, Provider

DAEMON_OPTIONS = {
    "shutdown_timeout": Option(float, 30.0, "seconds a graceful stop may take before it is cut short"),
}


@implementer(IPlugin, IProvider)
class DaemonProvider(Provider):
    section = "daemon"
    order = 1

    def configure(self, value, where, daemon) -> None:
        if value is None:
            return
        settings = check_section(DAEMON_OPTIONS, value, "'daemon'", daemon.runtime.errors, where)
        if settings is None:
            return
        if settings["shutdown_timeout"] <= 0:
            daemon.runtime.errors.add("shutdown_timeout must be positive", value.where_of("shutdown_timeout"))
        daemon.shutdown_timeout = settings["shutdown_timeout"]


provider = DaemonProvider()
