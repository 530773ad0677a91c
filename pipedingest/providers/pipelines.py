"""``pipelines:``: nested mappings whose leaves are lists of steps, registered as ``pipeline.<dotted.name>``."""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.engine.pipeline import build_pipelines
from pipedingest.providers.base import IProvider, Provider


@implementer(IPlugin, IProvider)
class PipelinesProvider(Provider):
    section = "pipelines"
    order = 10

    def configure(self, value, where, runtime) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            runtime.errors.add("'pipelines' must be a mapping of (nested) pipeline names", where)
            return
        build_pipelines(value, runtime)


provider = PipelinesProvider()
