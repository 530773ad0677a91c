"""Redis over TLS with an ACL user, as a managed Redis asks: a real redis-server 7 with ``tls-port`` and a
``user`` line (both only from a config file), certificates made with openssl. conf/front.yaml and conf/worker.yaml
run the articles API through it with ``rediss://user:password@…`` and ``redis.ca_file``; a wrong CA or password is
a clear reason on ``/ready``, never a hang; the password is in no log, no /status and no configuration error."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.redis_server import TLSRedisServer, make_ca
from tests.test_scaleout import Cluster
from tests.twistd_process import twistd

PASSWORD = f"pw-{uuid.uuid4().hex}"
USER = "ingest"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("redis-tls"))
    make_ca(directory, "other-ca")  # a CA that did not sign the server's certificate
    server = TLSRedisServer(directory=directory, user=USER, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def tls_cluster(tmp_path, tls_redis, url=None, ca="ca.crt"):
    cluster = Cluster(tmp_path)
    cluster.env["REDIS_URL"] = url or tls_redis.url
    if ca is not None:
        cluster.env["REDIS_CA_FILE"] = os.path.join(tls_redis.directory, ca)  # read by conf/streams.yaml
    return cluster


def test_front_and_worker_run_the_articles_api_over_tls_with_an_acl_user(tmp_path, tls_redis, firestore):
    cluster = tls_cluster(tmp_path, tls_redis)
    try:
        cluster.worker("worker-1")
        front = cluster.front("front-1")
        status, answer = cluster.post(front, {"id": "tls-1", "body": "Angela Merkel met Emmanuel Macron in Paris."})
        assert status == 201, answer
        assert {"Angela Merkel", "Emmanuel Macron", "Paris"} <= {e["text"] for e in answer["entities"]}
        status, stored = front.get_json("/articles/tls-1")
        assert status == 200 and stored["id"] == "tls-1"
        status, report = front.get_json("/status")
        shown = str(report)
        assert PASSWORD not in shown and f"rediss://{USER}:***@localhost" in shown
        info = tls_redis.command("XINFO", "STREAM", "articles:jobs")
        assert int(dict(zip(info[::2], info[1::2]))["entries-added"]) >= 1  # the job went through this Redis
    finally:
        cluster.stop()
    for daemon in cluster.daemons:
        assert PASSWORD not in daemon.output


@pytest.mark.parametrize("mistake, reason", [
    ("ca", "TLS handshake failed"),                       # the server's certificate is not signed by ca_file
    ("name", "TLS handshake failed"),                     # ... nor for the name server_name expects
    ("password", "authentication failed (WRONGPASS"),
    ("user", "authentication failed (WRONGPASS"),
    ("plain client", "cannot connect"),                   # redis:// to the TLS port
    ("plain server", "TLS handshake failed"),             # rediss:// to a plain redis-server
])
def test_a_wrong_ca_name_password_user_or_scheme_is_a_clear_reason_on_ready(tmp_path, tls_redis, redis_server,
                                                                            firestore, mistake, reason):
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = {"password": f"rediss://{USER}:{wrong}@localhost:{tls_redis.port}/0",
           "user": f"rediss://{wrong}:{PASSWORD}@localhost:{tls_redis.port}/0",
           "plain client": f"redis://{USER}:{PASSWORD}@localhost:{tls_redis.port}/0",
           "plain server": f"rediss://{USER}:{PASSWORD}@localhost:{redis_server.port}/0"}.get(mistake)
    cluster = tls_cluster(tmp_path, tls_redis, url=url,
                          ca={"ca": "other-ca.crt", "plain client": None}.get(mistake, "ca.crt"))
    overrides = ["redis.server_name=elsewhere.example"] if mistake == "name" else []
    try:
        front = cluster.front("front-1", *overrides, ready=False)
        front.wait_listening()
        end = time.monotonic() + 60
        while True:
            status, answer = front.get_json("/ready")
            text = str(answer)
            if reason in text or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert status == 503 and reason in text, answer
        assert PASSWORD not in text
    finally:
        cluster.stop()
    assert PASSWORD not in front.output


def test_configuration_errors_name_the_line_and_never_the_password(tmp_path):
    config = tmp_path / "redis.yaml"
    config.write_text(f"redis:\n  url: rediss://{USER}:{PASSWORD}@localhost:notaport/0\n"
                      f"  ca_file: {tmp_path / 'missing.crt'}\n")
    result = twistd("-c", str(config), "--check")
    assert result.returncode == 2
    assert f"{config}:2:8: 'rediss://{USER}:***@localhost:notaport/0': the port must be a number" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr

    (tmp_path / "not.pem").write_text("hello\n")
    config.write_text(f"redis:\n  url: rediss://{USER}:{PASSWORD}@localhost:6390/0\n  ca_file: {tmp_path / 'not.pem'}\n"
                      f"  cert_file: {tmp_path / 'missing.crt'}\n")
    result = twistd("-c", str(config), "--check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{config}:3:12: ") and "no PEM certificate" in line for line in lines), lines
    assert any(line.startswith(f"{config}:4:14: ") and "cannot read" in line for line in lines), lines
    assert any("cert_file and key_file go together" in line for line in lines), lines

    config.write_text(f"redis:\n  url: redis://localhost:6390/0\n  ca_file: {tmp_path / 'not.pem'}\n")
    result = twistd("-c", str(config), "--check")
    assert result.returncode == 2 and f"{config}:3:12: ca_file is for TLS, but the URL is redis://" in result.stderr


def redis_client_state(daemon) -> dict:
    """The ``redis.client`` entry of the daemon's /status: the dict with its url and connected."""
    def find(value):
        if isinstance(value, dict):
            if "connected" in value and "url" in value:
                return value
            value = list(value.values())
        if isinstance(value, list):
            for item in value:
                found = find(item)
                if found is not None:
                    return found
        return None

    status, report = daemon.get_json("/status")
    found = find(report)
    assert status == 200 and found is not None, report
    return found


def test_a_refused_password_is_retried_and_the_client_connects_once_redis_accepts_it(tmp_path, tls_redis, firestore):
    """txredisapi stops trying after a refused AUTH; the daemon's client must not: it connects once the ACL lets it in."""
    user, password = f"late-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    cluster = tls_cluster(tmp_path, tls_redis, url=f"rediss://{user}:{password}@localhost:{tls_redis.port}/0")
    try:
        front = cluster.front("front-1", ready=False)
        front.wait_listening()
        end = time.monotonic() + 60
        while "WRONGPASS" not in str(front.get_json("/ready")[1]):
            assert time.monotonic() < end, front.get_json("/ready")
            time.sleep(0.2)
        tls_redis.command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
        end = time.monotonic() + 60
        while True:  # /status, not /ready: a daemon that missed its start-up window stays failed, as designed
            client = redis_client_state(front)
            if client["connected"] or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert client["connected"] and client["last_error"] is None, client
    finally:
        cluster.stop()
        tls_redis.command("ACL", "DELUSER", user)
    assert password not in front.output
