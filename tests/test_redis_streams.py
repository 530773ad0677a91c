"""The redis: section and its streams, in-process against a real redis-server: mistakes, backlog, dead letters."""
import json

import pytest_twisted
import treq

from tests.conftest import config_errors, until, url

STREAMS = """\
redis:
  streams:
    jobs: {key: "t:jobs", group: workers, max_backlog: 3}
    take_jobs: {key: "t:jobs", group: workers, processor: pipeline.job, claim_idle: 0.2, max_deliveries: 2,
                dead_letter: pipeline.dead}
    answers: {key: "t:answers"}
contexts:
  seen: []
  dead: []
web:
  site:
    port: 0
    routing:
      send:
        __config__: {processor: pipeline.send, methods: [POST]}
pipelines:
  send:
    - eval-lambda: {input_path: request.json, output_path: message, lambda: "value: value"}
    - send-redis-message: {stream: jobs, input_path: message, output_path: entry}
    - eval-lambda: {input_path: entry, output_path: content, lambda: "entry: dict(entry=entry)"}
    - write-web-response: {status: 202}
  job:
    - decode-json
    - fetch-context: {context: seen}
    - exec-code:
        code: |
            if baton.get('fail'):
                raise ValueError('this job always fails')
            baton['seen'].append(baton['n'])
            return baton
  dead:
    - decode-json
    - fetch-context: {context: dead}
    - exec-code:
        code: |
            baton['dead'].append(baton['n'])
            return baton
"""


def test_stream_mistakes_are_config_errors_with_their_line(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    errors = config_errors(tmp_path, """\
redis:
  streams:
    jobs: {key: "t:jobs", group: workers}
    read_jobs: {key: "t:jobs", processor: pipeline.job}
pipelines:
  job:
    - send-redis-message: {stream: jbos}
""")
    assert [error.replace(f"{tmp_path}/", "") for error in errors] == [
        "conf.yaml:4:43: stream 'read_jobs' is consumed without a group, but key 't:jobs' is a work queue "
        "(group 'workers'): every consumer would do every job — add group: workers",
        "conf.yaml:7:36: unknown stream 'redis.stream.jbos' — did you mean 'redis.stream.jobs' or "
        "'redis.stream.read_jobs'?",
    ]
    monkeypatch.delenv("REDIS_URL")
    assert any("'redis' has no url" in error for error in config_errors(tmp_path, "redis: {streams: {}}\n"))


@pytest_twisted.ensureDeferred
async def test_jobs_are_done_once_failures_go_to_the_dead_letters_and_a_full_queue_refuses(daemons, redis):
    daemon = await daemons(STREAMS)
    consumer = daemon.runtime.get("redis.consumer.take_jobs")
    await until(lambda: consumer.state()["consumer"], what="the consumer reading")

    async def send(message):
        response = await treq.post(url(daemon, "/send"), json.dumps(message).encode(),
                                   headers={"content-type": "application/json"})
        return response.code, json.loads(await response.content())

    for n in range(3):
        assert (await send({"n": n}))[0] == 202
    await until(lambda: sorted(daemon.runtime.get("context.seen")) == [0, 1, 2], what="three jobs done")
    code, answer = await send({"n": 99, "fail": True})
    assert code == 202
    await until(lambda: daemon.runtime.get("context.dead") == [99], timeout=30, what="the failing job given up")
    assert redis.command("XLEN", "t:jobs:dead") == 1
    assert redis.command("XPENDING", "t:jobs", "workers")[0] == 0
    assert consumer.state()["dead"] == 1 and consumer.state()["failed"] == 2
    await consumer.stopService()  # nobody reads: the queue fills up to its bound
    for n in range(3):
        assert (await send({"n": 10 + n}))[0] == 202
    daemon.runtime.get("redis.stream.jobs")._backlog_checked = -1.0
    code, answer = await send({"n": 20})
    assert code == 503 and answer["error"]["message"] == "too much work queued; retry later"
    consumer.startService()
    await until(lambda: sorted(daemon.runtime.get("context.seen"))[-3:] == [10, 11, 12], what="the backlog done")
