"""Finding processors: :mod:`twisted.plugin` over the built-in package and bundles.

The built-in processors live in :mod:`pipedingest.processors`; third parties
name their own plugin packages under ``plugins: bundles:``.  Every class that
provides :class:`~pipedingest.engine.processor.IProcessor` in those packages is
a processor, known by its ``name``.  Two classes with one name is a
configuration error, because which one a pipeline got would depend on import
order.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable, Optional

from twisted.plugin import getPlugins

from pipedingest.config.errors import ConfigError, Location, close_matches_hint
from pipedingest.engine.processor import IProcessor

BUILTIN_PACKAGE = "pipedingest.processors"


class ProcessorRegistry:
    """Processor classes by name, with where each came from."""

    def __init__(self) -> None:
        self.classes: dict[str, type] = {}
        self.origins: dict[str, str] = {}

    def add(self, cls: type, origin: str, where: Optional[Location] = None) -> list[ConfigError]:
        name = getattr(cls, "name", "")
        if not name:
            return [ConfigError(f"processor class {cls.__module__}.{cls.__qualname__} has no name",
                                "give it a class attribute name = '...'", where)]
        if name in self.classes and self.classes[name] is not cls:
            return [ConfigError(
                f"two processors are named {name!r}: {_dotted(self.classes[name])} ({self.origins[name]}) "
                f"and {_dotted(cls)} ({origin})", "rename one of them", where)]
        self.classes[name] = cls
        self.origins[name] = origin
        return []

    def load_package(self, package_name: str, origin: str, where: Optional[Location] = None) -> list[ConfigError]:
        """Add every processor plugin found in *package_name*."""
        try:
            package = importlib.import_module(package_name)
        except Exception as exc:  # any import failure is the operator's to fix
            return [ConfigError(f"cannot import plugin package {package_name!r}: {exc!r}",
                                "is it installed, and on PYTHONPATH?", where)]
        if not hasattr(package, "__path__"):
            return [ConfigError(f"{package_name!r} is a module, not a package",
                                "a bundle names packages whose modules define processors", where)]
        errors: list[ConfigError] = []
        # twisted.plugin logs and skips modules that fail to import; import them
        # first so that a broken bundle is a configuration error, not a log line.
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                errors.append(ConfigError(f"cannot import {info.name!r}: {exc!r}",
                                          "fix the module or remove it from the bundle", where))
        if errors:
            return errors
        for cls in getPlugins(IProcessor, package):
            errors.extend(self.add(cls, origin, where))
        return errors

    def lookup(self, name: str) -> type:
        try:
            return self.classes[name]
        except KeyError:
            raise ConfigError(f"unknown processor {name!r}",
                              close_matches_hint(name, self.classes, "processors")) from None

    def names(self) -> Iterable[str]:
        return sorted(self.classes)


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
