"""Providers: one per top-level section of the configuration.

A provider reads its section, reports every problem in it to the runtime's
error collector (with the line of each), and contributes services and named
resources to the daemon.  Providers are :mod:`twisted.plugin` plugins of
:mod:`pipedingest.providers`, so a new section is a new module, not an edit
to a central list.
"""
from __future__ import annotations

from typing import ClassVar

from zope.interface import Attribute, Interface


class IProvider(Interface):
    """Turns one top-level configuration section into services and resources."""

    section = Attribute("The top-level key this provider reads, such as 'web'.")
    order = Attribute("Lower runs first; providers that others depend on (plugins) come early.")

    def configure(value, where, daemon):
        """Check *value* (None when the section is absent) and contribute to *daemon*."""


class Provider:
    """Base class: subclasses set ``section``/``order`` and implement ``configure``."""

    section: ClassVar[str] = ""
    order: ClassVar[int] = 50

    def configure(self, value, where, daemon) -> None:
        raise NotImplementedError
