"""The NER child processes as the pool sees them: how one is started, spoken to, stopped, and heard from.

Built from ampoule's parts, without its ``ProcessPool``: ``ChildStarter`` is ampoule's ``ProcessStarter`` and
``ChildConnector`` its ``AMPConnector`` (AMP over the child's file descriptors 3 and 4), each changed where
the daemon needs it to be; ``Child`` is one process with its state, so that the pool knows which child holds
which batch instead of inferring it. Which child to start, use, recycle or stop is the pool's business.
"""
from __future__ import annotations

import os
import signal
import sys

from ampoule.commands import Shutdown
from ampoule.main import AMPConnector, ProcessStarter
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.protocols import amp

from pipedingest.ner.child import NERChild
from pipedingest.ner.commands import DescribeModel

log = Logger()

#: a child's states: loading its model, free, working on one batch, asked to stop (or killed)
STARTING, IDLE, BUSY, STOPPING = "starting", "idle", "busy", "stopping"

#: the child's stdin, stdout and stderr, then AMP to it (3) and from it (4), as ampoule lays them out
CHILD_FDS = {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
_FROM_CHILD = 4

#: a line of child output longer than this is logged in pieces rather than held until its end
_MAX_LINE = 16 * 1024


def child_environment(environ=os.environ) -> dict:
    """The environment a child gets: ``PYTHONPATH`` if the parent has one, nothing else.

    A child needs no variable to run: it is started with the parent's own interpreter (``sys.executable``),
    which finds its site-packages (and the editable install's ``.pth``) by itself; settings travel on its
    command line. Only a ``PYTHONPATH`` the parent was started with may be needed to import the same code.
    Handing over ``os.environ`` would give every child the daemon's secrets, for nothing.
    """
    pythonpath = environ.get("PYTHONPATH")
    return {"PYTHONPATH": pythonpath} if pythonpath else {}


class ChildConnector(AMPConnector):
    """ampoule's AMP-over-pipes process protocol, speaking of the child by its pid.

    ampoule logs a child's start and end at info under a counter, and every line the child writes to stderr
    as an error (``FROM 3: ...``). Here start and end name the pid, and output lines are warnings with the pid:
    the children log warnings and worse only, and a child's warning is not the daemon's error. Output is logged
    line by line even when a line arrives in several reads.

    ``finished`` fires (never fails) with the reason the process ended, once AMP has failed whatever was
    still waiting on it; ``ended`` holds that reason from the moment the end is known.
    """

    def __init__(self, proto):
        super().__init__(proto)
        self.pid = None
        self.ended = None
        self._partial = {}

    def connectionMade(self):
        self.pid = self.transport.pid
        log.info("NER child {pid} started", pid=self.pid)
        self.amp.makeConnection(self)

    def childDataReceived(self, childFD, data):
        if childFD == _FROM_CHILD:
            self.amp.dataReceived(data)
            return
        *lines, rest = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if len(rest) > _MAX_LINE:
            lines.append(rest)
        elif rest:
            self._partial[childFD] = rest
        for line in lines:
            self._log_line(line)

    def errReceived(self, data):
        self.childDataReceived(2, data)

    def getPeer(self):
        return ("NER child", self.pid)

    def _log_line(self, line: bytes) -> None:
        line = line.rstrip().decode("utf-8", "replace")
        if line:
            log.warn("NER child {pid}: {line}", pid=self.pid, line=line)

    def processEnded(self, reason):
        for rest in self._partial.values():
            self._log_line(rest)
        self._partial.clear()
        self.ended = reason.value
        if reason.check(error.ProcessDone):
            log.info("NER child {pid} exited", pid=self.pid)
        else:
            how = (f"by signal {reason.value.signal}" if reason.value.signal is not None
                   else f"with code {reason.value.exitCode}")
            log.warn("NER child {pid} ended {how}", pid=self.pid, how=how)
        self.amp.connectionLost(reason)
        self.finished.callback(reason.value)


class ChildStarter(ProcessStarter):
    """ampoule's process starter, starting a child as ``python -m <its module> <arguments>``.

    ampoule's own starter runs ``python -c <1.5 KB of bootstrap code>``, which is what ``ps`` then shows, with
    whatever environment it is given; and its repr, which ampoule's pool logs, spells that environment out.
    Here a child's module is its own entry point (see ``pipedingest.ner.child.main``), so ``ps`` shows
    ``python -m pipedingest.ner.child {settings}``; the environment is ``child_environment()``; the repr
    names no value; and processes are spawned on the given reactor.
    """

    connectorFactory = ChildConnector

    def __init__(self, reactor, env: dict):
        super().__init__(env=env)
        self.reactor = reactor

    def __repr__(self) -> str:
        return f"<ChildStarter: python -m ... with {len(self.env)} environment variable(s)>"

    def startAMPProcess(self, ampChild, ampParent=None, ampChildArgs=()):
        connector = self.connectorFactory((ampParent or amp.AMP)())
        return self.startPythonProcess(connector, "-m", ampChild.__module__, *ampChildArgs)

    def startPythonProcess(self, prot, *args):
        self.reactor.spawnProcess(prot, sys.executable, (sys.executable, *self.args, *args), env=self.env,
                                  path=self.path, uid=self.uid, gid=self.gid, childFDs=CHILD_FDS)
        return prot.amp, prot.finished


class Child:
    """One NER child process: its AMP connection, pid, state, the batches it holds, and how it ended.

    The pool moves it through ``starting`` (loading the model) → ``idle`` ⇄ ``busy`` (holding batches) →
    ``stopping`` (asked to stop, or killed), and forgets it when the process has exited: ``on_exit`` is called
    then, with the child. ``held`` are its batches in the order it got them: the first is the one it works on
    (``started``), the others wait in its pipe (the pool's ``prefetch``). ``batches`` counts the batches it
    returned, ``rss`` its resident memory after the last one, ``idle_since`` (on the pool's clock) when it last
    became free.
    """

    def __init__(self, connector: ChildConnector, clock, on_exit):
        self.connector = connector
        self.amp = connector.amp
        self.pid = connector.pid
        self.clock = clock
        self.state = STARTING
        self.loaded = False
        self.retired = False
        self.held = []
        self.batches = 0
        self.rss = None
        self.idle_since = None
        self._stop_timer = None
        self._exit_waiters = []
        self._on_exit = on_exit
        connector.finished.addCallback(self._exited)

    @classmethod
    def start(cls, starter: ChildStarter, settings: str, clock, on_exit) -> "Child":
        """Start a process running ``NERChild`` with ``settings`` (the JSON of ``ChildSettings``)."""
        protocol, _ = starter.startAMPProcess(NERChild, ampChildArgs=(settings,))
        return cls(protocol.transport, clock, on_exit)

    def __repr__(self) -> str:
        return f"<NER child {self.pid} {self.state}>"

    @property
    def exited(self) -> bool:
        return self.connector.ended is not None

    def describe(self) -> defer.Deferred:
        """Ask for the model it loaded (waits for the loading); ``ModelLoadFailed`` if it could not."""
        return self.amp.callRemote(DescribeModel)

    def ready(self, now: float) -> None:
        """It has loaded its model and is free."""
        self.loaded = True
        self.state = IDLE
        self.idle_since = now

    def take(self, batch, now: float) -> None:
        """Give it a batch; ``batch.started`` says whether it works on it at once (it held nothing)."""
        self.state = BUSY
        self.held.append(batch)
        batch.child = self
        if len(self.held) == 1:
            batch.start(now)

    def release(self, batch, now: float, goes_on: bool):
        """``batch`` came back, answered or failed. ``goes_on`` says whether the process carries on (it did not
        die): then it starts the next batch it holds, which is returned, or becomes free again, unless it was
        asked to stop."""
        self.held.remove(batch)
        if self.state != BUSY or self.exited:
            return None
        self.batches += 1
        if not self.held:
            self.state = IDLE
            self.idle_since = now
            return None
        following = self.held[0]
        if goes_on and not following.started:
            following.start(now)
            return following
        return None

    def stop(self, grace: float) -> None:
        """Ask it to exit (ampoule's ``Shutdown``, answered once it is done loading); kill it after ``grace``."""
        if self.retired:
            return
        self.retired = True
        self.state = STOPPING
        if self.exited:
            return
        try:
            asked = self.amp.callRemote(Shutdown)
        except Exception:  # it is going anyway: the timer below ends it
            log.failure("cannot ask NER child {pid} to stop", pid=self.pid)
        else:
            asked.addErrback(lambda _: None)  # a child that dies instead is reported by its exit
        self._stop_timer = self.clock.callLater(grace, self.kill)

    def kill(self) -> None:
        """SIGKILL: it gets no more work, even should its last answer still arrive."""
        self.state = STOPPING
        try:
            self.connector.transport.signalProcess(signal.SIGKILL)
        except error.ProcessExitedAlready:
            pass

    def when_exited(self) -> defer.Deferred:
        """Fires (never fails) once the process has exited."""
        if self.exited:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._exit_waiters.append(waiter)
        return waiter

    def _exited(self, reason):
        self.state = STOPPING
        if self._stop_timer is not None and self._stop_timer.active():
            self._stop_timer.cancel()
        self._stop_timer = None
        try:
            self._on_exit(self)
        except Exception:
            log.failure("the NER pool could not take note of child {pid}'s exit", pid=self.pid)
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            waiter.callback(None)
