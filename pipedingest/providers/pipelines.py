"""``pipelines:``: nested mappings whose leaves are lists of steps, registered as ``pipeline.<dotted.name>``."""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.engine.pipeline import STEP_KEYS, build_pipelines
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
            runtime.definition_failed("pipeline")
            return
        build_pipelines(value, runtime)
        _note_failed(value, "", runtime)


def _note_failed(node: dict, prefix: str, runtime) -> None:
    """Tell the runtime which pipelines were written but could not be defined (their errors are reported)."""
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if "pipeline." + name in runtime.resources:
            continue
        if isinstance(value, dict) and not any(step_key in value for step_key in STEP_KEYS):
            _note_failed(value, name, runtime)
        else:
            runtime.definition_failed("pipeline." + name)


provider = PipelinesProvider()
