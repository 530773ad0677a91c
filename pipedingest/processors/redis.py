"""Redis processors: ``send-redis-message``, and ``submit-job``/``deliver-reply`` for remote work with answers.

``send-redis-message`` adds the baton (or a part of it) to a declared Redis stream.

The counterpart of the Piped tutorial's ``send-zmq-message``: ``stream`` names a declaration of the ``redis:``
section (``queue_name`` there). A send that Redis does not take (down, restarting) is tried ``retries`` more
times, ``retry_wait`` seconds apart; a work queue that is full (``max_backlog``) refuses at once. In a web
pipeline both are a 503 with ``Retry-After``.
"""
from __future__ import annotations

import uuid
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.engine.baton import get_path
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option
from pipedingest.redis.client import RedisUnavailable
from pipedingest.redis.streams import StreamBacklogged
from pipedingest.web.errors import WebError


@provider(IPlugin, IProcessor)
class SendRedisMessage(InputOutputProcessor):
    """Add the input to a stream; the output (``output_path``, default: none) is the new entry's id."""

    name = "send-redis-message"
    options = {
        "stream": Option(str, doc="the stream, as declared under redis: streams:"),
        "key_path": Option((str, type(None)), None,
                           "where the baton names the key to send to instead (a reply stream named by a job)"),
        "output_path": Option((str, type(None)), None, "where to put the entry id (default: nowhere)"),
        "retries": Option(int, 3, "tries more while Redis does not answer", minimum=0, maximum=1000),
        "retry_wait": Option(float, 0.2, "seconds between tries", minimum=0),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.stream = step.reference(f"redis.stream.{config['stream']}", "stream", "stream")
        self.clock = step.clock

    def process_input(self, message, baton):
        key = get_path(baton, self.config["key_path"]) if self.config["key_path"] else None
        return send(self.stream.value, message, key, self.config["retries"], self.config["retry_wait"], self.clock)


def send(stream, message, key, retries: int, retry_wait: float, clock, give_up_at: Optional[float] = None):
    """Send with retries while Redis does not answer, until *give_up_at* at the latest (a request's deadline);
    refusals become the HTTP answers they are (503)."""
    timeout = None
    if give_up_at is not None:
        timeout = max(0.05, min(stream.client.value.command_timeout, give_up_at - clock.seconds()))
    sending = stream.send(message, key, timeout)

    def failed(failure):
        time_left = give_up_at is None or clock.seconds() + retry_wait < give_up_at
        if failure.check(RedisUnavailable) and retries > 0 and time_left:
            return deferLater(clock, retry_wait,
                              lambda: send(stream, message, key, retries - 1, retry_wait, clock, give_up_at))
        if failure.check(StreamBacklogged):
            raise WebError(503, "too much work queued; retry later", {"retry-after": "5"}, retry_after_seconds=5)
        if failure.check(RedisUnavailable):
            raise WebError(503, f"the work queue is unavailable: {failure.getErrorMessage()}", {"retry-after": "5"})
        return failure

    return sending.addErrback(failed)


@provider(IPlugin, IProcessor)
class SubmitJob(InputOutputProcessor):
    """Send the input as a job on a work queue, and wait for its answer, which comes back on a reply stream.

    The job is ``{"job": id, "reply_to": the reply stream's key, "deadline": ..., "body": input}``; a worker
    answers on that key with ``{"job": id, ...}``, which ``deliver-reply`` hands back here. While it waits, the
    baton is in the ``pending`` table under the job's id, until the request's deadline: its reaper answers with
    the table's fallback then (the job itself goes on: a delivered job cannot be called back).
    """

    name = "submit-job"
    options = {
        "stream": Option(str, doc="the work queue, as declared under redis: streams:"),
        "reply_stream": Option(str, doc="the stream this daemon reads answers from (its key goes in the job)"),
        "pending": Option(str, doc="the pending table the baton waits in"),
        "output_path": Option((str, type(None)), "reply", "where to put the answer"),
        "retries": Option(int, 3, "tries more while Redis does not answer", minimum=0, maximum=1000),
        "retry_wait": Option(float, 0.2, "seconds between tries", minimum=0),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.stream = step.reference(f"redis.stream.{config['stream']}", "stream", "stream")
        self.replies = step.reference(f"redis.stream.{config['reply_stream']}", "reply_stream", "stream")
        self.pending = step.reference(f"pending.{config['pending']}", "pending", "pending table")
        self.clock = step.clock

    def process_input(self, body, baton):
        table = self.pending.value
        job = uuid.uuid4().hex
        deadline = table.deadline_of(baton)
        message = {"job": job, "reply_to": self.replies.value.key, "deadline": deadline, "body": body}
        # Sent first, then waited for: a request is only ever left to the reaper (202) once its job is in the
        # queue; a send that cannot be done by the deadline (a second before it) fails with 503 instead.
        sending = send(self.stream.value, message, None, self.config["retries"], self.config["retry_wait"],
                       self.clock, give_up_at=deadline - 1.0)
        return sending.addCallback(lambda _: table.track(baton, Deferred(), deadline, key=job))


@provider(IPlugin, IProcessor)
class DeliverReply(InputOutputProcessor):
    """Hand an answer (``{"job": id, ...}``) to the request waiting for it; the output says whether one was."""

    name = "deliver-reply"
    options = {
        "pending": Option(str, doc="the pending table the requests wait in"),
        "output_path": Option((str, type(None)), "delivered", "where to put true (delivered) or false"),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.pending = step.reference(f"pending.{config['pending']}", "pending", "pending table")

    def process_input(self, reply, baton):
        if not isinstance(reply, dict) or "job" not in reply:
            raise ValueError(f"an answer needs a 'job': {reply!r:.200}")
        return self.pending.value.deliver(reply["job"], reply)
