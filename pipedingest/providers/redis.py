"""``redis:``: the Redis server several daemons share, and the streams they share work through.

::

    redis:
      url: ${REDIS_URL}              # default: $REDIS_URL
      node: ${INGEST_NODE:-}         # this daemon among the others (default: host-pid); names its consumers
      command_timeout: 5             # seconds a command may wait for Redis (Redis down: it fails after this)
      streams:
        jobs:                        # a work queue: each entry to one consumer of the group
          key: articles:jobs         # default: the name
          group: workers
          max_backlog: 10000         # undone entries beyond which a send fails (503)
        worker_jobs:                 # the other end of the same stream, consumed here
          key: articles:jobs
          group: workers
          processor: pipeline.redis.job
          concurrency: 4             # entries at once
          claim_idle: 30             # seconds before a silent consumer's entries are taken over
          max_deliveries: 3          # then the entry goes to <key>:dead and dead_letter runs on it
          dead_letter: pipeline.redis.give-up
        replies:                     # a broadcast stream: every reader sees every entry
          key: "articles:replies:{node}"   # {node}: this daemon's node name
          maxlen: 10000
          expire: 3600               # seconds: a dead front's replies go away

Declaring a stream opens nothing. Registered: ``redis.client`` (the connection), ``redis.stream.<name>`` for
each declaration (what ``send-redis-message`` names), and ``redis.consumer.<name>`` (a service) for each
declaration with a ``processor``.
"""
from __future__ import annotations

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
from pipedingest.providers.base import IProvider, Provider

REDIS_OPTIONS = {
    "url": Option((str, type(None)), None, "redis[s]://[user:password@]host:port/db (default: $REDIS_URL)"),
    "ca_file": Option((str, type(None)), None, "rediss://: the CA certificates (PEM) to trust (default: the system's)"),
    "cert_file": Option((str, type(None)), None, "rediss://: a client certificate (PEM), with key_file"),
    "key_file": Option((str, type(None)), None, "rediss://: the client certificate's unencrypted key (PEM)"),
    "server_name": Option((str, type(None)), None, "rediss://: the name the server's certificate must carry "
                                                   "(default: the URL's host)"),
    "node": Option((str, type(None)), None, "this daemon's name among the others (default: host-pid)"),
    "command_timeout": Option(float, 5.0, "seconds a command may wait for Redis", above=0),
    "connect_timeout": Option(float, 5.0, "seconds a connection attempt may take", above=0),
    "streams": Option(dict, {}, "stream names → declarations"),
}
STREAM_OPTIONS = {
    "key": Option((str, type(None)), None, "the Redis key (default: the stream's name)"),
    "group": Option((str, type(None)), None, "a consumer group: the stream is a work queue"),
    "processor": Option((str, type(None)), None, "consume the stream into this pipeline (pipeline.x)"),
    "concurrency": Option(int, 8, "entries processed at once by this daemon", minimum=1, maximum=10_000),
    "block": Option(float, 1.0, "seconds one blocking read may wait", above=0, maximum=60),
    "claim_idle": Option(float, 30.0, "seconds before a silent consumer's entries are taken over", above=0),
    "max_deliveries": Option(int, 3, "deliveries before an entry goes to the dead-letter stream", minimum=1),
    "dead_letter": Option((str, type(None)), None, "a pipeline run on an entry given up on"),
    "max_backlog": Option((int, type(None)), 10_000, "work queues: undone entries beyond which sends fail",
                          minimum=1),
    "maxlen": Option((int, type(None)), 100_000, "broadcast streams: entries kept (approximately)", minimum=1),
    "expire": Option((float, type(None)), None, "broadcast streams: seconds the key lives after a send",
                     above=0),
}


@implementer(IPlugin, IProvider)
class RedisProvider(Provider):
    section = "redis"
    order = 12
    options = REDIS_OPTIONS
    resource = "redis.client"

    def configure_section(self, settings, value, where, runtime) -> None:
        from pipedingest.redis.client import RedisClient, default_node, parse_url

        errors = runtime.errors
        url = settings["url"] or os.environ.get("REDIS_URL")
        if not url:
            errors.add("'redis' has no url", where, "set redis.url, or REDIS_URL in the environment")
            return
        try:
            target = parse_url(url)
        except ValueError as error:
            errors.add(str(error), value.where_of("url") if "url" in value else where,
                       "for example: redis://127.0.0.1:6379/0, or rediss://user:password@host:6380/0 for TLS")
            return
        tls_options = self._tls(settings, target, value, where, runtime)
        if tls_options is False:
            return
        node = settings["node"] or default_node()
        client = RedisClient(url, node, runtime.clock, settings["command_timeout"], settings["connect_timeout"],
                             tls_options=tls_options, reactor=runtime.reactor)
        connection = {key: value for key, value in settings.items() if key != "streams"}
        runtime.register("redis.client", client, where, settings=dict(connection, url=url, node=node))
        streams = settings["streams"]
        for name, spec in streams.items():
            self._stream(str(name), spec, streams.where_of(name), runtime, node)
        self._check_ends(streams, runtime)

    @staticmethod
    def _tls(settings, target, value, where, runtime):
        """The TLS options of a ``rediss://`` URL (None for ``redis://``); False after reporting a problem."""
        from pipedingest.redis.tls import check_files, client_options

        files = {name: settings[name] for name in ("ca_file", "cert_file", "key_file", "server_name")}
        if not target["tls"]:
            given = [name for name, setting in files.items() if setting is not None]
            for name in given:
                runtime.errors.add(f"{name} is for TLS, but the URL is redis://", value.where_of(name),
                                   "use rediss:// for TLS, or remove the option")
            return False if given else None
        problems = check_files(files["ca_file"], files["cert_file"], files["key_file"])
        for name, problem in problems:
            runtime.errors.add(problem, value.where_of(name) if name in value else where)
        if problems:
            return False
        return client_options(files["server_name"] or target["host"], files["ca_file"], files["cert_file"],
                              files["key_file"])

    @staticmethod
    def _check_ends(streams, runtime) -> None:
        """A key read as a work queue somewhere must be read as one everywhere, or its jobs are done twice."""
        groups: dict[str, set] = {}
        for name, spec in streams.items():
            if isinstance(spec, dict) and spec.get("group"):
                groups.setdefault(spec.get("key") or name, set()).add(spec["group"])
        for name, spec in streams.items():
            if not isinstance(spec, dict) or not spec.get("processor") or spec.get("group"):
                continue
            key = spec.get("key") or name
            if key in groups:
                group = sorted(groups[key])[0]
                runtime.errors.add(f"stream {name!r} is consumed without a group, but key {key!r} is a work queue "
                                   f"(group {group!r}): every consumer would do every job",
                                   spec.where_of("processor"), f"add group: {group}")

    def _stream(self, name, spec, where, runtime, node: str) -> None:
        from pipedingest.redis.consumer import StreamConsumer
        from pipedingest.redis.streams import Stream

        settings = check_section(STREAM_OPTIONS, spec if spec is not None else {}, f"stream {name!r}",
                                 runtime.errors, where)
        if settings is None:
            runtime.definition_failed(f"redis.stream.{name}")
            return
        resource = f"redis.stream.{name}"
        client = runtime.reference("redis.client", where, "Redis client", by=resource)
        pattern = settings["key"] or name
        stream = Stream(name, pattern.replace("{node}", node), client, pattern, settings["group"],
                        settings["maxlen"], settings["max_backlog"], settings["expire"])
        runtime.register(resource, stream, where)
        if not settings["processor"]:
            return
        consumer_name = f"redis.consumer.{name}"
        pipeline = runtime.pipeline_reference(settings["processor"], spec.where_of("processor"), by=consumer_name)
        dead_letter = None
        if settings["dead_letter"]:
            dead_letter = runtime.pipeline_reference(settings["dead_letter"], spec.where_of("dead_letter"),
                                                     by=consumer_name)
        if pipeline is None:
            return
        runtime.reference(resource, where, "stream", by=consumer_name)
        consumer = StreamConsumer(stream, pipeline, runtime.clock, settings["concurrency"], settings["block"],
                                  settings["claim_idle"], settings["max_deliveries"], dead_letter,
                                  reactor=runtime.reactor)
        runtime.register(consumer_name, consumer, where, settings=dict(settings, key=stream.key))


provider = RedisProvider()
