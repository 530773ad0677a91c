"""Running status tests inside the daemon and reporting them as trial does.

The report feeds three places: the log at startup, ``GET /status`` (each test
with its result and duration) and ``--self-test`` (a trial-style summary and
the exit code).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Optional

from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks, maybeDeferred
from twisted.python.failure import Failure

OK, FAIL, ERROR = "ok", "fail", "error"


@dataclass
class TestResult:
    group: str
    name: str
    result: str
    duration: float
    message: str = ""


@dataclass
class Report:
    results: list[TestResult] = field(default_factory=list)
    duration: float = 0.0
    finished: bool = False

    @property
    def passed(self) -> bool:
        return self.finished and all(r.result == OK for r in self.results)

    def counts(self) -> dict:
        return {kind: sum(1 for r in self.results if r.result == kind) for kind in (OK, FAIL, ERROR)}

    def as_json(self) -> dict:
        return {"finished": self.finished, "passed": self.passed, "duration": round(self.duration, 4),
                "counts": self.counts(), "tests": [asdict(r) for r in self.results]}

    def render(self) -> str:
        """The report in trial's shape: groups, tests with [OK]/[FAIL]/[ERROR], a summary."""
        lines, group = [], None
        for r in self.results:
            if r.group != group:
                group = r.group
                lines.append(group)
            label = f"  {r.name} ..."
            lines.append(f"{label:<70} [{r.result.upper()}]")
        problems = [r for r in self.results if r.result != OK]
        for r in problems:
            lines += ["", "=" * 79, f"[{r.result.upper()}]", r.message, "", f"{r.group}: {r.name}"]
        counts = self.counts()
        lines += ["", "-" * 79, f"Ran {len(self.results)} tests in {self.duration:.3f}s", ""]
        if self.passed:
            lines.append(f"PASSED (successes={counts[OK]})")
        else:
            parts = [f"{name}={counts[key]}" for key, name in ((FAIL, "failures"), (ERROR, "errors")) if counts[key]]
            lines.append(f"FAILED ({', '.join(parts) or 'not finished'}, successes={counts[OK]})")
        return "\n".join(lines)


def _maybe_coroutine(function, *args) -> Deferred:
    def call():
        result = function(*args)
        if inspect.iscoroutine(result):
            return ensureDeferred(result)
        return result

    return maybeDeferred(call)


class StatusTestRunner:
    """Runs declared cases, then Python test-case classes, one test at a time."""

    def __init__(self, clock, declared: list, classes: list, timeout: float = 30.0):
        self.clock = clock
        self.declared = declared
        self.classes = classes
        self.timeout = timeout
        #: A Reference to the site the tests talk to (set by the status-tests provider).
        self.site = None
        self.report: Optional[Report] = None

    @property
    def count(self) -> int:
        return len(self.declared) + sum(len(cls.test_names()) for cls in self.classes)

    @inlineCallbacks
    def run(self, client, runtime):
        report = self.report = Report()
        started = self.clock.seconds()
        for case in self.declared:
            yield self._one(report, "declared", case.name, lambda c=case: c.run(client))
        for cls in self.classes:
            group = f"{cls.__module__}.{cls.__qualname__}"
            for name in cls.test_names():
                case = cls(name, client, runtime)
                yield self._one(report, group, name, lambda c=case, n=name: self._python(c, n))
        report.duration = self.clock.seconds() - started
        report.finished = True
        return report

    @inlineCallbacks
    def _python(self, case, name):
        yield _maybe_coroutine(case.setUp)
        try:
            yield _maybe_coroutine(getattr(case, name))
        finally:
            yield _maybe_coroutine(case.tearDown)

    @inlineCallbacks
    def _one(self, report: Report, group: str, name: str, run):
        started = self.clock.seconds()
        running = _maybe_coroutine(run).addTimeout(self.timeout, self.clock)
        try:
            yield running
            result, message = OK, ""
        except AssertionError as exc:
            result, message = FAIL, str(exc)
        except Exception:
            result, message = ERROR, Failure().getTraceback()
        report.results.append(TestResult(group, name, result, round(self.clock.seconds() - started, 4), message))
