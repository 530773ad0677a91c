"""Google's Firestore emulator as a child process: start on a free port, stop by pid.

Used by the test fixtures (``tests/conftest.py``), by ``bench/store_batching.py``
and, through ``scripts/firestore-emulator start|stop``, by hand.  Blocking on
purpose: tests that need it from inside the reactor call it in a thread.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tests.pidfile import stop_by_pidfile

JAR = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"


class EmulatorUnavailable(RuntimeError):
    """The emulator cannot run here (no jar, no java) or did not come up."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FirestoreEmulator:
    """One emulator process; ``host`` is what ``FIRESTORE_EMULATOR_HOST`` should say."""

    def __init__(self, project: str = "pipedingest-test", port: int | None = None, jar: str = JAR,
                 log_path: str | None = None):
        self.project = project
        self.port = port or free_port()
        self.jar = jar
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"firestore-emulator-{self.port}.log")
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def check(self):
        """Fail with the reason when the emulator cannot be started here."""
        if not os.path.isfile(self.jar):
            raise EmulatorUnavailable(
                f"the Firestore emulator jar is missing: {self.jar} (Debian package "
                "google-cloud-cli-firestore-emulator); it cannot be installed from the Python registry")
        if shutil.which("java") is None:
            raise EmulatorUnavailable("java is not on PATH; the Firestore emulator needs Java 17 or later")

    def start(self, timeout: float = 60.0) -> "FirestoreEmulator":
        self.check()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["java", "-cp", self.jar, MAIN, "start", "--host=127.0.0.1", f"--port={self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorUnavailable(
                    f"the Firestore emulator exited with {self.process.returncode}; see {self.log_path}:\n"
                    + self._log_tail())
            if self.ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise EmulatorUnavailable(f"the Firestore emulator did not answer on {self.host} within "
                                  f"{timeout:g}s; see {self.log_path}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self):
        """Terminate the process by its pid (killing it if it does not stop within 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def pause(self):
        """Freeze the process (SIGSTOP): calls hang instead of failing, like a stalled server."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def clear(self):
        """Delete every document (the emulator's own reset endpoint)."""
        request = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{self.project}/databases/(default)/documents",
            method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""


def main(argv=None):
    """``start`` runs an emulator in the background and prints the environment to use; ``stop`` ends it."""
    parser = argparse.ArgumentParser(prog="firestore-emulator")
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--project", default="pipedingest-dev")
    parser.add_argument("--pidfile", default=".firestore-emulator.pid")
    options = parser.parse_args(argv)
    if options.command == "start":
        emulator = FirestoreEmulator(options.project, options.port)
        try:
            emulator.start()
        except EmulatorUnavailable as error:
            print(f"firestore-emulator: {error}", file=sys.stderr)
            return 1
        with open(options.pidfile, "w") as stream:
            stream.write(f"{emulator.pid}\n")
        print(f"export FIRESTORE_EMULATOR_HOST={emulator.host}")
        print(f"export GOOGLE_CLOUD_PROJECT={options.project}")
        print(f"# pid {emulator.pid} in {options.pidfile}; log {emulator.log_path}", file=sys.stderr)
        return 0
    return stop_by_pidfile("firestore-emulator", options.pidfile)

if __name__ == "__main__":
    sys.exit(main())
