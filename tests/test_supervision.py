"""``deploy/supervisord.conf`` under a real supervisord, seen from 8 clients posting real articles.

The shipped program sections run unchanged; only the install paths are pointed into the test's folder
(``/opt/pipedingest`` → this venv, ``/etc/pipedingest`` and ``/var/lib/pipedingest`` → tmp folders) and the
system user ``pipedingest`` becomes the user running the tests. ``/etc/pipedingest/prod.yaml`` is the
development configuration (SQLite), with one NER child.

* ``supervisorctl stop``: every request sent before the stop is answered 2xx; later ones get 2xx, 503 at the
  door or a closed port; the daemon exits 0 (supervisord says "stopped ... (exit status 0)", not a kill) and
  none of its NER children is left; started again, it has every article it acknowledged.
* ``supervisorctl restart`` while the clients keep posting: every article answered 2xx before, during or after
  the restart is stored.
"""
from __future__ import annotations

import getpass
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from pipedingest.load import read_articles
from tests.conftest import ROOT
from tests.corpus import corpus_path
from tests.test_shutdown import CLIENTS, Outcome, client

BIN = os.path.dirname(sys.executable)
SHIPPED = os.path.join(ROOT, "deploy", "supervisord.conf")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Supervisor:
    """supervisord (foreground) with the shipped programs included, and supervisorctl to drive it."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.port = free_port()
        etc, lib = tmp_path / "etc", tmp_path / "lib"
        for folder in (etc, lib, tmp_path / "logs", tmp_path / "data"):
            folder.mkdir()
        shutil.copy(os.path.join(ROOT, "conf", "articles.yaml"), etc)
        with open(os.path.join(ROOT, "conf", "dev.yaml"), encoding="utf-8") as stream:
            dev = stream.read()
        assert "  min_children: 2" in dev
        (etc / "prod.yaml").write_text(dev.replace("  min_children: 2", "  min_children: 1\n  max_children: 1"))
        (etc / "ingest.env").write_text(f"INGEST_PORT={self.port}\nINGEST_DATA={tmp_path / 'data'}\n")
        with open(SHIPPED, encoding="utf-8") as stream:
            programs = stream.read()
        for shipped, here in (("/opt/pipedingest", sys.prefix), ("/etc/pipedingest", str(etc)),
                              ("/var/lib/pipedingest", str(lib)), ("user=pipedingest", f"user={getpass.getuser()}")):
            assert shipped in programs
            programs = programs.replace(shipped, here)
        (tmp_path / "programs.conf").write_text(programs)
        self.log = tmp_path / "supervisord.log"
        self.conf = tmp_path / "supervisord.conf"
        self.conf.write_text(f"""\
[unix_http_server]
file={tmp_path}/supervisor.sock
[supervisord]
logfile={self.log}
pidfile={tmp_path}/supervisord.pid
childlogdir={tmp_path}/logs
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock
[include]
files={tmp_path}/programs.conf
""")
        env = {name: value for name, value in os.environ.items() if not name.startswith("INGEST_")}
        self.process = subprocess.Popen([os.path.join(BIN, "supervisord"), "-n", "-c", str(self.conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ctl(self, *args: str) -> str:
        done = subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"never ready: {self.ctl('status')}\n{self.daemon_log()[-3000:]}") \
                        from None
                time.sleep(0.1)

    def daemon_log(self) -> str:
        return self.ctl("tail", "-50000", "pipedingest")

    def supervisord_log(self) -> str:
        return self.log.read_text()

    def daemon_pid(self) -> int:
        return int(self.ctl("pid", "pipedingest").strip())

    def stored(self, acknowledged: dict) -> list[str]:
        """The acknowledged articles missing, or stored with other entities than the answer said, read over HTTP."""
        missing = []
        for article_id, answer in acknowledged.items():
            try:
                with urllib.request.urlopen(f"{self.base}/articles/{article_id}", timeout=30) as response:
                    stored = json.loads(response.read())
            except urllib.error.HTTPError:
                missing.append(article_id)
                continue
            if stored["entities"] != answer["entities"]:
                missing.append(article_id)
        return missing

    def shutdown(self) -> None:
        if self.process.poll() is None:
            self.ctl("shutdown")
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


@pytest.fixture
def supervisor(tmp_path):
    supervisor = Supervisor(tmp_path)
    yield supervisor
    supervisor.shutdown()


def articles(count: int = 400) -> list[dict]:
    return [{"id": f"doc-{index}", "source": "supervised", "title": article.get("title", ""), "body": article["body"]}
            for index, article in enumerate(read_articles(corpus_path(), count)) if article["body"].strip()]


def ner_children(parent: int) -> list[int]:
    """The live (not zombie) processes whose parent is *parent* and whose command line is a NER child's."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                command = cmdline.read()
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"pipedingest.ner.child" in command and int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_supervisorctl_stop_answers_what_was_accepted_exits_0_and_leaves_no_child(supervisor):
    supervisor.wait_ready()
    children = ner_children(supervisor.daemon_pid())
    assert children, "the daemon has no NER child to check"
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=client, args=(supervisor.port, articles()[n::CLIENTS], outcomes, None))
               for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    while sum(1 for outcome in outcomes if outcome.status in (200, 201)) < 24:
        assert time.monotonic() < deadline and all(thread.is_alive() for thread in threads), "no load"
        time.sleep(0.01)
    stopped_at = time.monotonic()
    said = supervisor.ctl("stop", "pipedingest")
    for thread in threads:
        thread.join(300)
    assert "pipedingest: stopped" in said, said

    sent_before = [o for o in outcomes if o.sent_at < stopped_at]
    unanswered = [(o.article_id, o.status) for o in sent_before if o.status not in (200, 201)]
    assert not unanswered, f"requests sent before the stop were not answered 2xx: {unanswered}"
    assert any(o.answered_at > stopped_at for o in sent_before), "nothing was in flight: the drain was not tested"
    assert all(o.status in (200, 201, 503, None) for o in outcomes), sorted({o.status for o in outcomes}, key=str)
    log = supervisor.supervisord_log()
    assert "stopped: pipedingest (exit status 0)" in log, log[-3000:]
    assert "SIGKILL" not in log, log[-3000:]
    assert "STOPPED" in supervisor.ctl("status", "pipedingest")
    assert "stopped cleanly" in supervisor.daemon_log()
    assert [pid for pid in children if alive(pid)] == [], "NER children outlived their daemon"

    acknowledged = {o.article_id: json.loads(o.body) for o in outcomes if o.status in (200, 201)}
    assert "pipedingest: started" in supervisor.ctl("start", "pipedingest")
    supervisor.wait_ready()
    assert supervisor.stored(acknowledged) == []


def keep_posting(port: int, batch: list[dict], outcomes: list[Outcome], until: threading.Event) -> None:
    """Post *batch* in turn until *until* is set (or the batch is done); after a failure, a new connection and
    the same article again (its id makes that safe)."""
    connection, index = None, 0
    while index < len(batch) and not until.is_set():
        article = batch[index]
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            connection.request("POST", "/articles", json.dumps(article), {"content-type": "application/json"})
            sent_at = time.monotonic()
            response = connection.getresponse()
            outcomes.append(Outcome(article["id"], sent_at, time.monotonic(), response.status, response.read()))
            index += 1
        except OSError:
            outcomes.append(Outcome(article["id"], time.monotonic(), time.monotonic(), None))
            connection.close()
            connection = None
            time.sleep(0.05)
    if connection is not None:
        connection.close()


def test_supervisorctl_restart_loses_no_acknowledged_article(supervisor):
    supervisor.wait_ready()
    first = supervisor.daemon_pid()
    outcomes: list[Outcome] = []
    done = threading.Event()
    threads = [threading.Thread(target=keep_posting, args=(supervisor.port, articles(800)[n::CLIENTS], outcomes, done))
               for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 300
        while sum(1 for outcome in outcomes if outcome.status in (200, 201)) < 24:
            assert time.monotonic() < deadline, "no load"
            time.sleep(0.01)
        said = supervisor.ctl("restart", "pipedingest")
        assert "pipedingest: started" in said, said
        restarted_at = time.monotonic()
        assert supervisor.daemon_pid() != first
        while sum(1 for o in outcomes if o.status in (200, 201) and o.sent_at > restarted_at) < 24:
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), "no answer after the restart"
            time.sleep(0.01)
    finally:
        done.set()
        for thread in threads:
            thread.join(300)
    assert any(o.status is None or o.status == 503 for o in outcomes), "the restart went unseen by the clients"
    assert "stopped: pipedingest (exit status 0)" in supervisor.supervisord_log()
    acknowledged = {o.article_id: json.loads(o.body) for o in outcomes if o.status in (200, 201)}
    supervisor.wait_ready()
    assert supervisor.stored(acknowledged) == []


def test_ner_children_end_with_a_daemon_killed_by_sigkill(tmp_path):
    """A KILL leaves the daemon no time to stop its children: they end on their own when their pipe closes."""
    from tests.twistd_process import Daemon

    daemon = Daemon(os.path.join(ROOT, "conf", "dev.yaml"), "ner.min_children=1", "ner.max_children=1",
                    cwd=tmp_path, env=dict(os.environ, INGEST_DATA=str(tmp_path / "data")))
    try:
        daemon.wait_ready()
        children = ner_children(daemon.process.pid)
        assert children, daemon.output[-3000:]
        daemon.kill()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in children):
            assert time.monotonic() < deadline, f"NER children {children} outlived a killed daemon"
            time.sleep(0.05)
    finally:
        daemon.kill()
