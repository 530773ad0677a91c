"""``status-tests:``: tests that run inside the daemon at startup and gate readiness.

::

    status-tests:
      site: main           # the site the tests talk to (default: the first one declared)
      timeout: 30          # seconds per test
      packages: [my.tests] # plugin packages with StatusTestCase classes
      cases: [...]         # declared HTTP cases (see pipedingest.statustest.declared)
"""
from __future__ import annotations

import importlib

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from pipedingest.config.loader import LocatedList
from pipedingest.config.schema import Option, check_section
from pipedingest.providers.base import IProvider, Provider
from pipedingest.statustest.case import IStatusTest, StatusTestCase
from pipedingest.statustest.declared import CASE_OPTIONS, EXPECT_OPTIONS, DeclaredCase
from pipedingest.statustest.runner import StatusTestRunner

SECTION_OPTIONS = {
    "site": Option((str, type(None)), None, "the web site the tests talk to"),
    "timeout": Option(float, 30.0, "seconds each test may take", above=0),
    "packages": Option(list, [], "plugin packages holding StatusTestCase classes", items=str),
    "cases": Option(list, [], "declared HTTP cases"),
}


@implementer(IPlugin, IProvider)
class StatusTestsProvider(Provider):
    """Registers the runner as ``status-tests``, needing the site it talks to."""

    section = "status-tests"
    order = 70
    options = SECTION_OPTIONS

    def configure_section(self, settings, value, where, runtime) -> None:
        errors = runtime.errors
        declared = []
        cases = settings["cases"]
        for index, spec in enumerate(cases):
            case_where = cases.where_of(index) if isinstance(cases, LocatedList) else where
            case = check_section(CASE_OPTIONS, spec, f"status test #{index + 1}", errors, case_where)
            if case is None:
                continue
            expect = check_section(EXPECT_OPTIONS, case["expect"], f"the expectations of {case['name']!r}",
                                   errors, spec.where_of("expect"))
            if not case["path"].startswith("/"):
                errors.add(f"status test {case['name']!r}: path must start with '/'", spec.where_of("path"))
                continue
            if expect is not None:
                declared.append(DeclaredCase(case, expect, case_where))
        classes = []
        packages = settings["packages"]
        for index, name in enumerate(packages):
            package_where = packages.where_of(index) if isinstance(packages, LocatedList) else where
            try:
                package = importlib.import_module(name)
            except Exception as exc:
                errors.add(f"cannot import status test package {name!r}: {exc!r}", package_where)
                continue
            found = [cls for cls in getPlugins(IStatusTest, package)
                     if isinstance(cls, type) and issubclass(cls, StatusTestCase)]
            if not found:
                errors.add(f"no status test classes in {name!r}", package_where,
                           "mark StatusTestCase subclasses with @provider(IStatusTest)")
            classes.extend(sorted(found, key=lambda cls: (cls.__module__, cls.__qualname__)))
        runner = StatusTestRunner(runtime.clock, declared, classes, settings["timeout"])
        if not runner.count:
            return
        if settings["site"] is not None:
            runner.site = runtime.reference(f"site.{settings['site']}", value.where_of("site"), "web site",
                                            by="status-tests")
        else:
            sites = runtime.names("site.")
            if not sites:
                if not errors:  # a web section with mistakes has been reported already
                    errors.add("status tests need a web site to talk to", where, "add a 'web:' section")
                return
            runner.site = runtime.reference(sites[0], where, "web site", by="status-tests")
        runtime.register("status-tests", runner, where)


provider = StatusTestsProvider()
