"""The Piped tutorial's distributed service on Redis Streams: a server and its workers as separate daemons."""
import os
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.twistd_process import Daemon, twistd

HERE = os.path.join(ROOT, "conf", "examples", "euler-distributed")
SERVER, TESTS, WORKERS = (os.path.join(HERE, name) for name in ("rpc-server.yaml", "test-rpc.yaml",
                                                                 "rpc-client.yaml"))


def started_workers(tmp_path, count=2):
    workers = []
    for number in range(count):
        worker = Daemon(WORKERS, cwd=tmp_path, env=dict(os.environ, INGEST_NODE=f"worker-{number}"),
                        port_key=None)
        workers.append(worker)
    for worker in workers:
        worker.wait_for("reading worker_sum_in", timeout=60)
        worker.wait_for("reading worker_square_in", timeout=60)
    return workers


@pytest.mark.slow
def test_the_self_test_passes_with_workers_running_as_daemons_of_their_own(tmp_path, redis):
    workers = started_workers(tmp_path)
    try:
        result = twistd("-c", TESTS, "-O", "web.site.port=0", "--self-test", cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PASSED (successes=3)" in result.stdout
        assert "TestRPCWithoutWorkers" in result.stdout
        jobs = redis.command("XINFO", "GROUPS", "euler:sum:jobs")
        assert jobs and dict(zip(jobs[0][::2], jobs[0][1::2]))["pending"] == 0, jobs
    finally:
        for worker in workers:
            worker.terminate()
        codes = [worker.wait(60) for worker in workers]
        for worker in workers:
            worker.kill()
    assert codes == [0, 0]


@pytest.mark.slow
def test_with_the_workers_stopped_the_fallback_answers(tmp_path, redis):
    server = Daemon(SERVER, cwd=tmp_path, port_key="web.site.port")
    try:
        server.wait_ready()
        with urllib.request.urlopen(server.base + "/?n=42", timeout=30) as response:
            assert response.status == 200
            assert response.read() == b'{"success": false}'
        sent = redis.command("XLEN", "euler:sum:jobs")
        assert sent == 1, "the job waits in its stream for a worker"
        workers = started_workers(tmp_path, 1)  # a worker that comes later does the job left for it
        try:
            with urllib.request.urlopen(server.base + "/?n=1&n=2&n=3", timeout=30) as response:
                assert response.read() == b'{"sum":14,"square":36,"diff":22}'
        finally:
            workers[0].terminate()
            assert workers[0].wait(60) == 0
            workers[0].kill()
        server.terminate()
        assert server.wait(60) == 0
    finally:
        server.kill()
