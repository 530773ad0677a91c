"""``$NOTIFY_SOCKET``: a real twistd tells its service manager READY=1 once ready, RELOADING=1 then READY=1 around a
SIGHUP, STOPPING=1 at SIGTERM; and never READY=1 when its status tests fail.

The test plays systemd: it binds an AF_UNIX datagram socket and passes its path as ``NOTIFY_SOCKET``, as a unit of
``Type=notify`` does (``deploy/pipedingest.service``).
"""
from __future__ import annotations

import os
import select
import signal
import socket
import time

import pytest

from pipedingest.sdnotify import SystemdNotifier
from tests.conftest import ROOT
from tests.twistd_process import Daemon

EULER = os.path.join(ROOT, "conf", "examples", "euler.yaml")


class Manager:
    """The service manager's end: a datagram socket; each message as a ``{key: value}`` dict."""

    def __init__(self, path: str):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(path)
        self.path = path
        self.messages: list[dict] = []

    def next(self, timeout: float = 120) -> dict:
        """The next message, waited for at most *timeout* seconds."""
        readable, _, _ = select.select([self.socket], [], [], timeout)
        assert readable, f"no message from the daemon within {timeout} s; had {self.messages}"
        data = self.socket.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.messages.append(message)
        return message

    def until(self, key: str, timeout: float = 120) -> dict:
        """Messages up to the first holding *key*; that one."""
        end = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, end - time.monotonic()))
            if key in message:
                return message

    def close(self):
        self.socket.close()


@pytest.fixture
def manager(tmp_path):
    manager = Manager(str(tmp_path / "notify.sock"))
    yield manager
    manager.close()


def test_ready_after_the_status_tests_reloading_then_ready_on_sighup_stopping_on_sigterm(tmp_path, manager):
    env = dict(os.environ, NOTIFY_SOCKET=manager.path, INGEST_DATA=str(tmp_path / "data"))
    daemon = Daemon(os.path.join(ROOT, "conf", "dev.yaml"), "ner.min_children=1", "ner.max_children=1",
                    cwd=tmp_path, env=env)
    try:
        ready = manager.until("READY")
        assert ready["READY"] == "1"
        # Ready means ready: /ready answers 200 the moment the manager hears it, and the tests had passed.
        status, answer = daemon.get_json("/ready")
        assert status == 200, answer
        assert "status tests passed" in daemon.output
        assert [m for m in manager.messages if "READY" in m] == [ready]

        daemon.process.send_signal(signal.SIGHUP)
        reloading = manager.until("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
        again = manager.until("READY")
        assert again["READY"] == "1" and again["STATUS"].startswith("reload applied")
        daemon.wait_for("status tests passed after the reload")

        daemon.terminate()
        stopping = manager.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert daemon.wait(120) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()
    assert "stopped cleanly" in daemon.output


def test_no_ready_when_the_status_tests_fail(tmp_path, manager):
    env = dict(os.environ, NOTIFY_SOCKET=manager.path)
    daemon = Daemon(EULER, "status-tests.cases.0.expect.status=418", port_key="web.site.port", cwd=tmp_path, env=env)
    try:
        daemon.wait_for("status tests FAILED")
        status = manager.until("STATUS")
        assert "READY" not in status and "failed" in status["STATUS"], status
        code, _ = daemon.get_json("/ready")
        assert code == 503
        daemon.terminate()
        manager.until("STOPPING")
        assert daemon.wait(120) == 0
    finally:
        daemon.kill()
    assert not [m for m in manager.messages if "READY" in m], manager.messages


def test_an_abstract_socket_and_a_vanished_manager(tmp_path):
    """``@name`` is the abstract namespace; a manager gone away costs a warning, never the daemon."""
    name = f"pipedingest-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("READY=1", "STATUS=two\nlines")
        assert listener.recv(4096) == b"READY=1\nSTATUS=two lines"
    assert not notifier.send("STOPPING=1")
    assert not SystemdNotifier.from_environment({}).send("READY=1")
    assert not SystemdNotifier(str(tmp_path / "nobody")).send("READY=1")
