"""Status tests inside the daemon: declared and Python ones, passing and failing, gating /ready."""
import json
import os

import pytest_twisted
import treq

from tests.conftest import ROOT, config_errors, url

with open(os.path.join(ROOT, "conf", "examples", "euler.yaml"), encoding="utf-8") as _stream:
    EULER = _stream.read()


async def get(daemon, path):
    response = await treq.get(url(daemon, path))
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_passing_status_tests_make_the_daemon_ready(daemons):
    daemon = await daemons(EULER, ["web.site.port=0"])
    code, ready = await get(daemon, "/ready")
    assert (code, ready["ready"]) == (200, True)
    code, status = await get(daemon, "/status")
    tests = status["status_tests"]
    assert tests["passed"] is True
    assert [t["name"] for t in tests["tests"]] == [
        "a single number", "the first ten natural numbers", "no numbers is a client error"]
    assert all(t["result"] == "ok" for t in tests["tests"])
    durations = [t["duration"] for t in tests["tests"]]
    assert all(isinstance(d, float) for d in durations)
    assert sum(durations) <= tests["duration"] + 0.001 and tests["duration"] <= status["uptime_seconds"]


@pytest_twisted.ensureDeferred
async def test_a_failing_status_test_keeps_the_daemon_unready(daemons):
    broken = ["web.site.port=0",
              "pipelines.web.write-response.0.eval-lambda.lambda='baton: dict(sum=0, square=0, diff=0)'"]
    daemon = await daemons(EULER, broken)
    code, ready = await get(daemon, "/ready")
    assert code == 503
    assert ready == {"ready": False, "state": "failed", "reason": "startup status tests failed"}
    _, status = await get(daemon, "/status")
    results = {t["name"]: t for t in status["status_tests"]["tests"]}
    assert results["a single number"]["result"] == "fail"
    assert "sum: expected 1764, got 0" in results["a single number"]["message"]
    assert results["no numbers is a client error"]["result"] == "ok"
    report = daemon.status.report.render()
    assert "FAILED (failures=2, successes=1)" in report
    assert "[FAIL]" in report


@pytest_twisted.ensureDeferred
async def test_python_status_test_classes_are_discovered_as_plugins(daemons):
    daemon = await daemons(EULER + "\n  packages: [statustest_demo]\n", ["web.site.port=0"])
    _, status = await get(daemon, "/status")
    names = [(t["group"], t["name"], t["result"]) for t in status["status_tests"]["tests"]]
    assert ("statustest_demo.euler.EulerStatusTest", "statustest_ten_numbers", "ok") in names
    assert ("statustest_demo.euler.EulerStatusTest", "statustest_single_number", "ok") in names
    assert ("statustest_demo.euler.EulerStatusTest", "statustest_pipeline_directly", "ok") in names
    assert len(names) == 6 and status["ready"] is True


def test_a_missing_status_test_package_is_a_config_error(tmp_path):
    errors = config_errors(tmp_path, EULER + "\n  packages: [no_such_tests]\n", ["web.site.port=0"])
    assert len(errors) == 1 and "cannot import status test package 'no_such_tests'" in errors[0]


def test_malformed_cases_are_config_errors(tmp_path):
    text = EULER + "\n    - {name: bad, path: nope, expect: {status: ok}}\n    - {path: /}\n"
    errors = config_errors(tmp_path, text, ["web.site.port=0"])
    assert any("option 'status' of the expectations of 'bad' must be an integer" in e for e in errors)
    assert any("status test #5 needs the option 'name'" in e for e in errors)
    assert any("path must start with '/'" in e for e in errors)
