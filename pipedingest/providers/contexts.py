"""``contexts:``: named shared state, reachable from pipelines with ``fetch-context``."""
from __future__ import annotations

import copy

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.loader import plain
from pipedingest.providers.base import IProvider, Provider


@implementer(IPlugin, IProvider)
class ContextsProvider(Provider):
    section = "contexts"
    order = 5

    def configure(self, value, where, runtime) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            runtime.errors.add("'contexts' must map context names to initial values", where,
                               "for example: contexts: {pending: {}}")
            runtime.definition_failed("context")
            return
        for name, initial in value.items():
            runtime.register(f"context.{name}", copy.deepcopy(plain(initial)), value.where_of(name))


provider = ContextsProvider()
