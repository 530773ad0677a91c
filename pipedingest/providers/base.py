"""Providers: one per top-level section of the configuration.

A provider reads its section, reports every problem in it to the runtime's error
collector (with the line of each), and registers named resources in the
:class:`~pipedingest.engine.runtime.Runtime`: services, pipelines, contexts.  It
declares what each of them needs by taking references
(``runtime.reference(name, where, by=...)``); the daemon derives from those the
order in which services start and stop (:mod:`pipedingest.graph`).  That is all a
provider does: it never starts anything itself.

Providers are :mod:`twisted.plugin` plugins of :mod:`pipedingest.providers`, so a
new section is a new module, not an edit to a central list.  Most sections are
either one mapping of settings (``daemon:``, ``ner:``) or a mapping of names to
settings (``stores:``, ``pending:``, ``web:``); for those a provider declares its
options, as a processor does, and receives them checked, with defaults filled in.
"""
from __future__ import annotations

from typing import ClassVar, Optional

from zope.interface import Attribute, Interface

from pipedingest.config.schema import Option, check_section


class IProvider(Interface):
    """Turns one top-level configuration section into named resources."""

    section = Attribute("The top-level key this provider reads, such as 'web'.")
    order = Attribute("Lower runs first; providers that others depend on (plugins) come early.")

    def configure(value, where, runtime):
        """Check *value* (None when the section is absent) and register resources in *runtime*."""


class Provider:
    """Base class of the providers.

    A section that is one mapping of settings declares ``options`` and implements
    :meth:`configure_section`; a section of named entries declares ``entry_options``
    (and ``entry_kind``, how an entry is called in messages) and implements
    :meth:`configure_entry`.  Other shapes override :meth:`configure`.
    """

    section: ClassVar[str] = ""
    order: ClassVar[int] = 50
    options: ClassVar[Optional[dict[str, Option]]] = None
    entry_options: ClassVar[Optional[dict[str, Option]]] = None
    entry_kind: ClassVar[str] = "entry"
    #: A short example of the section, shown when it has the wrong shape.
    example: ClassVar[str] = ""
    #: What the section registers (``ner.pool``), or the prefix of its entries' names (``store.``): when
    #: one cannot be defined, the references to it are consequences, not more errors to report.
    resource: ClassVar[str] = ""
    resource_prefix: ClassVar[str] = ""

    def configure(self, value, where, runtime) -> None:
        if value is None:
            return
        errors = runtime.errors
        if self.options is not None:
            settings = check_section(self.options, value, f"'{self.section}'", errors, where)
            if settings is not None:
                self.configure_section(settings, value, where, runtime)
            if self.resource and self.resource not in runtime.resources:
                runtime.definition_failed(self.resource)
            return
        if not isinstance(value, dict) or not value:
            errors.add(f"'{self.section}' must map {self.entry_kind} names to their settings", where,
                       f"for example: {self.example}" if self.example else "")
            if self.resource_prefix:
                runtime.definition_failed(self.resource_prefix.rstrip("."))
            return
        for name, spec in value.items():
            spec_where = value.where_of(name)
            declared = self.options_of_entry(name, spec, spec_where, runtime)
            settings = None
            if declared is not None:
                settings = check_section(declared, spec, f"{self.entry_kind} {name!r}", errors, spec_where)
            if settings is not None:
                self.configure_entry(str(name), settings, spec, spec_where, runtime)
            if self.resource_prefix and f"{self.resource_prefix}{name}" not in runtime.resources:
                runtime.definition_failed(f"{self.resource_prefix}{name}")

    def options_of_entry(self, name, spec, where, runtime) -> Optional[dict[str, Option]]:
        """The options an entry may have (None when the entry is unusable, after reporting why)."""
        return self.entry_options

    def configure_section(self, settings: dict, value, where, runtime) -> None:
        raise NotImplementedError

    def configure_entry(self, name: str, settings: dict, spec, where, runtime) -> None:
        raise NotImplementedError
