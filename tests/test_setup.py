"""What ``scripts/bootstrap`` sets up: the two lock files, a clean ``pip check``, the news corpus.

``requirements.lock`` pins what the daemon needs, ``requirements-dev.lock`` what the tests and benchmarks add.
Which package belongs where is not a list kept by hand: it follows from setup.py (``install_requires`` and the
``test`` extra) and the dependency metadata of what is installed, walked here the way pip resolves it.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.corpus import corpus_path


def setup_keyword(name: str):
    """A literal keyword argument of the ``setup()`` call in setup.py, read from the source."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as stream:
        tree = ast.parse(stream.read())
    (value,) = [node.value for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == name]
    return ast.literal_eval(value)


def pins(name: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a lock file (not of files it includes)."""
    found = {}
    with open(os.path.join(ROOT, name), encoding="utf-8") as stream:
        for line in stream:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                requirement = Requirement(line)
                (specifier,) = requirement.specifier
                assert specifier.operator == "==", f"{name}: {line!r} is not pinned with =="
                found[canonicalize_name(requirement.name)] = specifier.version
    return found


def pulled(requirements: list[str]) -> set[str]:
    """The canonical names of these requirements and of everything they pull, per the installed metadata."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            needs = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{requirement} is not installed: run scripts/bootstrap") from None
        for text in needs:
            need = Requirement(text)
            if need.marker is None or any(need.marker.evaluate({"extra": extra}) for extra in {""} | extras):
                todo.append(need)
    return set(seen)


def test_requirements_lock_pins_every_install_requires_and_all_it_pulls():
    daemon = pins("requirements.lock")
    for text in setup_keyword("install_requires"):
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in daemon, f"setup.py needs {text} but requirements.lock does not pin it"
        assert requirement.specifier.contains(daemon[name]), f"requirements.lock pins {name}=={daemon[name]}, " \
                                                             f"outside setup.py's {text}"
    missing = pulled(setup_keyword("install_requires")) - set(daemon)
    assert not missing, f"the daemon pulls these but requirements.lock does not pin them: {sorted(missing)}"


def test_the_test_tools_and_only_what_they_pull_are_in_requirements_dev_lock():
    daemon, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    tools = pulled(setup_keyword("extras_require")["test"]) - pulled(setup_keyword("install_requires"))
    assert {"pytest", "pytest-twisted", "treq", "hypothesis"} <= tools
    assert not tools & set(daemon), f"test-only tools in requirements.lock: {sorted(tools & set(daemon))}"
    assert set(dev) == tools, f"requirements-dev.lock should pin exactly the test-only tools; " \
                              f"missing {sorted(tools - set(dev))}, extra {sorted(set(dev) - tools)}"
    with open(os.path.join(ROOT, "requirements-dev.lock"), encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    assert "-r requirements.lock" in lines, "the test tools must resolve against the daemon's pins"


def test_the_venv_holds_the_pinned_versions():
    pinned = {**pins("requirements.lock"), **pins("requirements-dev.lock")}
    wrong = {name: (version, importlib.metadata.version(name))
             for name, version in pinned.items() if importlib.metadata.version(name) != version}
    assert not wrong, f"installed versions are not the pinned ones (pinned, installed): {wrong}"


def test_pip_check_is_clean():
    check = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "No broken requirements found."


def test_the_news_corpus_is_the_pinned_file_and_git_ignores_it():
    with open(os.path.join(ROOT, "scripts", "bootstrap"), encoding="utf-8") as stream:
        (pinned,) = re.findall(r"^corpus_sha256=([0-9a-f]{64})$", stream.read(), re.MULTILINE)
    with open(corpus_path(), "rb") as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == pinned
    ignored = subprocess.run(["git", "check-ignore", "--quiet", os.path.relpath(corpus_path(), ROOT)], cwd=ROOT)
    assert ignored.returncode == 0, "the corpus must stay out of git (.cache/ in .gitignore)"
