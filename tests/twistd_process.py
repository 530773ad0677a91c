"""A real ``twistd ingest`` process for tests: started on a free port, its output kept, stopped by signal."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
_LISTENING = re.compile(r"web site '[^']+' listening on https?://127\.0\.0\.1:(\d+)/")


def twistd(*args, timeout=120, cwd=None, env=None, preexec_fn=None):
    """Run ``twistd -n ingest ARGS`` to its end; the CompletedProcess. *preexec_fn* runs in the child before
    exec (joining a cgroup, setting an affinity)."""
    return subprocess.run([TWISTD, "--pidfile=", "-n", "ingest", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, preexec_fn=preexec_fn)


class Daemon:
    """``twistd -n ingest -c CONFIG`` in the background; its output is read as it comes."""

    def __init__(self, config: str, *overrides: str, cwd=None, env=None, port_key="web.main.port", ingest_args=(),
                 preexec_fn=None, wrapper=(), pass_fds=()):
        """*wrapper*: a command that execs the twistd command line it is given (as systemd passes a socket)."""
        #: Sent by ``get_json`` when the site requires a token (its INGEST_TOKEN).
        self.token = (env or {}).get("INGEST_TOKEN")
        args = [TWISTD, "--pidfile=", "-n", "ingest", "-c", config, *ingest_args]
        if port_key:  # None: a daemon without a site (a worker)
            args += ["-O", f"{port_key}=0"]
        for override in overrides:
            args += ["-O", override]
        self.process = subprocess.Popen([*wrapper, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, cwd=cwd, env=env, preexec_fn=preexec_fn, pass_fds=pass_fds)
        self.lines: list[str] = []
        self._port = threading.Event()
        self.port = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                    self._port.set()
        self._port.set()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Wait until a line of the output contains *text* (polling the output, not sleeping for luck)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line with {text!r}:\n{self.output[-5000:]}")
            time.sleep(0.05)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 120) -> int:
        if not self._port.wait(timeout) or self.port is None:
            raise AssertionError(f"the daemon never listened:\n{self.output}")
        return self.port

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until ``/ready`` answers 200 (polling a condition, not sleeping for luck)."""
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=5):
                    return
            except (OSError, urllib.error.HTTPError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the daemon never became ready:\n{self.output}") from None
                time.sleep(0.1)

    def get_json(self, path: str):
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.base + path, headers=headers),
                                        timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
