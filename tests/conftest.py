"""Shared fixtures: daemons built from YAML text, started in-process on port 0."""
from __future__ import annotations

import os
import sys
import textwrap

import pytest
import pytest_twisted

from pipedingest.config.errors import ConfigErrors
from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.firestore_emulator import EmulatorUnavailable, FirestoreEmulator
from tests.redis_server import RedisServer, RedisUnavailable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEV = os.path.join(ROOT, "conf", "dev.yaml")
PROD = os.path.join(ROOT, "conf", "prod.yaml")
# Plugin packages used by the tests (a processor bundle, status-test plugins).
sys.path.insert(0, os.path.join(HERE, "fixtures"))


def write_config(directory, text: str, name: str = "conf.yaml") -> str:
    path = os.path.join(str(directory), name)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(textwrap.dedent(text))
    return path


def config_errors(directory, text: str, overrides=(), environ=None) -> list[str]:
    """The rendered errors a configuration produces (an empty list when it is clean)."""
    path = write_config(directory, text)
    try:
        build_daemon(load_config(path, overrides, environ))
    except ConfigErrors as errors:
        return [error.render() for error in errors.errors]
    return []


@pytest_twisted.async_yield_fixture
async def daemons(tmp_path, monkeypatch):
    """``await daemons(yaml_text)`` (or ``daemons(path=...)``) starts a daemon; all stop after the test.

    ``clock=`` times it on a ``task.Clock`` (it still listens on the real reactor);
    ``prepare(daemon)`` runs before it starts.  The test runs in its own folder, so
    relative data paths (``var/``) land there.
    """
    monkeypatch.chdir(tmp_path)
    started = []

    async def start(text: str = "", overrides=(), name="conf.yaml", wait=True, path=None, clock=None,
                    prepare=None):
        path = path or write_config(tmp_path, text, name)
        daemon = build_daemon(load_config(path, overrides), clock=clock)
        if prepare is not None:
            prepare(daemon)
        daemon.startService()
        started.append(daemon)
        if wait:
            await daemon.started
        return daemon

    yield start
    for daemon in reversed(started):
        stopped = daemon.stopService()
        clock = daemon.runtime.clock
        if hasattr(clock, "advance"):  # a task.Clock: its time must pass for timers of the stop to fire
            from twisted.internet import reactor
            from twisted.internet.task import deferLater

            while not all(node.state in ("stopped", "failed", "waiting") for node in daemon.graph.nodes.values()):
                clock.advance(1)
                await deferLater(reactor, 0.05, lambda: None)
        await stopped


async def until(condition, timeout: float = 30.0, what: str = "condition"):
    """Wait in real time, without blocking the reactor, until *condition()* holds."""
    import time

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await deferLater(reactor, 0.01, lambda: None)


def url(daemon, path: str = "/", site: str | None = None) -> str:
    service = daemon.sites[site] if site else next(iter(daemon.sites.values()))
    return service.url + path


@pytest.fixture(scope="session")
def firestore_emulator():
    """The session's emulator on a free port, with FIRESTORE_EMULATOR_HOST/GOOGLE_CLOUD_PROJECT set."""
    emulator = FirestoreEmulator()
    try:
        emulator.start()
    except EmulatorUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    saved = {name: os.environ.get(name) for name in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = emulator.project
    yield emulator
    emulator.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def firestore(firestore_emulator):
    """The emulator, running (restarted if a test stopped it) and emptied before the test."""
    if firestore_emulator.process is None or firestore_emulator.process.poll() is not None:
        firestore_emulator.start()
    firestore_emulator.clear()
    yield firestore_emulator
    if firestore_emulator.process is not None:
        firestore_emulator.resume()


@pytest.fixture(scope="session")
def redis_server():
    """The session's redis-server on a free port (never 6379), with REDIS_URL set; gone at session end."""
    server = RedisServer()
    try:
        server.start()
    except RedisUnavailable as error:
        server.discard()
        pytest.fail(str(error), pytrace=False)
    saved = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = server.url
    yield server
    server.discard()
    if saved is None:
        os.environ.pop("REDIS_URL", None)
    else:
        os.environ["REDIS_URL"] = saved


@pytest.fixture
def redis(redis_server):
    """The server, running (restarted if a test stopped or killed it), not paused, and flushed."""
    if not redis_server.running:
        redis_server.start()
    redis_server.resume()
    redis_server.flush()
    yield redis_server
    if redis_server.running:
        redis_server.resume()
