"""Sites listening on Twisted endpoints, as real ``twistd ingest`` processes and their clients see them.

TLS with a certificate made by ``openssl`` here (the client trusts only it), a UNIX socket, a socket passed
as systemd passes one (fd 3, ``LISTEN_FDS``, ``LISTEN_PID``), a reload that moves the site, and every
mistake reported by ``--check`` with its file and line.  In each, the daemon's own status tests reach the
site where it listens: ``/ready`` answers 200 only once they passed.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from tests.conftest import write_config
from tests.twistd_process import Daemon, twistd

SITE = """\
web:
  main:
    endpoint: "{endpoint}"
{extra}    routing:
      answer:
        __config__: {{processor: pipeline.answer, methods: [GET]}}
pipelines:
  answer:
    - set-value: {{path: content, value: {{answer: {answer}}}}}
    - write-web-response
status-tests:
  cases:
    - name: the site answers where it listens
      path: /answer
      expect: {{status: 200, json: {{answer: {answer}}}}}
"""


def site(endpoint: str, extra: str = "", answer: int = 42) -> str:
    return SITE.format(endpoint=endpoint, extra=extra, answer=answer)


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a UNIX socket (its Host header: localhost)."""

    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, object]:
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def until_ready(daemon: Daemon, connect, timeout: float = 120) -> None:
    """Poll /ready through *connect()* until it answers 200 (the status tests passed over this endpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = get(connect(), "/ready")
            if status == 200:
                return
        except OSError:
            status, body = None, None
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never ready ({status} {body}):\n{daemon.output[-4000:]}")
        time.sleep(0.1)


def listening_url(daemon: Daemon, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(r"web site 'main' listening on (\S+)/\n", daemon.output)
        if match:
            return match.group(1)
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the site never listened:\n{daemon.output[-4000:]}")
        time.sleep(0.05)


def stop(daemon: Daemon) -> None:
    try:
        if daemon.process.poll() is None:
            daemon.terminate()
            assert daemon.wait(60) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()


def make_certificate(folder, name: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate for *name* and 127.0.0.1, and its key, made by openssl: (key, cert) paths."""
    key, cert = os.path.join(folder, f"{name}.key"), os.path.join(folder, f"{name}.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return key, cert


# -- TLS -------------------------------------------------------------------------------------------------------


def test_tls_with_a_generated_certificate(tmp_path):
    key, cert = make_certificate(str(tmp_path))
    config = write_config(tmp_path, site(f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"))
    daemon = Daemon(config, cwd=tmp_path, port_key=None)
    try:
        url = listening_url(daemon)
        assert url.startswith("https://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        trusting = ssl.create_default_context(cafile=cert)
        until_ready(daemon, lambda: http.client.HTTPSConnection("localhost", port, context=trusting, timeout=30))
        assert get(http.client.HTTPSConnection("localhost", port, context=trusting), "/answer") == (200, {"answer": 42})
        # Only TLS is spoken there, with that certificate: a client trusting the system's CAs refuses it ...
        with pytest.raises(ssl.SSLCertVerificationError):
            get(http.client.HTTPSConnection("localhost", port, context=ssl.create_default_context()), "/answer")
        # ... and plain HTTP gets no answer.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            get(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "/answer")
        status = get(http.client.HTTPSConnection("localhost", port, context=trusting), "/status")[1]
        assert url in json.dumps(status)
        assert status["status_tests"]["passed"] is True
    finally:
        stop(daemon)


# -- a UNIX socket ---------------------------------------------------------------------------------------------


def test_a_unix_socket(tmp_path):
    path = str(tmp_path / "ingest.sock")
    config = write_config(tmp_path, site(f"unix:{path}:mode=600"))
    daemon = Daemon(config, cwd=tmp_path, port_key=None)
    try:
        url = listening_url(daemon)
        assert url.startswith("http+unix://") and url.endswith("ingest.sock"), url
        until_ready(daemon, lambda: UnixConnection(path))
        assert get(UnixConnection(path), "/answer") == (200, {"answer": 42})
        assert os.stat(path).st_mode & 0o777 == 0o600
        # A UNIX socket is reached from this machine only: loopback Host names, as on 127.0.0.1.
        connection = UnixConnection(path)
        connection.request("GET", "/answer", headers={"Host": "evil.example"})
        assert connection.getresponse().status == 421
        connection.close()
    finally:
        stop(daemon)
    assert not os.path.exists(path)  # Twisted removes its socket when it stops listening


def test_a_unix_socket_left_by_a_killed_daemon_is_taken_over(tmp_path):
    path = str(tmp_path / "ingest.sock")
    config = write_config(tmp_path, site(f"unix:{path}"))
    killed = Daemon(config, cwd=tmp_path, port_key=None)
    try:
        until_ready(killed, lambda: UnixConnection(path))
    finally:
        killed.kill()  # SIGKILL: the socket file and its lock file stay behind
    assert os.path.exists(path)
    daemon = Daemon(config, cwd=tmp_path, port_key=None)
    try:
        until_ready(daemon, lambda: UnixConnection(path))
        # A second daemon on the same socket does not steal it: it fails to start, and the first one serves on.
        second = twistd("-c", config, cwd=tmp_path)
        assert second.returncode != 0 and "Cannot acquire lock" in second.stdout + second.stderr, second.stdout
        assert get(UnixConnection(path), "/answer") == (200, {"answer": 42})
    finally:
        stop(daemon)


# -- systemd socket activation ---------------------------------------------------------------------------------

#: As systemd (227 or later) starts a socket-activated service: the socket as fd 3, LISTEN_FDS=1, LISTEN_FDNAMES
#: (its FileDescriptorName, as deploy/pipedingest.socket sets it), LISTEN_PID the service's own pid (this process's, which exec
#: keeps). Twisted's ListenFDs checks all three.
ACTIVATE = ("import os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.close(int(sys.argv[1]))\n"
            "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='ingest', LISTEN_PID=str(os.getpid()))\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n")


def test_systemd_socket_activation(tmp_path):
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    config = write_config(tmp_path, site("systemd:domain=INET:name=ingest", "    allowed_hosts: [localhost, 127.0.0.1]\n"))
    daemon = Daemon(config, cwd=tmp_path, port_key=None, pass_fds=(listening.fileno(),),
                    wrapper=(sys.executable, "-c", ACTIVATE, str(listening.fileno())))
    listening.close()  # the daemon holds the socket now: what answers on the port is the daemon
    try:
        assert listening_url(daemon) == f"http://127.0.0.1:{port}"
        until_ready(daemon, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30))
        assert get(http.client.HTTPConnection("127.0.0.1", port), "/answer") == (200, {"answer": 42})
    finally:
        stop(daemon)


def test_systemd_without_a_passed_socket_fails_to_start_clearly(tmp_path):
    config = write_config(tmp_path, site("systemd:domain=INET:index=0", "    allowed_hosts: ['*']\n"))
    environment = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID")}
    result = twistd("-c", config, cwd=tmp_path, env=environment)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no socket passed by systemd for 'systemd:domain=INET:index=0'" in result.stdout + result.stderr


# -- a reload that moves the site ------------------------------------------------------------------------------


def test_a_reload_that_changes_the_endpoint_rebinds(tmp_path):
    config = write_config(tmp_path, site("tcp:0:interface=127.0.0.1", answer=1))
    daemon = Daemon(config, cwd=tmp_path, port_key=None)
    path = str(tmp_path / "moved.sock")
    try:
        port = daemon.wait_listening()
        until_ready(daemon, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30))
        write_config(tmp_path, site(f"unix:{path}", answer=2))
        os.kill(daemon.process.pid, signal.SIGHUP)
        daemon.wait_for("listening on http+unix://")
        until_ready(daemon, lambda: UnixConnection(path))
        deadline = time.monotonic() + 60
        while (status := get(UnixConnection(path), "/status")[1])["config"]["reloads"] < 1:
            assert time.monotonic() < deadline, daemon.output[-3000:]
            time.sleep(0.05)
        assert status["config"]["last_reload"]["outcome"] == "applied", status["config"]
        assert get(UnixConnection(path), "/answer") == (200, {"answer": 2})
        # The old port is closed once the old site drained (nothing was open).
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the old port still accepts connections"
            time.sleep(0.05)
    finally:
        stop(daemon)


# -- mistakes, at --check --------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, extra, expected", [
    ("tcp:99999", "", "conf.yaml:3:15: web site 'main': port '99999' is not a number from 0 to 65535"),
    ("tcp:8080:interface=here", "", "conf.yaml:3:15: web site 'main': interface 'here' is not an IP address"),
    ("tcpx:8080", "", "conf.yaml:3:15: web site 'main': unknown endpoint type 'tcpx' in 'tcpx:8080'"),
    ("tcp:8080:color=red", "", "conf.yaml:3:15: web site 'main': a tcp endpoint takes no color"),
    ("ssl:8443", "", "conf.yaml:3:15: web site 'main': an ssl endpoint needs privateKey="),
    ("ssl:8443:privateKey=missing.key:certKey=missing.pem", "",
     "conf.yaml:3:15: web site 'main': the private key file 'missing.key' cannot be read: No such file or directory"),
    ("ssl:8443:privateKey=notpem.key:certKey=localhost.pem", "",
     "conf.yaml:3:15: web site 'main': the private key file 'notpem.key' holds no PEM private key"),
    ("ssl:8443:privateKey=localhost.key:certKey=notpem.key", "",
     "conf.yaml:3:15: web site 'main': the certificate file 'notpem.key' holds no PEM certificate"),
    ("ssl:8443:privateKey=other.key:certKey=localhost.pem", "",
     "conf.yaml:3:15: web site 'main': the private key 'other.key' does not match the certificate 'localhost.pem'"),
    ("unix:/nonexistent/folder/ingest.sock", "",
     "conf.yaml:3:15: web site 'main': the folder of the UNIX socket '/nonexistent/folder/ingest.sock' does not "
     "exist"),
    ("unix:notpem.key", "", "conf.yaml:3:15: web site 'main': 'notpem.key' exists and is not a UNIX socket"),
    ("systemd:domain=INET", "", "conf.yaml:3:15: web site 'main': a systemd endpoint takes exactly one of index="),
    ("systemd:domain=IPX:index=0", "", "conf.yaml:3:15: web site 'main': a systemd endpoint needs domain=INET"),
    ("systemd:domain=INET:index=0", "",
     "conf.yaml:3:15: web site 'main' listens on a socket systemd passes it: allowed_hosts must say"),
    ("tcp:8080", "    port: 8080\n", "conf.yaml:4:11: web site 'main' has both an endpoint and port"),
])
def test_check_reports_a_bad_endpoint_with_its_file_and_line(tmp_path, endpoint, extra, expected):
    make_certificate(str(tmp_path))
    make_certificate(str(tmp_path), "other")
    (tmp_path / "notpem.key").write_text("not a key\n")
    write_config(tmp_path, site(endpoint, extra))
    result = twistd("-c", "conf.yaml", "--check", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_check_accepts_every_endpoint_kind(tmp_path):
    key, cert = make_certificate(str(tmp_path))
    for endpoint, extra in [("tcp:8080:interface=127.0.0.1", ""), (f"ssl:8443:privateKey={key}:certKey={cert}", ""),
                            (f"unix:{tmp_path}/ingest.sock:mode=660", ""),
                            ("systemd:domain=INET:index=0", "    allowed_hosts: [ingest.example.com]\n")]:
        write_config(tmp_path, site(endpoint, extra))
        result = twistd("-c", "conf.yaml", "--check", cwd=tmp_path)
        assert result.returncode == 0, (endpoint, result.stdout + result.stderr)
