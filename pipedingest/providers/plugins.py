"""``plugins: bundles: {name: [package, ...]}``: third-party processor packages."""
from __future__ import annotations

from zope.interface import implementer
from twisted.plugin import IPlugin

from pipedingest.config.loader import LocatedList
from pipedingest.engine.registry import BUILTIN_PACKAGE
from pipedingest.providers.base import IProvider, Provider


@implementer(IPlugin, IProvider)
class PluginsProvider(Provider):
    section = "plugins"
    order = 0

    def configure(self, value, where, runtime) -> None:
        errors = runtime.errors
        errors.extend(runtime.processors.load_package(BUILTIN_PACKAGE, "built in"))
        if value is None:
            return
        if not isinstance(value, dict) or set(value) - {"bundles"}:
            errors.add("'plugins' takes one key, 'bundles'", where,
                       "plugins: {bundles: {my_bundle: [my_package]}}")
            return
        bundles = value.get("bundles") or {}
        if not isinstance(bundles, dict):
            errors.add("'plugins.bundles' must map bundle names to lists of packages", value.where_of("bundles"))
            return
        for bundle, packages in bundles.items():
            if not isinstance(packages, LocatedList) or not all(isinstance(p, str) for p in packages):
                errors.add(f"bundle {bundle!r} must be a list of package names", bundles.where_of(bundle))
                continue
            for index, package in enumerate(packages):
                errors.extend(runtime.processors.load_package(package, f"bundle {bundle!r}", packages.where_of(index)))


provider = PluginsProvider()
