"""Hundreds of slow or silent sockets against a real daemon: they are timed out, and nobody else notices."""
from __future__ import annotations

import json
import os
import selectors
import socket
import time
import urllib.request

import pytest

from tests.conftest import DEV
from tests.twistd_process import Daemon

SLOW = 300
READ_TIMEOUT = 10


def open_slow_sockets(port: int, count: int) -> list[socket.socket]:
    """Sockets that start a request and then stall: half of them in the headers, half in the body."""
    sockets = []
    for number in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if number % 2:
            sock.sendall(b"POST /articles HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"body\": ")
        else:
            sock.sendall(b"POST /articles HTTP/1.1\r\nHost: local")
        sockets.append(sock)
    return sockets


def answers_of(sockets: list[socket.socket], within: float) -> dict:
    """What each socket received until the daemon closed it (or *within* seconds passed): {socket: bytes}."""
    received = {sock: b"" for sock in sockets}
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    give_up = time.monotonic() + within
    open_ = set(sockets)
    while open_ and time.monotonic() < give_up:
        for key, _ in selector.select(timeout=0.2):
            try:
                chunk = key.fileobj.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                received[key.fileobj] += chunk
            else:
                selector.unregister(key.fileobj)
                open_.discard(key.fileobj)
    selector.close()
    return {sock: data for sock, data in received.items() if sock not in open_} | {
        sock: None for sock in open_}


def post(base: str, article: dict, timeout: float) -> int:
    request = urllib.request.Request(base + "/articles", json.dumps(article).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_slow_clients_are_timed_out_and_hurt_nobody(tmp_path):
    daemon = Daemon(DEV, f"web.main.read_timeout={READ_TIMEOUT}", cwd=tmp_path,
                    env=dict(os.environ, INGEST_DATA=str(tmp_path / "data")))
    try:
        daemon.wait_ready()
        files_before = open_files(daemon.process.pid)
        slow = open_slow_sockets(daemon.port, SLOW)
        try:
            # Answered while every slow socket still holds its connection: a client that waited for them would
            # time out (its own timeout is shorter than theirs).
            answered = [post(daemon.base, {"id": f"s{n}", "body": "Oslo is the capital of Norway."},
                             timeout=READ_TIMEOUT - 2) for n in range(10)]
            assert answered == [201] * 10
            answers = answers_of(slow, within=READ_TIMEOUT + 30)
        finally:
            for sock in slow:
                sock.close()
        timed_out = [data for data in answers.values() if data and data.startswith(b"HTTP/1.1 408 ")]
        assert len(timed_out) == SLOW, {repr(data)[:80] for data in answers.values()}
        body = json.loads(timed_out[0].partition(b"\r\n\r\n")[2])
        request_id = body["error"].pop("request_id")
        assert f"\r\nx-request-id: {request_id}\r\n".encode() in timed_out[0].partition(b"\r\n\r\n")[0]
        assert body == {"error": {"status": 408, "message": f"the request was not received within {READ_TIMEOUT}s",
                                  "timeout_seconds": float(READ_TIMEOUT)}}
        deadline = time.monotonic() + 30
        while open_files(daemon.process.pid) > files_before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_files(daemon.process.pid) <= files_before + 2, "connections of slow clients leaked"
        daemon.terminate()
        assert daemon.wait(120) == 0
    finally:
        daemon.kill()
