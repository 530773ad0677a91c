"""A real redis-server as a child process: a free port, its own data folder, AOF on.

Used by the test fixtures (``tests/conftest.py``) and, through
``scripts/redis-server start|stop``, by hand.  Never the system instance on 6379.
:class:`TLSRedisServer` is a managed Redis's shape: TLS only, with certificates made by ``openssl``
(a CA and a server certificate for ``localhost`` and 127.0.0.1), and one ACL user (the default user off);
Redis 7 takes both only from a config file (an ACL rule has spaces).
The data folder outlives ``stop()`` and ``kill()`` so that ``restart()`` replays
the append-only file, as a crashed production Redis would.  Blocking on purpose:
tests that need it from inside the reactor call it in a thread.

``appendfsync everysec``: Redis writes each command to the AOF (``write(2)``)
before it replies, so an acknowledged write survives ``kill -9`` of the process
either way; ``always`` would add an fsync per write, which only matters for a
kernel crash or power loss, which no test can cause.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from tests.pidfile import stop_by_pidfile

BINARY = "redis-server"
SYSTEM_PORT = 6379
CONFIG = """\
bind 127.0.0.1
port {port}
daemonize no
dir "{directory}"
logfile ""
save ""
appendonly yes
appendfsync everysec
"""


class RedisUnavailable(RuntimeError):
    """redis-server cannot run here (no binary) or did not come up."""


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``, ``-BUSYGROUP ...``) to ``RedisServer.command``."""


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port != SYSTEM_PORT:
            return port


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url`` is what ``REDIS_URL`` should say."""

    def __init__(self, port: int | None = None, directory: str | None = None, binary: str = BINARY):
        if port == SYSTEM_PORT:
            raise ValueError(f"port {SYSTEM_PORT} belongs to the system's Redis; use another (or none, for a free one)")
        self.port = port or free_port()
        self.binary = binary
        self._owns_directory = directory is None
        self.directory = os.path.abspath(directory or tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "redis.conf")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "redis.log")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self):
        """Fail with what to do when redis-server cannot be started here."""
        if shutil.which(self.binary) is None:
            raise RedisUnavailable(
                f"{self.binary} is not on PATH; run scripts/bootstrap (it installs the Debian package "
                "redis-server, as root or through sudo) or `apt-get install -y redis-server`")

    def start(self, timeout: float = 30.0) -> "RedisServer":
        """Start on ``port`` in ``directory``; an existing append-only file there is replayed first."""
        self.check()
        if self.running:
            raise RuntimeError(f"redis-server is already running on port {self.port} (pid {self.pid})")
        os.makedirs(self.directory, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as stream:
            stream.write(self._config())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, self.config_path], cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RedisUnavailable(
                    f"redis-server exited with {code}; see {self.log_path}:\n" + self._log_tail())
            if self.ready():
                return self
            time.sleep(0.02)
        self.kill()
        raise RedisUnavailable(f"redis-server did not answer PING on port {self.port} within {timeout:g}s; "
                               f"see {self.log_path}")

    def _config(self, port: int | None = None) -> str:
        """The config file's text; *port* (default: this server's) is the plain port, 0 for none."""
        quoted = self.directory.replace("\\", "\\\\").replace('"', '\\"')
        return CONFIG.format(port=self.port if port is None else port, directory=quoted)

    def _open(self, timeout: float):
        """A connection ready for commands, and the bytes to send before the first one."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout), b""

    def ready(self) -> bool:
        """True once PING is answered with PONG (not ``-LOADING`` while the AOF replays)."""
        try:
            return self.command("PING", timeout=1) == "PONG"
        except (OSError, RedisReplyError):
            return False

    def stop(self, timeout: float = 10.0):
        """SIGTERM and wait: Redis flushes the AOF and exits (killed if it does not within *timeout*)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def kill(self):
        """SIGKILL and reap, like a crash: whatever was acknowledged is already in the AOF."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(10)

    def restart(self, timeout: float = 30.0) -> "RedisServer":
        """Stop if running, then start again on the same port with the same data folder."""
        self.stop()
        return self.start(timeout)

    def discard(self):
        """Stop and delete the data folder, if this object made it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def pause(self):
        """Freeze the process (SIGSTOP): commands hang instead of failing, like a stalled server."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def flush(self):
        """Delete every key of every database (FLUSHALL, synchronously)."""
        self.command("FLUSHALL", "SYNC")

    def command(self, *args, timeout: float = 10.0, decode: bool = True):
        """Send one command on a fresh connection and return the parsed RESP2 reply.

        Integers are ints, nil is None, arrays are lists; bulk strings are str (bytes
        with ``decode=False``).  An error reply raises RedisReplyError.
        """
        connection, preamble = self._open(timeout)
        with connection:
            connection.sendall(preamble + _request(args))
            with connection.makefile("rb") as stream:
                if preamble:
                    _read_reply(stream, decode)
                return _read_reply(stream, decode)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""


#: What a TLS-only server adds to CONFIG (written with port 0: no plain port).
TLS_CONFIG = """\
tls-port {port}
tls-cert-file "{directory}/server.crt"
tls-key-file "{directory}/server.key"
tls-ca-cert-file "{directory}/ca.crt"
tls-auth-clients no
user default off
user {user} on >{password} ~* &* +@all
"""


def openssl(*args, cwd: str):
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RedisUnavailable(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def make_ca(directory: str, name: str = "ca"):
    """``<name>.crt`` and ``<name>.key``: a self-signed CA in *directory*."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)


def make_server_certificate(directory: str):
    """``ca.crt`` and ``server.crt``/``server.key`` signed by it, for ``localhost`` and 127.0.0.1."""
    make_ca(directory, "ca")
    with open(os.path.join(directory, "san.cnf"), "w", encoding="utf-8") as stream:
        stream.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=directory)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=directory)


class TLSRedisServer(RedisServer):
    """redis-server answering TLS only, to one ACL user; ``url`` is ``rediss://user:password@localhost:port/0``
    and ``ca_file`` the CA its certificate is signed by (made in the data folder unless one is there)."""

    def __init__(self, port: int | None = None, directory: str | None = None, binary: str = BINARY,
                 user: str = "ingest", password: str | None = None):
        super().__init__(port, directory, binary)
        self.user = user
        self.password = password or os.urandom(12).hex()

    @property
    def url(self) -> str:
        return f"rediss://{self.user}:{self.password}@localhost:{self.port}/0"

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, "ca.crt")

    def _config(self) -> str:
        if not os.path.exists(os.path.join(self.directory, "server.crt")):
            make_server_certificate(self.directory)
        return super()._config(port=0) + TLS_CONFIG.format(port=self.port, directory=self.directory, user=self.user,
                                                           password=self.password)

    def _open(self, timeout: float):
        context = ssl.create_default_context(cafile=self.ca_file)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            connection = context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
        return connection, _request(("AUTH", self.user, self.password))


def _request(args) -> bytes:
    request = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        request.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(request)


def _read_reply(stream, decode: bool):
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection before replying")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8")
    if kind == b"-":
        raise RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)[:-2]
        return data.decode("utf-8") if decode else data
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [_read_reply(stream, decode) for _ in range(count)]
    raise ConnectionError(f"not a RESP2 reply: {line!r}")


def main(argv=None):
    """``start`` runs a redis-server in the background and prints REDIS_URL; ``stop`` ends it."""
    parser = argparse.ArgumentParser(prog="redis-server")
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dir", default=None, help="data folder (default: a new temporary one)")
    parser.add_argument("--pidfile", default=".redis-server.pid")
    parser.add_argument("--tls", action="store_true",
                        help="TLS only, with a CA made in the data folder, and one ACL user (--user)")
    parser.add_argument("--user", default="ingest", help="with --tls: the ACL user (its password is random)")
    options = parser.parse_args(argv)
    if options.command == "start":
        try:
            if options.tls:
                server = TLSRedisServer(options.port, options.dir, user=options.user)
            else:
                server = RedisServer(options.port, options.dir)
            server.start()
        except (RedisUnavailable, ValueError) as error:
            print(f"redis-server: {error}", file=sys.stderr)
            return 1
        with open(options.pidfile, "w") as stream:
            stream.write(f"{server.pid}\n")
        print(f"export REDIS_URL={server.url}")
        if options.tls:
            print(f"export REDIS_CA_FILE={server.ca_file}")
        print(f"# pid {server.pid} in {options.pidfile}; data and log in {server.directory}", file=sys.stderr)
        return 0
    return stop_by_pidfile("redis-server", options.pidfile, wait=10)

if __name__ == "__main__":
    sys.exit(main())
