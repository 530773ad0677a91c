"""The daemon's connection to Redis: every command with a deadline, readiness from a PING.

txredisapi's lazy connection reconnects by itself, but a command issued while Redis is down waits silently for
the reconnect: each command here carries its own deadline (``command_timeout``) and fails with
:class:`RedisUnavailable` when it passes. A blocking read (``XREADGROUP ... BLOCK``) stalls every other command
on its connection, so each blocking reader gets a connection of its own (:meth:`RedisClient.blocking`), with
txredisapi's reply timeout off and a bounded ``BLOCK`` instead.

The client is a service with no dependency of its own: the daemon starts even when Redis cannot be reached,
and ``/ready`` answers 503 naming Redis until a PING gets through (:meth:`RedisClient.readiness`).
"""
from __future__ import annotations

import os
import socket
from typing import Optional
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


class RedisUnavailable(Exception):
    """Redis did not answer in time (down, restarting, unreachable)."""


class RedisError(Exception):
    """Redis answered with an error."""


def default_node() -> str:
    """A name for this daemon among the others: its host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_url(url: str) -> dict:
    """``redis://[:password@]host[:port][/db]`` as lazyConnection's keywords; ValueError when it is not one."""
    parts = urlparse(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"{url!r} is not a redis:// URL")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"{url!r}: the database must be a number")
    # Database 0 is where a connection starts: no SELECT (which txredisapi reports unhandled when the
    # connection is closed while it is still being set up).
    return {"host": parts.hostname, "port": parts.port or 6379, "dbid": int(database) or None if database else None,
            "password": unquote(parts.password) if parts.password else None,
            "username": unquote(parts.username) if parts.username else None}


def shown_url(url: str) -> str:
    """*url* without its password, for logs and /status."""
    parts = urlparse(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


class RedisClient(Service):
    """One Redis server as the daemon sees it; registered as ``redis.client``."""

    def __init__(self, url: str, node: str, clock, command_timeout: float = 5.0, connect_timeout: float = 5.0,
                 ping_interval: float = 1.0):
        self.setName("redis.client")
        self.url = url
        self.target = parse_url(url)
        self.node = node
        self.clock = clock
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.connected = False
        self.last_error: Optional[str] = None
        self._connection = None
        self._blocking: list = []
        self._pinger: Optional[LoopingCall] = None

    def _connect(self):
        return txredisapi.lazyConnection(
            self.target["host"], self.target["port"], dbid=self.target["dbid"], reconnect=True,
            password=self.target["password"], username=self.target["username"],
            connectTimeout=self.connect_timeout, convertNumbers=False, charset="utf-8")

    def startService(self):
        super().startService()
        self._connection = self._connect()
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = self.clock
        self._pinger.start(self.ping_interval, now=True)

    @inlineCallbacks
    def _ping(self):
        try:
            yield self.command("PING")
        except Exception as error:
            if self.connected or self.last_error is None:
                log.warn("Redis at {url} is not answering: {error}", url=shown_url(self.url), error=error)
            self.connected = False
            self.last_error = str(error)
            return
        if not self.connected:
            log.info("Redis at {url} answers", url=shown_url(self.url))
        self.connected = True
        self.last_error = None

    def stopService(self):
        super().stopService()
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        closing = [connection.disconnect() for connection in [self._connection, *self._blocking] if connection]
        self._connection, self._blocking = None, []
        return gatherResults(closing, consumeErrors=True).addErrback(lambda _: None)

    def command(self, *args, timeout: Optional[float] = None, connection=None) -> Deferred:
        """Run one command; RedisUnavailable if no answer within *timeout* (default ``command_timeout``)."""
        connection = connection or self._connection
        if connection is None:
            from twisted.internet.defer import fail

            return fail(RedisUnavailable("the Redis client is not running"))
        seconds = self.command_timeout if timeout is None else timeout
        sent = connection.execute_command(*args, apply_timeout=False)

        def timed_out(failure):
            from twisted.internet.defer import CancelledError, TimeoutError as DeferredTimeout

            if failure.check(DeferredTimeout, CancelledError):
                raise RedisUnavailable(f"no answer from Redis within {seconds:g}s to {args[0]}")
            if failure.check(txredisapi.ResponseError):
                raise RedisError(str(failure.value))
            if failure.check(txredisapi.ConnectionError):
                raise RedisUnavailable(f"Redis connection lost during {args[0]}: {failure.getErrorMessage()}")
            return failure

        return sent.addTimeout(seconds, self.clock).addErrback(timed_out)

    def blocking(self):
        """A connection of its own for one blocking reader (closed when the client stops)."""
        connection = self._connect()
        self._blocking.append(connection)
        return connection

    def release(self, connection) -> Deferred:
        """Close a blocking reader's connection."""
        if connection in self._blocking:
            self._blocking.remove(connection)
        return connection.disconnect()

    def readiness(self) -> Optional[str]:
        """Why the daemon cannot be ready because of Redis, or None."""
        if self.connected:
            return None
        return f"Redis at {shown_url(self.url)} is not answering ({self.last_error or 'not tried yet'})"

    def state(self) -> dict:
        return {"url": shown_url(self.url), "node": self.node, "connected": self.connected,
                "last_error": self.last_error}
