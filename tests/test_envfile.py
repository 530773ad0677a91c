"""``--env-file``: the daemon's environment from systemd-style KEY=VALUE lines, read before the configuration."""
from __future__ import annotations

import os

import pytest

from pipedingest.config.errors import ConfigErrors
from pipedingest.envfile import apply_env_file, read_env_file
from tests.conftest import PROD
from tests.twistd_process import twistd


def test_lines_comments_export_and_quotes(tmp_path):
    path = tmp_path / "ingest.env"
    path.write_text("# a comment\n\nINGEST_TOKEN=abc=def\nexport INGEST_PORT=8090\nA='one two'\nB=\"x\"\nC=\n")
    assert read_env_file(str(path)) == {"INGEST_TOKEN": "abc=def", "INGEST_PORT": "8090", "A": "one two",
                                        "B": "x", "C": ""}
    environ = {"INGEST_PORT": "9000"}
    assert apply_env_file(str(path), environ) == ["INGEST_TOKEN", "A", "B", "C"]
    assert environ["INGEST_PORT"] == "9000", "a variable already set wins over the file"


def test_every_bad_line_with_its_line_and_never_its_text(tmp_path):
    path = tmp_path / "ingest.env"
    path.write_text("OK=1\nhunter2-secret\n9X=1\nQ='open\n")
    with pytest.raises(ConfigErrors) as raised:
        read_env_file(str(path))
    rendered = raised.value.render()
    assert [line.split(": ", 1)[0] for line in rendered.splitlines()] == [f"{path}:2:1", f"{path}:3:1", f"{path}:4:1"]
    assert "hunter2" not in rendered


def test_twistd_reads_it_before_the_configuration(tmp_path):
    env_file = tmp_path / "ingest.env"
    env_file.write_text("INGEST_TOKEN=from-the-file\n")
    environ = {key: value for key, value in os.environ.items() if key != "INGEST_TOKEN"}
    without = twistd("-c", PROD, "--check", env=environ)
    assert without.returncode == 2 and "INGEST_TOKEN" in without.stderr
    with_file = twistd("-c", PROD, "--env-file", str(env_file), "--check", env=environ)
    assert with_file.returncode == 0, with_file.stderr
    missing = twistd("-c", PROD, "--env-file", str(tmp_path / "nope.env"), "--check", env=environ)
    assert missing.returncode == 2 and f"{tmp_path / 'nope.env'}: cannot read the environment file" in missing.stderr
