"""The NER process pool as a Twisted service: batching window, deadlines, retries, restarts, backpressure.

``NERPool`` wraps ampoule's ``ProcessPool`` of ``NERChild`` processes. It keeps its own queue of articles and
hands a child work only when a child is free, so that it can decide what goes together: articles that arrive
close together are cut into one batch for one child (``nlp.pipe`` is cheaper per article than ``nlp(text)``),
while a lone article on an idle pool is sent at once. ampoule's own queue is never used.

What ampoule does not do, this does: per-article deadlines that kill an overrunning child, retrying the
articles of a child that died, recognising a poison article, restoring the minimum number of children after an
idle child died, recycling by memory, and refusing work beyond a bound instead of queueing without end.
"""
from __future__ import annotations

import collections
import math
import os
import signal
from dataclasses import dataclass

from ampoule import main as ampoule_main
from ampoule.pool import ProcessPool
from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure

from pipedingest.ner.child import ChildSettings, NERChild
from pipedingest.ner.commands import DescribeModel, ExtractEntities
from pipedingest.ner.errors import (
    ArticleTimeout,
    ArticleTooLarge,
    ModelLoadFailed,
    PoisonArticle,
    PoolOverloaded,
    PoolStopped,
)
from pipedingest.ner.model import ModelLocation

log = Logger()

#: what a child's death looks like to a call that was waiting on it
_CHILD_GONE = (error.ProcessTerminated, error.ProcessDone, error.ConnectionLost, error.ConnectionDone)


@dataclass(eq=False)
class Article:
    """One text waiting for its entities, from ``extract()`` until its Deferred fires.

    ``words`` is the whitespace word count, known before any child sees the text, used to bound batches and the
    queue. ``alone`` marks an article that was in a batch whose child died: it is retried in a batch of its own,
    so that if it was the one that killed the child it cannot take others down with it a second time.
    """

    text: str
    words: int
    queued_at: float
    deadline: float
    result: defer.Deferred = None
    crashes: int = 0
    alone: bool = False
    dispatched: bool = False
    expiry: object = None

    @property
    def waiting(self) -> bool:
        return not self.result.called


@dataclass(eq=False)
class Batch:
    """Articles sent to one child in one ``ExtractEntities`` call.

    ``killed`` is set when the pool itself killed the child because every article of the batch had passed
    its deadline; its death is then a timeout, not a crash, and nothing is retried.
    """

    articles: list
    child: object = None
    sent_at: float = 0.0
    killed: bool = False

    @property
    def words(self) -> int:
        return sum(article.words for article in self.articles)

    @property
    def waiting(self) -> list:
        return [article for article in self.articles if article.waiting]


class ArticleQueue:
    """Articles waiting for a child, oldest first, and how the next batch is cut from them."""

    def __init__(self, max_batch_docs: int, max_batch_words: int):
        self.max_batch_docs = max_batch_docs
        self.max_batch_words = max_batch_words
        self._articles = collections.deque()
        self.words = 0

    def __len__(self) -> int:
        return len(self._articles)

    def __iter__(self):
        return iter(self._articles)

    def append(self, article: Article) -> None:
        self._articles.append(article)
        self.words += article.words

    def retry_first(self, article: Article) -> None:
        """Put an admitted article back at the head: it has waited longest."""
        self._articles.appendleft(article)
        self.words += article.words

    def remove(self, article: Article) -> bool:
        try:
            self._articles.remove(article)
        except ValueError:
            return False
        self.words -= article.words
        return True

    @property
    def oldest(self) -> Article | None:
        return self._articles[0] if self._articles else None

    @property
    def full(self) -> bool:
        """Enough is waiting to fill a batch: waiting longer would not make it bigger."""
        head = self.oldest
        return head is not None and (
            head.alone or len(self._articles) >= self.max_batch_docs or self.words >= self.max_batch_words
        )

    def next_batch(self, share: int = 1) -> list[Article]:
        """Take the next batch from the head: an ``alone`` article by itself, else up to the batch limits.

        ``share`` is the number of idle children about to take batches: a small queue is spread over them
        (8 articles, 2 idle children → 2 batches of 4) so they work in parallel rather than one after another.
        The first article is always taken, however many words it has.
        """
        docs = min(self.max_batch_docs, max(1, math.ceil(len(self._articles) / max(1, share))))
        batch, words = [], 0
        while self._articles and len(batch) < docs:
            article = self._articles[0]
            if batch and (article.alone or words + article.words > self.max_batch_words):
                break
            self._articles.popleft()
            self.words -= article.words
            batch.append(article)
            words += article.words
            if article.alone:
                break
        return batch


#: ampoule's child bootstrap logs at info to stderr, and the parent relays every stderr line as an
#: error ("FROM 0: ..."), so a routine child shutdown read like a failure in the daemon's log. The
#: children log warnings and worse only; those deserve the parent's error level.
_QUIET_BOOTSTRAP = ampoule_main.BOOTSTRAP.replace("defaultLogLevel=logger.LogLevel.info",
                                                   "defaultLogLevel=logger.LogLevel.warn")


class _ObservedStarter(ampoule_main.ProcessStarter):
    """ampoule's process starter, which also tells the pool when a child process has exited.

    The notice comes after ampoule has forgotten the child (and, for a child that died while busy, started its
    replacement), so that the pool sees the true number of children when it restores its minimum. ampoule
    itself never replaces a child that died while idle.
    """

    def __init__(self, on_exit, **kwargs):
        super().__init__(**kwargs)
        self.on_exit = on_exit

    def startAMPProcess(self, ampChild, ampParent=None, ampChildArgs=()):
        child, finished = super().startAMPProcess(ampChild, ampParent=ampParent, ampChildArgs=ampChildArgs)
        relayed = defer.Deferred()

        def relay(outcome):
            if isinstance(outcome, Failure):
                relayed.errback(outcome)
            else:
                relayed.callback(outcome)
            self.on_exit(child, outcome)

        finished.addBoth(relay)
        return child, relayed


def _pid(child) -> int | None:
    process = getattr(child.transport, "transport", None)
    return getattr(process, "pid", None)


class NERPool(service.Service):
    """Named-entity extraction in a pool of spaCy child processes, as a service.

    ``extract(text)`` returns a Deferred that fires with ``{"entities": [...], "words": n, "model": {...}}``,
    or fails with one of the errors of ``pipedingest.ner.errors``. All timing (batching window, deadlines)
    runs on ``clock``, so tests can drive it with ``task.Clock``.

    Keyword configuration:

    - ``model``: spaCy package name or model directory; ``exclude``: components not to load.
    - ``min_children`` / ``max_children``: pool size; ampoule grows on demand up to the maximum and prunes
      children idle for ``max_idle`` seconds back down to the minimum.
    - ``max_batch_docs`` / ``max_batch_words``: the most one batch may hold; ``max_wait``: how long (seconds)
      queued articles may be held for more to arrive while a child is free but others are busy. An idle pool
      sends at once.
    - ``deadline``: seconds from ``extract()`` to the answer, queueing included (``extract(deadline=)`` per
      article overrides it).
    - ``max_queued`` (articles) and ``max_queued_words``: bound on the waiting (not yet dispatched) work;
      beyond it ``extract`` fails at once with ``PoolOverloaded``.
    - ``recycle_after_tasks``: replace a child after that many batches (0: never);
      ``recycle_rss_mb``: replace a child whose resident memory exceeds that after a batch (None: never).
    - ``max_chars``: the longest article accepted (also the children's ``nlp.max_length``).
    - ``crash_marker_for_tests``: a test hook, see ``ChildSettings``; never set it in a real configuration.
    """

    name = "ner"

    def __init__(
        self,
        *,
        model: str,
        exclude=(),
        min_children: int = 2,
        max_children: int | None = None,
        max_batch_docs: int = 16,
        max_batch_words: int = 8000,
        max_wait: float = 0.005,
        deadline: float = 30.0,
        max_queued: int = 1000,
        max_queued_words: int | None = None,
        recycle_after_tasks: int = 0,
        recycle_rss_mb: float | None = None,
        max_chars: int = 2_000_000,
        max_idle: float = 60.0,
        clock=None,
        crash_marker_for_tests: str = "",
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        max_children = min_children if max_children is None else max_children
        if not 1 <= min_children <= max_children:
            raise ValueError(f"need 1 <= min_children <= max_children, got {min_children} and {max_children}")
        if max_batch_docs < 1 or max_batch_words < 1 or max_queued < 1:
            raise ValueError("max_batch_docs, max_batch_words and max_queued must be at least 1")
        if max_wait < 0 or deadline <= 0:
            raise ValueError("max_wait must be >= 0 and deadline > 0")
        self.location = ModelLocation.find(model)
        unknown = self.location.unknown_components(exclude)
        if unknown:
            raise ModelLoadFailed(
                f"cannot exclude {', '.join(unknown)} from spaCy model {model!r}: "
                f"it has only {', '.join(self.location.components)}"
            )
        self.settings = ChildSettings(
            model=model, exclude=tuple(exclude), max_chars=max_chars, crash_marker_for_tests=crash_marker_for_tests
        )
        self.min_children = min_children
        self.max_children = max_children
        self.max_wait = max_wait
        self.deadline = deadline
        self.max_queued = max_queued
        self.max_queued_words = max_queued_words
        self.recycle_after_tasks = recycle_after_tasks
        self.recycle_rss_mb = recycle_rss_mb
        self.max_chars = max_chars
        self.max_idle = max_idle
        self.clock = clock
        self.model = None
        self._queue = ArticleQueue(max_batch_docs, max_batch_words)
        self._in_flight = set()
        self._pool = None
        self._accepting = False
        self._restoring = False
        self._window = None
        self._drained = None
        self._rss = {}
        self._words_per_second = None
        self._counts = collections.Counter()

    # -- the service ------------------------------------------------------------------------------------------

    def startService(self):
        """Start the children and ask each for its model; fires when all have loaded it.

        Fails with ``ModelLoadFailed`` (carrying the child's own reason) when the model does not load, after
        stopping the children again.
        """
        service.Service.startService(self)
        self._pool = ProcessPool(
            ampChild=NERChild,
            ampChildArgs=(self.settings.to_json(),),
            min=self.min_children,
            max=self.max_children,
            maxIdle=self.max_idle,
            recycleAfter=self.recycle_after_tasks,
            name="ner",
            starter=_ObservedStarter(self._child_exited, bootstrap=_QUIET_BOOTSTRAP, env=dict(os.environ),
                                     packages=("twisted",)),
        )
        self._pool.start()
        calls = [self._pool.doWork(DescribeModel) for _ in range(self.min_children)]
        started = defer.DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
        started.addCallbacks(self._children_ready, self._children_failed)
        return started

    def _children_ready(self, replies):
        (_, first), *_ = replies
        self.model = first["model"]
        self._accepting = True
        self._restoring = True
        log.info("NER pool up: {n} children with {model}", n=len(self._pool.processes), model=self.model)
        self._dispatch()

    def _children_failed(self, failure):
        reason = failure.value.subFailure
        self.running = False
        stopping = self._pool.stop()
        if reason.check(ModelLoadFailed):
            problem = reason.value
        elif reason.check(*_CHILD_GONE):
            problem = ModelLoadFailed(
                f"an NER child exited while loading spaCy model {self.settings.model!r} "
                f"({reason.getErrorMessage()}); its error output is in the log"
            )
        else:
            problem = reason.value
        return stopping.addCallback(lambda _: Failure(problem))

    def stopService(self):
        """Refuse new articles, let the queued and running ones finish (their deadlines bound the wait), then
        stop the children."""
        service.Service.stopService(self)
        self._accepting = False
        if self._pool is None:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        self._check_drained()
        return self._drained.addCallback(lambda _: self._stop_children())

    def _check_drained(self):
        if self._drained is not None and not self._queue and not self._in_flight and not self._drained.called:
            self._drained.callback(None)

    def _stop_children(self):
        self._restoring = False
        if self._window is not None and self._window.active():
            self._window.cancel()
        return self._pool.stop()

    # -- articles in --------------------------------------------------------------------------------------------

    def extract(self, text: str, deadline: float | None = None) -> defer.Deferred:
        """The entities of ``text``; see the class docstring for what the Deferred fires with or fails with.

        Cancelling the Deferred before the article was sent to a child takes it out of the queue; after that,
        its result is dropped when it comes back (the batch it shares with others is not disturbed).
        """
        if not self._accepting:
            return defer.fail(PoolStopped("the NER pool is not running"))
        if len(text) > self.max_chars:
            return defer.fail(ArticleTooLarge(len(text), self.max_chars))
        words = len(text.split())
        if self._queue and (
            len(self._queue) + 1 > self.max_queued
            or (self.max_queued_words is not None and self._queue.words + words > self.max_queued_words)
        ):
            self._counts["overloaded"] += 1
            return defer.fail(PoolOverloaded(len(self._queue), self._queue.words, self._retry_after()))
        now = self.clock.seconds()
        article = Article(text=text, words=words, queued_at=now, deadline=deadline or self.deadline)
        article.result = defer.Deferred(lambda _: self._cancelled(article))
        article.expiry = self.clock.callLater(article.deadline, self._expired, article)
        self._queue.append(article)
        self._dispatch()
        return article.result

    def _cancelled(self, article: Article):
        if article.expiry.active():
            article.expiry.cancel()
        if self._queue.remove(article):
            self._counts["cancelled"] += 1
            self._check_drained()

    def _expired(self, article: Article):
        """The article's deadline passed: fail it, and kill its child if nobody else waits on that batch."""
        if not article.waiting:
            return
        self._counts["timeouts"] += 1
        queued = self._queue.remove(article)
        article.result.errback(ArticleTimeout(article.deadline, dispatched=not queued))
        if queued:
            self._check_drained()
            return
        for batch in self._in_flight:
            if article in batch.articles and not batch.waiting and not batch.killed:
                batch.killed = True
                log.warn("NER child {pid} overran its batch's deadlines: killing it", pid=_pid(batch.child))
                try:
                    batch.child.transport.signalProcess(signal.SIGKILL)
                except error.ProcessExitedAlready:
                    pass

    def _retry_after(self) -> int:
        """Seconds the children would need for what is queued now, at the recently measured speed."""
        if not self._words_per_second:
            return 1
        children = max(1, len(self._pool.processes))
        return max(1, math.ceil(self._queue.words / (self._words_per_second * children)))

    # -- batches out ----------------------------------------------------------------------------------------------

    def _idle_children(self) -> int:
        pool = self._pool
        return len(pool.ready) + max(0, pool.max - len(pool.processes))

    def _send_now(self) -> bool:
        """Whether the queue should go out now rather than wait for more articles to join it.

        It goes when a batch is full, when no child is busy (waiting would only add latency to a lone article),
        or when the oldest article has waited ``max_wait``.
        """
        if self._queue.full or not self._in_flight or self.max_wait == 0:
            return True
        return self.clock.seconds() - self._queue.oldest.queued_at >= self.max_wait

    def _dispatch(self):
        if self._pool is None or self.model is None:
            return
        while self._queue and self._idle_children() > 0:
            if not self._send_now():
                if self._window is None or not self._window.active():
                    delay = self._queue.oldest.queued_at + self.max_wait - self.clock.seconds()
                    self._window = self.clock.callLater(max(0.0, delay), self._dispatch)
                return
            self._send(self._queue.next_batch(share=self._idle_children()))
        if self._window is not None and self._window.active() and not self._queue:
            self._window.cancel()

    def _send(self, articles: list[Article]):
        batch = Batch(articles=articles, sent_at=self.clock.seconds())
        for article in articles:
            article.dispatched = True
        busy = set(self._pool.busy)
        result = self._pool.doWork(ExtractEntities, texts=[article.text for article in articles])
        # ampoule does not say which child took the call: it is the one that has just become busy.
        (batch.child,) = self._pool.busy - busy
        self._in_flight.add(batch)
        self._counts["batches"] += 1
        result.addCallbacks(self._batch_done, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,))
        result.addErrback(lambda failure: log.failure("NER batch bookkeeping failed", failure))

    def _batch_done(self, reply, batch: Batch):
        self._in_flight.discard(batch)
        elapsed = self.clock.seconds() - batch.sent_at
        if elapsed > 0:
            speed = batch.words / elapsed
            self._words_per_second = speed if self._words_per_second is None else (
                0.8 * self._words_per_second + 0.2 * speed
            )
        self._counts["articles"] += len(batch.articles)
        self._rss[batch.child] = reply["rss"]
        for article, found in zip(batch.articles, reply["results"]):
            self._finish(article)
            if article.waiting:
                found["model"] = {"name": self.model["name"], "version": self.model["version"]}
                article.result.callback(found)
        if self.recycle_rss_mb is not None and reply["rss"] > self.recycle_rss_mb * 2**20:
            self._recycle(batch.child)
        self._dispatch()
        self._check_drained()

    def _batch_failed(self, failure, batch: Batch):
        self._in_flight.discard(batch)
        if batch.killed:
            self._counts["killed"] += 1  # every article of it has already failed with ArticleTimeout
        elif failure.check(*_CHILD_GONE):
            self._counts["crashes"] += 1
            log.warn("NER child {pid} died in a batch of {n}: retrying its articles one by one",
                     pid=_pid(batch.child), n=len(batch.articles))
            for article in reversed(batch.waiting):
                article.crashes += 1
                if article.crashes >= 2:
                    self._finish(article)
                    self._counts["poisoned"] += 1
                    article.result.errback(PoisonArticle(article.crashes))
                else:
                    article.alone = True
                    article.dispatched = False
                    self._queue.retry_first(article)
        else:
            for article in batch.waiting:
                self._finish(article)
                article.result.errback(failure)
        self._dispatch()
        self._check_drained()

    def _finish(self, article: Article):
        if article.expiry.active():
            article.expiry.cancel()

    # -- children ---------------------------------------------------------------------------------------------------

    def _recycle(self, child):
        """Replace a child that grew too big: take it out of service now, start its successor, let it stop."""
        if child not in self._pool.ready:
            return
        self._counts["recycled"] += 1
        log.info("recycling NER child {pid}: {mb:.0f} MB resident", pid=_pid(child), mb=self._rss[child] / 2**20)
        self._pool.ready.discard(child)
        self._pool.processes.discard(child)
        self._pool.stopAWorker(child)
        self._pool.adjustPoolSize()

    def _child_exited(self, child, outcome):
        """A child process ended, and ampoule has forgotten it: bring the pool back to its minimum."""
        self._rss.pop(child, None)
        if not self._restoring or self._pool.finished:
            return
        self._counts["restarts"] += 1
        if len(self._pool.processes) < self._pool.min:
            self._pool.adjustPoolSize()
        self._dispatch()

    # -- status ----------------------------------------------------------------------------------------------------

    def state(self) -> dict:
        """A JSON-able picture of the pool for ``/status``."""
        pool = self._pool
        processes = sorted(pool.processes, key=lambda child: _pid(child) or 0) if pool else []
        busy = {batch.child: len(batch.articles) for batch in self._in_flight}
        return {
            "running": self.running,
            "children": len(processes),
            "busy": len(busy),
            "min_children": self.min_children,
            "max_children": self.max_children,
            "queued": {"articles": len(self._queue), "words": self._queue.words},
            "in_flight": {
                "batches": len(self._in_flight),
                "articles": sum(len(batch.articles) for batch in self._in_flight),
            },
            "batches": self._counts["batches"],
            "articles": self._counts["articles"],
            "restarts": self._counts["restarts"],
            "crashes": self._counts["crashes"],
            "timeouts": self._counts["timeouts"],
            "poisoned": self._counts["poisoned"],
            "recycled": self._counts["recycled"],
            "overloaded": self._counts["overloaded"],
            "cancelled": self._counts["cancelled"],
            "killed": self._counts["killed"],
            "child_words_per_second": round(self._words_per_second or 0.0, 1),
            "model": self.model,
            "processes": [
                {
                    "pid": _pid(child),
                    "busy": child in busy,
                    "articles": busy.get(child, 0),
                    "rss_mb": round(self._rss[child] / 2**20, 1) if child in self._rss else None,
                }
                for child in processes
            ],
        }

