"""The articles API over Redis, as real processes: conf/front.yaml and conf/worker.yaml daemons, a real
redis-server (AOF on), Google's Firestore emulator. Every check is from the clients' side, then the store's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from pipedingest.load import read_articles
from tests.conftest import ROOT
from tests.test_articles import corpus_path
from tests.twistd_process import Daemon

FRONT, WORKER = os.path.join(ROOT, "conf", "front.yaml"), os.path.join(ROOT, "conf", "worker.yaml")
FAST_CLAIMS = ["redis.streams.jobs.claim_idle=3", "redis.streams.extractions.claim_idle=3"]
ANSWERED = (200, 201, 202)

pytestmark = pytest.mark.slow


class Cluster:
    """A front and workers sharing one Redis and one Firestore."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.token = uuid.uuid4().hex
        self.env = dict(os.environ, INGEST_TOKEN=self.token)
        self.daemons: list[Daemon] = []

    def worker(self, node: str, *overrides: str) -> Daemon:
        worker = Daemon(WORKER, "ner.min_children=1", *FAST_CLAIMS, *overrides, cwd=self.tmp_path,
                        env=dict(self.env, INGEST_NODE=node), port_key=None)
        self.daemons.append(worker)
        worker.wait_for("reading jobs", timeout=120)
        return worker

    def front(self, node: str = "front-1", *overrides: str, ready: bool = True) -> Daemon:
        front = Daemon(FRONT, *overrides, cwd=self.tmp_path, env=dict(self.env, INGEST_NODE=node))
        self.daemons.append(front)
        if ready:
            front.wait_ready()
        return front

    def post(self, front: Daemon, article: dict, path: str = "/articles"):
        request = urllib.request.Request(front.base + path, json.dumps(article).encode(),
                                         {"content-type": "application/json", "authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")
        except OSError as error:  # refused, reset: no answer at all
            return None, str(error)

    def stop(self):
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.terminate()
        for daemon in self.daemons:
            try:
                daemon.wait(60)
            finally:
                daemon.kill()


@pytest.fixture
def cluster(tmp_path, redis, firestore):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.stop()


def articles(count: int, prefix: str) -> list[dict]:
    bodies = [a["body"] for a in read_articles(corpus_path(), count + 20) if a["body"].strip()][:count]
    return [{"id": f"{prefix}-{n}", "source": "scaleout", "body": body} for n, body in enumerate(bodies)]


def post_all(cluster: Cluster, front: Daemon, batch: list[dict], clients: int = 8, when=None) -> dict:
    """Post *batch* from *clients* threads; ``when(answers_so_far)`` runs once, after a quarter is answered."""
    outcomes: dict = {}
    lock = threading.Lock()
    todo = list(batch)

    def client():
        while True:
            with lock:
                if not todo:
                    return
                article = todo.pop()
            outcomes[article["id"]] = cluster.post(front, article)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    if when is not None:
        while len(outcomes) < len(batch) // 4:
            time.sleep(0.02)
        when()
    for thread in threads:
        thread.join(300)
    return outcomes


def stored(cluster: Cluster, front: Daemon, ids) -> dict:
    found = {}
    front.token = cluster.token
    for article_id in ids:
        status, document = front.get_json(f"/articles/{article_id}")
        if status == 200:
            found[article_id] = document
    return found


def test_a_worker_killed_mid_run_loses_no_request_and_stores_each_article_once(cluster, redis):
    workers = [cluster.worker("worker-1"), cluster.worker("worker-2")]
    front = cluster.front()
    batch = articles(200, "kill")
    outcomes = post_all(cluster, front, batch, when=lambda: os.kill(workers[0].process.pid, signal.SIGKILL))
    statuses = sorted({status for status, _ in outcomes.values()})
    assert len(outcomes) == 200 and set(statuses) <= set(ANSWERED), statuses
    accepted = [article_id for article_id, (status, _) in outcomes.items() if status == 202]
    deadline = time.monotonic() + 120
    while accepted and time.monotonic() < deadline:  # a 202's article is stored once its job is done
        accepted = [a for a in accepted if front.get_json(f"/articles/{a}")[0] != 200]
        time.sleep(0.2)
    documents = stored(cluster, front, [article["id"] for article in batch])
    assert len(documents) == 200
    for article_id, (status, answer) in outcomes.items():
        if status in (200, 201):
            assert documents[article_id]["entities"] == answer["entities"]
    jobs = redis.command("XPENDING", "articles:jobs", "workers")
    assert jobs[0] == 0, f"jobs left pending: {jobs}"
    reclaimed = workers[1].output.count("took over entry")
    print(f"\nkill -9 of a worker: 200 posted, statuses {statuses}, reclaimed {reclaimed}, stored {len(documents)}")


def test_a_worker_stopped_with_sigterm_finishes_and_acknowledges_what_it_holds(cluster, redis):
    workers = [cluster.worker("worker-1"), cluster.worker("worker-2")]
    front = cluster.front()
    batch = articles(60, "term")
    outcomes = post_all(cluster, front, batch, when=workers[0].terminate)
    assert workers[0].wait(120) == 0, workers[0].output[-3000:]
    assert "stopped cleanly" in workers[0].output
    assert {status for status, _ in outcomes.values()} <= {200, 201}
    assert len(stored(cluster, front, [article["id"] for article in batch])) == 60
    summary = redis.command("XPENDING", "articles:jobs", "workers")
    assert summary[0] == 0, summary


def test_redis_killed_and_restarted_every_daemon_reconnects(cluster, redis):
    cluster.worker("worker-1")
    front = cluster.front()
    assert cluster.post(front, {"id": "before", "body": "Oslo is in Norway."})[0] == 201
    redis.kill()
    started = time.monotonic()
    status, answer = cluster.post(front, {"id": "during", "body": "Lima is in Peru."})
    assert status == 503 and time.monotonic() - started < 25, (status, answer)
    status, ready = front.get_json("/ready")
    assert status == 503 and "Redis" in ready["reason"]
    redis.restart()
    front.wait_ready()
    assert cluster.post(front, {"id": "after", "body": "Rome is in Italy."})[0] == 201
    assert set(stored(cluster, front, ["before", "after"])) == {"before", "after"}


def test_redis_unreachable_at_start_the_front_starts_and_is_not_ready(cluster, redis):
    redis.stop()
    front = cluster.front(ready=False)
    front.wait_listening()
    deadline = time.monotonic() + 30
    while True:
        status, ready = front.get_json("/ready")
        if "Redis" in ready.get("reason", "") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 503 and "Redis at redis://127.0.0.1" in ready["reason"], ready
    redis.start()
    cluster.worker("worker-1")
    front.wait_ready()
    assert cluster.post(front, {"id": "late", "body": "Bern is in Switzerland."})[0] == 201


def children_of(pid: int) -> list[int]:
    return [int(line) for line in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                  text=True).stdout.split()]


def test_a_duplicate_delivery_is_stored_once_and_answered_once(cluster, redis):
    """A worker frozen mid-job loses it to another after claim_idle; when it thaws it finishes it too."""
    workers = {"worker-1": cluster.worker("worker-1"), "worker-2": cluster.worker("worker-2")}
    front = cluster.front()
    children = [child for worker in workers.values() for child in children_of(worker.process.pid)]
    for child in children:  # whichever worker takes the job holds it until its main process is frozen
        os.kill(child, signal.SIGSTOP)
    results: list = []
    posting = threading.Thread(target=lambda: results.append(
        cluster.post(front, {"id": "dup", "body": "Angela Merkel visited Paris."})))
    frozen = None
    try:
        posting.start()
        deadline = time.monotonic() + 30
        while not frozen and time.monotonic() < deadline:
            pending = redis.command("XPENDING", "articles:jobs", "workers", "-", "+", 10)
            frozen = workers[pending[0][1]] if pending else None
            time.sleep(0.02)
        assert frozen is not None, "no worker took the job"
        os.kill(frozen.process.pid, signal.SIGSTOP)  # it holds the job and renews no claim
        for child in children:
            os.kill(child, signal.SIGCONT)
        posting.join(60)  # the other worker takes the job over after claim_idle and answers
    finally:
        for pid in [*children, *(worker.process.pid for worker in workers.values())]:
            os.kill(pid, signal.SIGCONT)
    other = next(worker for worker in workers.values() if worker is not frozen)
    assert [status for status, _ in results] == [201]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, state = front.get_json("/status")
        if state["components"]["pending.stored"]["unclaimed"] >= 1:
            break
        time.sleep(0.1)
    assert state["components"]["pending.stored"]["unclaimed"] == 1, "the second answer was not dropped"
    assert "took over entry" in other.output
    assert list(stored(cluster, front, ["dup"])) == ["dup"]
    assert redis.command("XPENDING", "articles:jobs", "workers")[0] == 0


def test_a_front_killed_mid_run_its_jobs_are_still_stored_and_its_reply_stream_expires(cluster, redis):
    """The jobs a front had sent when it died are done and stored; the answers sent to its reply stream
    nobody reads go away with the stream, ``expire`` seconds after the last one."""
    expire = ["redis.streams.replies.expire=5"]
    cluster.worker("worker-1", *expire)
    cluster.worker("worker-2", *expire)
    front = cluster.front("front-1", *expire)
    batch = articles(40, "front")
    outcomes = post_all(cluster, front, batch, when=front.kill)
    ttl = redis.command("TTL", "articles:replies:front-1")  # the workers still answer it, for now
    assert ttl in range(0, 6), f"the reply stream of a front lives {ttl} s (-1: for ever)"
    answered = {article_id for article_id, (status, _) in outcomes.items() if status in ANSWERED}
    info = redis.command("XINFO", "STREAM", "articles:jobs")
    sent = int(dict(zip(info[::2], info[1::2]))["entries-added"]) - 1  # less the front's status test
    assert sent > len(answered), (len(answered), sent)  # jobs the dead front never answered

    again = cluster.front("front-2", *expire)  # another node: its replies have a stream of their own
    ids = [article["id"] for article in batch]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(stored(cluster, again, ids)) < sent:
        time.sleep(0.5)
    documents = stored(cluster, again, ids)
    assert len(documents) == sent and answered <= set(documents), "a job the dead front had sent was lost"
    assert redis.command("XPENDING", "articles:jobs", "workers")[0] == 0

    deadline = time.monotonic() + 30
    while redis.command("EXISTS", "articles:replies:front-1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert redis.command("EXISTS", "articles:replies:front-1") == 0, "the dead front's reply stream stayed"
