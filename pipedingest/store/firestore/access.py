"""Whether the store's credentials work: the problem while there is one, and the rechecks that clear it.

Credentials that cannot be had, or that Firestore refuses, are not a start
failure: the site still answers, each put and read fails at once with a
:class:`~pipedingest.store.base.StoreUnavailable` naming the credentials (HTTP
503), and ``readiness`` reports the problem, so ``/ready`` says what is wrong.
Off the emulator the store reads one document when it starts, so that the
problem shows before any request does; while there is one it reads again every
``ACCESS_RECHECK`` seconds, and any call that gets through clears it: mounting a
key file or granting a role heals the daemon without a restart.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pipedingest.store.firestore.client import access_problem, describe

log = Logger()

#: Seconds between two reads that check whether a credentials problem is gone.
ACCESS_RECHECK = 10.0
#: The document the access check reads (it need not exist; nothing writes it).
ACCESS_CHECK_ID = "_ingest_access_check"


class AccessWatch:
    """What is wrong with one store's credentials, if anything, and the reads that look again.

    :param project, database: what the store uses, named in the problems.
    :param name: the store's service name, for the log (a callable: the name is set after construction).
    :param running: whether the store runs (rechecks only while it does).
    :param read: Deferred of one read of the store's database (:data:`ACCESS_CHECK_ID`, on its threads).
    :param clock: IReactorTime for the rechecks.
    :param stats: the store's counts: ``access_errors`` is kept there.
    """

    def __init__(self, project: str | None, database: str, name: Callable[[], str], running: Callable[[], bool],
                 read: Callable[[], Deferred], clock, stats: dict):
        #: The project and database the credentials are checked against (the store sets the project it finds).
        self.project = project
        self.database = database
        self._name = name
        self._running = running
        self._read = read
        self._clock = clock
        self._stats = stats
        stats["access_errors"] = 0
        #: What is wrong with the credentials (see ``access_problem``), or None.
        self.problem: str | None = None
        self._checking = False
        self._checked = False  # has a check ended yet?
        self._recheck = None

    def problem_of(self, error: BaseException) -> str | None:
        """What *error* says is wrong with the credentials, or None (see :func:`~.client.access_problem`)."""
        return access_problem(error, self.project, self.database)

    def readiness(self) -> str | None:
        """Why the daemon cannot be ready because of the store's credentials, or None."""
        if self.problem is not None:
            return self.problem
        if self._checking and not self._checked:
            return f"checking access to Firestore database {self.database} of project {self.project}"
        return None

    def check(self):
        """Read one document, to learn whether the credentials work (the result is not needed)."""
        self._recheck = None
        if not self._running() or self._checking:
            return
        self._checking = True

        def checked(_):
            self._checking, self._checked = False, True
            self.ok()

        def failed(failure):
            self._checking, self._checked = False, True
            problem = self.problem_of(failure.value)
            if problem is not None:
                self.failed(problem)
                return
            log.warn("{name}: checking access to Firestore failed: {error}", name=self._name(),
                     error=describe(failure.value))
            if self.problem is not None:
                self._schedule_recheck()  # not known to be gone: look again later

        self._read().addCallbacks(checked, failed)

    def failed(self, problem: str):
        """A call failed for *problem*: report it (once) and look again from time to time."""
        self._stats["access_errors"] += 1
        if problem != self.problem:
            log.error("{name}: {problem}", name=self._name(), problem=problem)
        self.problem = problem
        self._schedule_recheck()

    def ok(self):
        """A call got through: whatever was wrong with the credentials is not any more."""
        if self.problem is not None:
            log.info("{name}: Firestore accepts the credentials again", name=self._name())
            self.problem = None
        self.stop()

    def stop(self):
        """No more rechecks (until the next failure)."""
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None

    def _schedule_recheck(self):
        if self._running() and self._recheck is None:
            self._recheck = self._clock.callLater(ACCESS_RECHECK, self.check)
