"""A real ``twistd ingest`` process: the plugin, --check, --self-test, serving and SIGTERM."""
import os
import re
import subprocess

import pytest

from tests.conftest import ROOT, write_config
from tests.test_config import SEVERAL_MISTAKES
from tests.twistd_process import TWISTD, Daemon, twistd

EULER = os.path.join(ROOT, "conf", "examples", "euler.yaml")
DEV = os.path.join(ROOT, "conf", "dev.yaml")


def test_twistd_lists_the_ingest_command():
    result = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60)
    assert re.search(r"^\s+ingest\s+Ingest news articles", result.stdout, re.MULTILINE), result.stdout


def test_check_reports_every_mistake_and_binds_nothing(tmp_path):
    path = write_config(tmp_path, SEVERAL_MISTAKES, "broken.yaml")
    result = twistd("-c", "broken.yaml", "--check", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("broken.yaml:")]) == 14
    assert "broken.yaml:3:11: option 'port' of web site 'site' must be an integer" in result.stderr
    assert lines[-1] == "14 configuration errors in broken.yaml; nothing was started"
    assert "listening" not in result.stdout + result.stderr
    assert not os.path.exists(os.path.join(path, "..", "twistd.pid"))


def test_a_broken_config_without_check_also_exits_2_before_binding(tmp_path):
    write_config(tmp_path, SEVERAL_MISTAKES, "broken.yaml")
    result = twistd("-c", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "14 configuration errors" in result.stderr
    assert "starting on" not in result.stdout + result.stderr


def test_check_accepts_the_shipped_configs():
    for config in (EULER, DEV):
        result = twistd("-c", config, "--check")
        assert result.returncode == 0, result.stderr
        assert "configuration OK" in result.stdout


@pytest.mark.parametrize("config, port_key", [(EULER, "web.site.port"), (DEV, "web.main.port")])
def test_self_test_passes_on_the_shipped_configs(config, port_key):
    result = twistd("-c", config, "-O", f"{port_key}=0", "--self-test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=" in result.stdout


def test_self_test_fails_when_a_pipeline_is_broken():
    broken = "pipelines.web.compute.chained_consumers.1.eval-lambda.lambda='numbers: 0'"
    result = twistd("-c", EULER, "-O", "web.site.port=0", "-O", broken, "--self-test")
    assert result.returncode == 1
    assert "FAILED (failures=2, successes=1)" in result.stdout
    assert "sum: expected 1764, got 0" in result.stdout


def test_self_test_with_a_config_error_exits_2():
    result = twistd("-c", EULER, "-O", "web.site.port=zero", "--self-test")
    assert result.returncode == 2


def test_a_real_daemon_serves_and_stops_on_sigterm(tmp_path):
    daemon = Daemon(EULER, cwd=tmp_path, port_key="web.site.port")
    try:
        daemon.wait_ready()
        query = "&".join(f"n={n}" for n in range(1, 11))
        assert daemon.get_json(f"/?{query}") == (200, {"sum": 385, "square": 3025, "diff": 2640})
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.output
    finally:
        daemon.kill()
    assert "SIGTERM received: stopping gracefully" in daemon.output
    assert re.search(r"stopped cleanly in [0-9.]+s", daemon.output), daemon.output


def test_check_prints_the_service_graph():
    result = twistd("-c", DEV, "--check")
    assert result.returncode == 0, result.stderr
    assert "site.main [site] ← needs ner.pool, pending.ner, store.articles, store.statustests" in result.stdout
    assert "stop order:\n  1. site.main\n" in result.stdout


def test_a_service_that_cannot_start_ends_the_daemon_with_status_3(tmp_path):
    (tmp_path / "blocker").write_text("a file where the database folder should be")
    result = twistd("-c", DEV, "-O", "web.main.port=0", "-O", "stores.articles.path=blocker/articles.sqlite",
                    cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "the daemon failed to start" in output
    assert "cannot open the SQLite database blocker/articles.sqlite" in output
