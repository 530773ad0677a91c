"""The redis-server the tests use: real, on its own port, durable across kill -9, and cleaned up."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.conftest import ROOT
from tests.redis_server import SYSTEM_PORT, RedisReplyError, RedisServer, RedisUnavailable

pytestmark = pytest.mark.slow


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_answers_ping_on_its_own_port_with_aof_and_no_snapshots(redis):
    assert redis.command("PING") == "PONG"
    assert redis.port != SYSTEM_PORT
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert os.environ["REDIS_URL"] == redis.url
    assert redis.command("CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]
    assert redis.command("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
    assert redis.command("CONFIG", "GET", "appendfsync") == ["appendfsync", "everysec"]
    assert redis.command("CONFIG", "GET", "save") == ["save", ""]
    assert redis.command("CONFIG", "GET", "dir") == ["dir", redis.directory]


def test_command_parses_replies_and_raises_error_replies(redis):
    assert redis.command("XADD", "s", "1-1", "field", "value") == "1-1"
    assert redis.command("XLEN", "s") == 1
    assert redis.command("XRANGE", "s", "-", "+") == [["1-1", ["field", "value"]]]
    assert redis.command("XRANGE", "s", "-", "+", decode=False) == [[b"1-1", [b"field", b"value"]]]
    assert redis.command("GET", "missing") is None
    assert redis.command("XGROUP", "CREATE", "s", "g", "0") == "OK"
    with pytest.raises(RedisReplyError, match="^BUSYGROUP"):
        redis.command("XGROUP", "CREATE", "s", "g", "0")


def test_an_acknowledged_entry_survives_kill_9_and_restart_on_the_same_port(redis):
    port, pid = redis.port, redis.pid
    redis.command("XADD", "articles", "*", "id", "a1")
    redis.kill()
    assert not process_exists(pid)
    assert refuses_connections(port)
    redis.restart()
    assert (redis.port, redis.url) == (port, f"redis://127.0.0.1:{port}/0")
    assert redis.pid != pid
    assert redis.command("XLEN", "articles") == 1


def test_stop_and_restart_keeps_the_data(redis):
    redis.command("SET", "k", "v")
    redis.stop()
    assert refuses_connections(redis.port)
    redis.restart()
    assert redis.command("GET", "k") == "v"


def test_a_paused_server_hangs_until_resumed(redis):
    redis.pause()
    with pytest.raises(socket.timeout):
        redis.command("PING", timeout=0.3)
    redis.resume()
    assert redis.command("PING") == "PONG"


def test_flush_empties_every_database(redis):
    redis.command("XADD", "s", "*", "f", "v")
    cli = ["redis-cli", "-p", str(redis.port), "-n", "1"]
    subprocess.run(cli + ["SET", "a", "1"], check=True, capture_output=True, timeout=10)
    redis.flush()
    assert redis.command("DBSIZE") == 0
    assert subprocess.run(cli + ["DBSIZE"], check=True, capture_output=True, text=True,
                          timeout=10).stdout.strip() == "0"


# The next three run in this order (pytest keeps file order): each leaves the server
# in a state the ``redis`` fixture must undo before the following one.

def test_a_test_may_leave_the_server_killed(redis):
    redis.command("XADD", "left-over", "*", "f", "v")
    redis.kill()


def test_the_next_test_gets_it_restarted_and_flushed(redis):
    assert redis.command("PING") == "PONG"
    assert redis.command("DBSIZE") == 0
    redis.command("XADD", "left-over", "*", "f", "v")
    redis.pause()


def test_the_next_test_gets_it_resumed_and_flushed(redis):
    assert redis.command("PING", timeout=1) == "PONG"
    assert redis.command("DBSIZE") == 0


def test_stop_leaves_no_process_and_discard_no_folder(tmp_path):
    server = RedisServer().start()
    pid, directory = server.pid, server.directory
    assert os.path.isfile(os.path.join(directory, "appendonlydir", "appendonly.aof.manifest"))
    server.stop()
    assert server.process is None and not server.running
    assert not process_exists(pid)  # stopped and reaped: not even a zombie
    assert refuses_connections(server.port)
    server.discard()
    assert not os.path.exists(directory)


def test_a_missing_binary_says_what_to_do():
    server = RedisServer(binary="redis-server-that-is-not-installed")
    try:
        with pytest.raises(RedisUnavailable, match="not on PATH; run scripts/bootstrap"):
            server.start()
    finally:
        server.discard()


def test_the_system_port_is_refused():
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=SYSTEM_PORT)


def test_the_script_starts_a_server_and_stops_it_by_its_pidfile(tmp_path):
    script = os.path.join(ROOT, "scripts", "redis-server")
    pidfile, data = tmp_path / "redis.pid", tmp_path / "data"
    run = subprocess.run([script, "start", "--pidfile", str(pidfile), "--dir", str(data)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("export REDIS_URL=redis://127.0.0.1:")
    port = int(run.stdout.strip().rsplit(":", 1)[1].split("/")[0])
    pid = int(pidfile.read_text())
    try:
        assert RedisServer(port, str(data)).command("PING") == "PONG"
    finally:
        stop = subprocess.run([script, "stop", "--pidfile", str(pidfile)], capture_output=True, text=True,
                              timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert not pidfile.exists()
    assert not process_exists(pid)
    assert refuses_connections(port)
