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
import re
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
    """``redis[s]://[[user]:password@]host[:port][/db]`` as lazyConnection's keywords and ``tls``; ValueError
    when it is not one (its message never holds the password)."""
    parts = urlparse(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown_url(url)!r}: the port must be a number from 0 to 65535") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{shown_url(url)!r} is not a redis:// or rediss:// URL")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"{shown_url(url)!r}: the database must be a number")
    # Database 0 is where a connection starts: no SELECT (which txredisapi reports unhandled when the
    # connection is closed while it is still being set up).
    return {"host": parts.hostname, "port": port or 6379, "dbid": int(database) or None if database else None,
            "password": unquote(parts.password) if parts.password else None,
            "username": unquote(parts.username) if parts.username else None, "tls": parts.scheme == "rediss"}


#: The password of ``scheme://user:password@host``: whatever lies between the user's colon and the last ``@``.
_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)[^/]*@")


def shown_url(url: str) -> str:
    """*url* without its password, for logs, /status and error messages (also when it is malformed)."""
    return _PASSWORD.sub(r"\1***@", url)


class RedisClient(Service):
    """One Redis server as the daemon sees it; registered as ``redis.client``."""

    def __init__(self, url: str, node: str, clock, command_timeout: float = 5.0, connect_timeout: float = 5.0,
                 ping_interval: float = 1.0, tls_options=None, reactor=None):
        self.setName("redis.client")
        self.url = url
        self.target = parse_url(url)
        #: ``rediss://``: the TLS options of every connection (pipedingest.redis.tls.client_options).
        self.tls_options = tls_options
        self.reactor = reactor
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
            ssl_context_factory=self.tls_options or False,
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
            reason = str(error)
            if isinstance(error, RedisUnavailable):
                reason = yield self._diagnose(reason)
            if self.connected or self.last_error != reason:
                log.warn("Redis at {url} is not answering: {error}", url=shown_url(self.url), error=reason)
            self.connected = False
            self.last_error = reason
            return
        if not self.connected:
            log.info("Redis at {url} answers", url=shown_url(self.url))
        self.connected = True
        self.last_error = None

    @inlineCallbacks
    def _diagnose(self, reason: str):
        """Why PING got no answer, as one fresh connection finds it (a refused TLS handshake, a wrong
        password); a fresh connection that works while ours does not (txredisapi gives up after a refused
        AUTH) replaces ours."""
        from twisted.internet import reactor as global_reactor

        from pipedingest.redis.tls import diagnose

        found = yield diagnose(self.reactor or global_reactor, self.target["host"], self.target["port"],
                               self.tls_options, self.target["username"], self.target["password"],
                               self.connect_timeout)
        if found == "answers":
            if self.target["password"] is not None and self._connection is not None and self.running:
                stale, self._connection = self._connection, self._connect()
                stale.disconnect().addErrback(lambda _: None)
            return f"{reason}; reconnecting"
        return f"{reason}: {found}"

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
