"""The NER process pool as a Twisted service: batching window, deadlines, retries, restarts, backpressure.

``NERPool`` owns its children (``children.Child``, started with ampoule's process starter and spoken to with
AMP): it knows each one's state and the one batch it holds, so it needs no guess about who took what. It keeps
its own queue of articles (``queue.ArticleQueue``) and hands a child work only when that child is free, so that
it decides what goes together: articles that arrive close together are cut into one batch for one child
(``nlp.pipe`` is cheaper per article than ``nlp(text)``), while a lone article on an idle pool is sent at once.

Around that: per-article deadlines, and killing a child whose batch outlived all of them; retrying the articles
of a child that died, and recognising a poison article; growing from ``min_children`` to ``max_children`` under
load and pruning extra children that stay idle; replacing any child that died; recycling a child by batches or
by memory; refusing work beyond a bound instead of queueing without end. Every timer runs on the injected
``clock``, so tests drive all of it with ``task.Clock``.

A busy child is given its next batch before it is done with the current one (``prefetch``): the child starts
it the moment it answers, instead of idling through a round trip to the reactor process and back. Only the
batch a child works on counts for crashes and deadlines: a batch still waiting in the pipe of a child that
died is sent again, as if never sent.

Identical texts in flight at the same time share one extraction: a text equal to one still waiting or being
extracted follows it instead of being extracted again (so concurrent posts, or re-posts after a model
upgrade, of one article cost one extraction). The extraction runs until the latest of its callers'
deadlines; each caller keeps its own Deferred, deadline and cancellation, and the extraction is cancelled
only once nobody waits.
"""
from __future__ import annotations

import collections
import hashlib
import math

from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure

from pipedingest.article import count_words
from pipedingest.idle import WhenIdle
from pipedingest.metrics import count, gauge, gauges, histogram, reported, resident_bytes
from pipedingest.ner.child import ChildSettings
from pipedingest.ner.children import BUSY, IDLE, STARTING, STOPPING, Child, ChildStarter, child_environment
from pipedingest.ner.commands import ExtractEntities
from pipedingest.ner.errors import (
    ArticleTimeout,
    ArticleTooLarge,
    ExtractionFailed,
    InvalidText,
    ModelLoadFailed,
    PoisonArticle,
    PoolOverloaded,
    PoolStopped,
)
from pipedingest.ner.model import ModelLocation
from pipedingest.ner.queue import Article, ArticleQueue, Batch

log = Logger()

#: what a child's death looks like to a call that was waiting on it
_CHILD_GONE = (error.ProcessTerminated, error.ProcessDone, error.ConnectionLost, error.ConnectionDone)

#: the pool's phases: children loading; serving; refusing new articles while the accepted ones finish;
#: children stopping
STOPPED, STARTING_UP, RUNNING, DRAINING, STOPPING_CHILDREN = "stopped", "starting", "running", "draining", "stopping"

#: seconds a child asked to stop may take before it is killed
STOP_GRACE = 10.0

#: children in a row that may fail to load the model before the pool stops replacing them on its own
MAX_FAILED_STARTS = 3


class NERPool(service.Service):
    """Named-entity extraction in a pool of spaCy child processes, as a service.

    ``extract(text)`` returns a Deferred that fires with ``{"entities": [...], "model": {"name", "version"}}``,
    or fails with one of the errors of ``pipedingest.ner.errors``. All timing (batching window, deadlines,
    idle pruning) runs on ``clock``; processes are spawned on ``reactor``.

    Keyword configuration:

    - ``model``: spaCy package name or model directory; ``exclude``: components not to load.
    - ``min_children`` / ``max_children``: pool size; the pool grows on demand up to the maximum and stops
      extra children idle for ``max_idle`` seconds, back down to the minimum.
    - ``max_batch_docs`` / ``max_batch_words``: the most one batch may hold; ``max_wait``: how long (seconds)
      queued articles may be held for more to arrive while a child is free but others are busy. An idle pool
      sends at once.
    - ``prefetch``: batches a busy child may hold besides the one it works on (0: none). A busy child gets a
      full batch this way, or any batch when ``max_wait`` is 0; it goes to the busy child that should be free
      first (the fewest words left, at the recently measured speed).
    - ``deadline``: seconds from ``extract()`` to the answer, queueing included, for an article whose caller
      gives no deadline of its own.
    - ``max_queued`` (articles) and ``max_queued_words``: bound on the waiting (not yet dispatched) work;
      beyond it ``extract`` fails at once with ``PoolOverloaded``.
    - ``recycle_after_tasks``: replace a child after that many batches (0: never);
      ``recycle_rss_mb``: replace a child whose resident memory exceeds that after a batch (None: never).
    - ``max_chars``: the longest article accepted (also the children's ``nlp.max_length``).
    - ``learn_lexemes``: a child keeps the words of its small batches, outside spaCy's memory zone, until its
      vocabulary holds this many lexemes, so that common words stay cached; after that, and for big batches, a
      batch leaves nothing behind (see ``ChildSettings``). 0: every batch in a zone.
    - ``crash_marker_for_tests``: a test hook, see ``ChildSettings``; never set it in a real configuration.
    - ``budget``: what the pool was sized by (see ``pipedingest.budget``), shown as is in ``state()``.
    - ``label``: the pool's resource name (``ner.pool``, ``ner.fr``), its ``pool`` label in ``metrics()``.
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
        prefetch: int = 1,
        deadline: float = 30.0,
        max_queued: int = 1000,
        max_queued_words: int | None = None,
        recycle_after_tasks: int = 0,
        recycle_rss_mb: float | None = None,
        max_chars: int = 2_000_000,
        learn_lexemes: int = 30_000,
        max_idle: float = 60.0,
        clock=None,
        reactor=None,
        crash_marker_for_tests: str = "",
        budget: dict | None = None,
        label: str = "ner.pool",
    ):
        if reactor is None:
            from twisted.internet import reactor
        max_children = min_children if max_children is None else max_children
        if not 1 <= min_children <= max_children:
            raise ValueError(f"need 1 <= min_children <= max_children, got {min_children} and {max_children}")
        if max_batch_docs < 1 or max_batch_words < 1 or max_queued < 1:
            raise ValueError("max_batch_docs, max_batch_words and max_queued must be at least 1")
        if max_wait < 0 or prefetch < 0 or learn_lexemes < 0 or deadline <= 0 or max_idle <= 0:
            raise ValueError("max_wait, prefetch and learn_lexemes must be >= 0, deadline and max_idle > 0")
        self.location = ModelLocation.find(model)
        unknown = self.location.unknown_components(exclude)
        if unknown:
            raise ModelLoadFailed(
                f"cannot exclude {', '.join(unknown)} from spaCy model {model!r}: "
                f"it has only {', '.join(self.location.components)}"
            )
        self.settings = ChildSettings(
            model=model, exclude=tuple(exclude), max_chars=max_chars, learn_lexemes=learn_lexemes,
            crash_marker_for_tests=crash_marker_for_tests
        )
        self.min_children = min_children
        self.max_children = max_children
        self.max_wait = max_wait
        self.prefetch = prefetch
        self.deadline = deadline
        self.max_queued = max_queued
        self.max_queued_words = max_queued_words
        self.recycle_after_tasks = recycle_after_tasks
        self.recycle_rss_mb = recycle_rss_mb
        self.max_chars = max_chars
        self.max_idle = max_idle
        self.budget = budget
        #: the pool's resource name (``ner.pool``, ``ner.fr``): its ``pool`` label in /metrics, and in its logs
        self.label = label
        self.clock = reactor if clock is None else clock
        self.reactor = reactor
        self.model = None
        #: every child process not yet exited, in the order they were started
        self.children: list[Child] = []
        self._starter = ChildStarter(reactor, child_environment())
        self._queue = ArticleQueue(max_batch_docs, max_batch_words)
        self._in_flight: set[Batch] = set()
        self._phase = STOPPED
        self._window = None
        self._prune_timer = None
        self._prune_due = None
        self._dispatching = False
        self._dispatch_again = False
        self._drained = WhenIdle(lambda: not self._queue and not self._in_flight)
        self._words_per_second = None
        self._failed_starts = 0
        self._counts = collections.Counter()
        #: The extraction of each text in flight, by the text's digest (see ``extract``).
        self._identical: dict[bytes, Article] = {}
        self._extraction_seconds = histogram(
            "pipedingest_ner_extraction_seconds",
            "Seconds from an article's arrival in the pool to its entities, queueing included")
        self._batch_seconds = histogram("pipedingest_ner_batch_seconds", "Seconds a child took for one batch")

    # -- the service ------------------------------------------------------------------------------------------

    def startService(self):
        """Start ``min_children`` children; fires once each has loaded the model.

        Fails with ``ModelLoadFailed`` (carrying a child's own reason) when the model does not load, once every
        child has exited again.
        """
        service.Service.startService(self)
        self._phase = STARTING_UP
        loading = [self._spawn() for _ in range(self.min_children)]
        started = defer.DeferredList(loading, fireOnOneErrback=True, consumeErrors=True)
        started.addCallbacks(self._started, self._start_failed)
        return started

    def _started(self, _):
        if self._phase != STARTING_UP:  # stopService came first
            return
        self._phase = RUNNING
        log.info("NER pool up: {pool}, children {pids} with {model}", pool=self.label,
                 pids=[child.pid for child in self.children],
                 model=self.model)
        self._dispatch()

    def _start_failed(self, failure):
        problem = failure.value.subFailure
        self.running = False
        self._phase = STOPPING_CHILDREN
        stopped = self._stop_children()
        return stopped.addCallback(lambda _: problem)

    def stopService(self):
        """Refuse new articles, let the queued and running ones finish (their deadlines bound the wait), then
        stop the children; fires when every child process has exited."""
        service.Service.stopService(self)
        if self._phase in (STOPPED, STOPPING_CHILDREN):
            return self._stop_children()
        self._phase = DRAINING
        drained = self._drained.wait()
        drained.addCallback(lambda _: self._stop_children())
        return drained

    def _stop_children(self):
        self._phase = STOPPING_CHILDREN
        for timer in (self._window, self._prune_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._window = self._prune_timer = None
        exits = []
        for child in list(self.children):
            if not child.retired:
                child.stop(STOP_GRACE)
            exits.append(child.when_exited())

        def stopped(_):
            self._phase = STOPPED

        return defer.gatherResults(exits).addCallback(stopped)

    # -- articles in --------------------------------------------------------------------------------------------

    def extract(self, text: str, deadline: float | None = None) -> defer.Deferred:
        """The entities of ``text``, by ``deadline`` (absolute, on ``self.clock``; default ``self.deadline``
        seconds from now); see the class docstring for what the Deferred fires with or fails with.

        Cancelling the Deferred before the article was sent to a child takes it out of the queue; after that,
        its result is dropped when it comes back (the batch it shares with others is not disturbed).
        """
        if self._phase != RUNNING:
            return defer.fail(PoolStopped("the NER pool is not running"))
        if len(text) > self.max_chars:
            return defer.fail(ArticleTooLarge(len(text), self.max_chars))
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as problem:
            self._counts["invalid"] += 1
            return defer.fail(InvalidText(problem))
        words = count_words(text)
        if self._queue and (
            len(self._queue) + 1 > self.max_queued
            or (self.max_queued_words is not None and self._queue.words + words > self.max_queued_words)
        ):
            self._counts["overloaded"] += 1
            return defer.fail(PoolOverloaded(len(self._queue), self._queue.words, self._retry_after()))
        now = self.clock.seconds()
        deadline = now + self.deadline if deadline is None else deadline
        if deadline <= now:
            self._counts["timeouts"] += 1
            return defer.fail(ArticleTimeout(deadline, dispatched=False, allowed=0.0))
        key = hashlib.blake2b(data, digest_size=16).digest()
        same = self._identical.get(key)
        if same is not None and same.waiting:
            self._counts["shared"] += 1
            if deadline > same.deadline:
                self._extend(same, deadline, now)
            return self._follow(same, deadline, now)
        article = Article(data=data, words=words, queued_at=now, deadline=deadline, followers=[], key=key)
        article.result = defer.Deferred(lambda _: self._cancelled(article))
        article.result.addBoth(self._settled, article)
        article.expiry = self.clock.callLater(deadline - now, self._expired, article)
        self._identical[key] = article
        self._queue.append(article)
        self._dispatch()
        return self._follow(article, deadline, now)

    # -- the callers of one extraction ----------------------------------------------------------------------------

    def _follow(self, article: Article, deadline: float, now: float) -> defer.Deferred:
        """A Deferred for one more caller of *article*'s extraction, failing alone at its own *deadline*
        (when earlier than the article's) and cancelled alone."""
        follower = {"deadline": deadline, "since": now, "timer": None}
        follower["result"] = defer.Deferred(lambda _: self._unfollow(article, follower, None))
        if deadline < article.deadline:
            follower["timer"] = self.clock.callLater(deadline - now, self._follower_expired, article, follower)
        article.followers.append(follower)
        return follower["result"]

    def _extend(self, article: Article, deadline: float, now: float) -> None:
        """A caller with a later deadline follows *article*: the extraction may now run until then, while each
        earlier caller still fails alone at its own deadline (it gets its own timer). A batch the article is
        already running in is watched until its new deadline too."""
        for follower in article.followers:
            if follower["timer"] is None and follower["deadline"] < deadline:
                follower["timer"] = self.clock.callLater(max(0.0, follower["deadline"] - now),
                                                         self._follower_expired, article, follower)
        article.deadline = deadline
        if article.expiry is not None and article.expiry.active():
            article.expiry.reset(deadline - now)
        for batch in self._in_flight:
            if article in batch.articles and batch.overrun is not None and batch.overrun.active():
                batch.overrun.reset(max(0.0, batch.deadline - now))

    def _unfollow(self, article: Article, follower: dict, problem) -> None:
        """A caller gave up (cancelled, or its deadline passed); nobody left waiting: the extraction stops."""
        if follower in article.followers:
            article.followers.remove(follower)
        if follower["timer"] is not None and follower["timer"].active():
            follower["timer"].cancel()
        follower["timer"] = None
        if problem is not None:
            follower["result"].errback(problem)
        if not article.followers and article.waiting:
            article.result.cancel()

    def _follower_expired(self, article: Article, follower: dict) -> None:
        follower["timer"] = None
        self._counts["timeouts"] += 1
        self._unfollow(article, follower, ArticleTimeout(follower["deadline"], dispatched=article.dispatched,
                                                         allowed=follower["deadline"] - follower["since"]))

    def _settled(self, outcome, article: Article):
        """The extraction is over: every caller still waiting gets its outcome (a result each its own copy)."""
        if self._identical.get(article.key) is article:
            del self._identical[article.key]
        followers, article.followers = article.followers, []
        for follower in followers:
            if follower["timer"] is not None and follower["timer"].active():
                follower["timer"].cancel()
            if follower["result"].called:
                continue
            if isinstance(outcome, Failure):
                follower["result"].errback(outcome)
            else:
                follower["result"].callback(dict(outcome))
        return None

    def _cancelled(self, article: Article):
        self._stop_expiry(article)
        self._counts["cancelled"] += 1
        if self._queue.remove(article):
            self._dispatch()

    def _expired(self, article: Article):
        """The article's deadline passed: fail it (its batch's ``overrun`` timer deals with its child)."""
        article.expiry = None
        if not article.waiting:
            return
        self._counts["timeouts"] += 1
        queued = self._queue.remove(article)
        article.result.errback(
            ArticleTimeout(article.deadline, dispatched=not queued, allowed=article.deadline - article.queued_at)
        )
        self._dispatch()

    def _stop_expiry(self, article: Article):
        if article.expiry is not None and article.expiry.active():
            article.expiry.cancel()
        article.expiry = None

    def _answer(self, article: Article, found: dict):
        self._stop_expiry(article)
        article.result.callback(found)

    def _fail(self, article: Article, problem: Exception):
        self._stop_expiry(article)
        article.result.errback(problem)

    def _retry_after(self) -> int:
        """Seconds the children would need for what is queued now, at the recently measured speed."""
        if not self._words_per_second:
            return 1
        children = max(1, len(self._live()))
        return max(1, math.ceil(self._queue.words / (self._words_per_second * children)))

    # -- batches out ----------------------------------------------------------------------------------------------

    def _dispatch(self):
        """Something changed (an article came or went, a child became free or left): act on it.

        Every change ends here, including those made from inside a dispatch (a batch that fails while it is
        being sent, an answer whose receiver submits again); such a call only asks for one more round.
        """
        if self._dispatching:
            self._dispatch_again = True
            return
        self._dispatching = True
        try:
            self._dispatch_again = True
            while self._dispatch_again:
                self._dispatch_again = False
                if self._phase in (RUNNING, DRAINING):
                    self._send_batches()
                    self._grow()
                    self._schedule_prune()
        finally:
            self._dispatching = False
        self._drained.check()

    def _send_now(self) -> bool:
        """Whether the queue should go out now rather than wait for more articles to join it.

        It goes when a batch is full, when no child is busy (waiting would only add latency to a lone article),
        or when the oldest article has waited ``max_wait``.
        """
        if self._queue.full or not self._in_flight or self.max_wait == 0:
            return True
        return self.clock.seconds() - self._queue.oldest.queued_at >= self.max_wait

    def _send_batches(self):
        idle = self._idle()
        if self._queue and idle:
            if self._send_now():
                while self._queue and idle:
                    child = idle.pop()
                    self._send(child, self._queue.next_batch(share=len(idle) + 1))
            elif self._window is None or not self._window.active():
                delay = self._queue.oldest.queued_at + self.max_wait - self.clock.seconds()
                self._window = self.clock.callLater(max(0.0, delay), self._dispatch)
        while self._queue and not idle and (self.max_wait == 0 or self._queue.full):
            roomy = self._with_room()
            if not roomy:
                break
            now = self.clock.seconds()
            self._send(min(roomy, key=lambda child: self._work_left(child, now)), self._queue.next_batch())
        if not self._queue and self._window is not None:
            if self._window.active():
                self._window.cancel()
            self._window = None

    def _work_left(self, child: Child, now: float) -> float:
        """Words ``child`` has yet to do: what it holds, less what it has done of the batch it works on, at the
        recently measured speed. The child with the least is the first free: it gets the next batch."""
        rate = self._words_per_second or 0.0
        left = 0.0
        for batch in child.held:
            done = (now - batch.started_at) * rate if batch.started else 0.0
            left += max(0.0, batch.words - done)
        return left

    def _with_room(self) -> list[Child]:
        """Busy children that may be given one more batch now (see ``prefetch``).

        Not one due for recycling: it is left to run dry, so that it can be replaced."""
        return [child for child in self.children
                if child.state == BUSY and not child.exited and len(child.held) <= self.prefetch
                and not self._recycle_due(child, pending=len(child.held))]

    def _send(self, child: Child, articles: list[Article]):
        """Give ``articles`` to ``child``. Whatever goes wrong here fails these articles only."""
        now = self.clock.seconds()
        batch = Batch(articles=articles)
        for article in articles:
            article.dispatched = True
        child.take(batch, now)
        self._in_flight.add(batch)
        self._counts["batches"] += 1
        if batch.started:
            self._watch(batch)
        try:
            answer = child.amp.callRemote(ExtractEntities, texts=[article.data for article in articles])
        except Exception:
            answer = defer.fail(ExtractionFailed(f"the batch could not be sent to NER child {child.pid}", Failure()))
        answer.addBoth(self._returned, batch)
        answer.addErrback(self._bookkeeping_failed, batch)

    def _watch(self, batch: Batch):
        """The child has started on ``batch``: kill it should it still work once every deadline in it passed.

        A batch whose deadlines all passed while it waited in the child's pipe is left the time it should take
        (twice the recent speed, plus a second): killing the child at once would cost a restart for an article
        that is about done, yet one that runs far longer is still stopped."""
        now = self.clock.seconds()
        due = batch.deadline
        if due <= now:
            due = now + (2 * batch.words / self._words_per_second + 1 if self._words_per_second else self.deadline)
        batch.overrun = self.clock.callLater(due - now, self._overran, batch)

    def _overran(self, batch: Batch):
        """The deadline of every article of the batch has passed while its child still works: kill the child."""
        batch.overrun = None
        if batch not in self._in_flight or batch.killed:
            return
        batch.killed = True
        self._counts["killed"] += 1
        log.warn("NER child {pid} overran the deadlines of its batch of {n}: killing it",
                 pid=batch.child.pid, n=len(batch.articles))
        batch.child.kill()

    def _returned(self, outcome, batch: Batch):
        """Every way a batch ends comes here once: an answer, an error, the child's death, a failed send.

        The child is freed (or recycled) before any article's Deferred fires, so that whoever receives a result
        sees the pool as it is; the articles are settled after; should that go wrong, they fail with
        ``ExtractionFailed`` and the others carry on.
        """
        self._in_flight.discard(batch)
        if batch.overrun is not None and batch.overrun.active():
            batch.overrun.cancel()
        batch.overrun = None
        child = batch.child
        died = isinstance(outcome, Failure) and (outcome.check(*_CHILD_GONE) is not None or batch.killed)
        following = child.release(batch, self.clock.seconds(), goes_on=not died)
        if following is not None:
            self._watch(following)
        if not isinstance(outcome, Failure):
            child.rss = outcome.get("rss") if isinstance(outcome, dict) else None
        if child.state == IDLE:
            self._recycle_if_due(child)
        try:
            if isinstance(outcome, Failure):
                self._batch_failed(outcome, batch)
            else:
                self._batch_done(outcome, batch)
        except Exception:
            problem = Failure()
            log.failure("NER batch of {n} from child {pid} could not be settled", problem,
                        n=len(batch.articles), pid=child.pid)
            self._counts["failed"] += 1
            for article in batch.waiting:
                self._fail(article, ExtractionFailed(f"the answer of NER child {child.pid} could not be used",
                                                     problem))
        self._dispatch()

    def _bookkeeping_failed(self, failure, batch: Batch):
        """The last resort: never an unhandled error in a Deferred, never an article left without an answer."""
        log.failure("NER pool bookkeeping failed for a batch of {n}", failure, n=len(batch.articles))
        for article in batch.articles:
            if article.waiting:
                self._stop_expiry(article)
                article.result.errback(ExtractionFailed("the NER pool failed to handle this batch", failure))

    def _batch_done(self, reply, batch: Batch):
        results = reply["results"]
        if len(results) != len(batch.articles) or not all(isinstance(found["entities"], list) for found in results):
            raise ValueError(f"the answer does not fit the batch: {len(results)} results for {len(batch.articles)} "
                             f"texts, or entities that are not lists")
        now = self.clock.seconds()
        elapsed = now - batch.started_at
        self._batch_seconds.observe(max(0.0, elapsed))
        if elapsed > 0:
            speed = batch.words / elapsed
            self._words_per_second = speed if self._words_per_second is None else (
                0.8 * self._words_per_second + 0.2 * speed
            )
        self._counts["articles"] += len(batch.articles)
        self._counts["words"] += batch.words
        for article, found in zip(batch.articles, results):
            if article.waiting:
                self._extraction_seconds.observe(max(0.0, now - article.queued_at))
                model = {"name": self.model["name"], "version": self.model["version"]}
                self._answer(article, {"entities": found["entities"], "model": model})

    def _batch_failed(self, failure, batch: Batch):
        if batch.killed:
            for article in batch.waiting:  # only if the kill came before their own expiry, at the same moment
                self._counts["timeouts"] += 1
                self._fail(article, ArticleTimeout(article.deadline, dispatched=True,
                                                   allowed=article.deadline - article.queued_at))
        elif failure.check(*_CHILD_GONE) and not batch.started:
            # It was waiting in the pipe of a child that died on another batch: not its doing, sent again.
            for article in reversed(batch.waiting):
                self._counts["resent"] += 1
                article.dispatched = False
                self._queue.retry_first(article)
        elif failure.check(*_CHILD_GONE):
            self._counts["crashes"] += 1
            log.warn("NER child {pid} died in a batch of {n}: retrying its articles one by one",
                     pid=batch.child.pid, n=len(batch.articles))
            for article in reversed(batch.waiting):
                article.crashes += 1
                if article.crashes >= 2:
                    self._counts["poisoned"] += 1
                    self._fail(article, PoisonArticle(article.crashes))
                else:
                    self._counts["retried"] += 1
                    article.alone = True
                    article.dispatched = False
                    self._queue.retry_first(article)
        else:
            self._counts["failed"] += 1
            log.failure("NER batch of {n} failed with child {pid}", failure, n=len(batch.articles),
                        pid=batch.child.pid)
            problem = failure.value if failure.check(ExtractionFailed) else ExtractionFailed(
                f"NER child {batch.child.pid} could not extract the batch", failure
            )
            for article in batch.waiting:
                self._fail(article, problem)

    # -- children ---------------------------------------------------------------------------------------------------

    def _live(self) -> list[Child]:
        """Children that are or will be usable: not asked to stop, not exited."""
        return [child for child in self.children if child.state != STOPPING and not child.exited]

    def _idle(self) -> list[Child]:
        """Free children, the one that became free last at the end (it is used first, so extras stay idle)."""
        idle = [child for child in self.children if child.state == IDLE and not child.exited]
        return sorted(idle, key=lambda child: child.idle_since)

    def _spawn(self) -> defer.Deferred:
        """Start a child; the Deferred fires when it has loaded the model, or fails with ``ModelLoadFailed``."""
        try:
            child = Child.start(self._starter, self.settings.to_json(), self.clock, self._child_exited)
        except Exception:
            failure = Failure()
            log.failure("cannot start an NER child", failure)
            return defer.fail(ModelLoadFailed(f"cannot start an NER child: {failure.getErrorMessage()}"))
        self.children.append(child)
        loading = child.describe()
        loading.addCallbacks(self._child_loaded, self._child_not_loaded, callbackArgs=(child,), errbackArgs=(child,))
        return loading

    def _child_loaded(self, reply, child: Child):
        self._failed_starts = 0
        if self.model is None:
            self.model = reply["model"]
        if child.state == STARTING and not child.exited:
            child.ready(self.clock.seconds())
            self._dispatch()
        return reply

    def _child_not_loaded(self, failure, child: Child):
        if failure.check(ModelLoadFailed):
            problem = failure.value
        elif failure.check(*_CHILD_GONE):
            problem = ModelLoadFailed(
                f"an NER child exited while loading spaCy model {self.settings.model!r} "
                f"({failure.getErrorMessage()}); its error output is in the log"
            )
        else:
            problem = ModelLoadFailed(f"an NER child could not load spaCy model {self.settings.model!r}: "
                                      f"{failure.type.__name__}: {failure.getErrorMessage()}")
        if self._phase in (RUNNING, DRAINING):
            self._failed_starts += 1
            log.error("NER child {pid} is not used ({n} in a row): {problem}", pid=child.pid,
                      n=self._failed_starts, problem=problem)
            child.stop(STOP_GRACE)
            self._dispatch()
        return Failure(problem)

    def _child_exited(self, child: Child):
        """A child process ended: forget it, and bring the pool back to its minimum.

        Children that cannot load the model are replaced ``MAX_FAILED_STARTS`` times in a row, not in an endless
        loop; after that only queued work (``_grow``) starts one again, one at a time.
        """
        if child in self.children:
            self.children.remove(child)
        if not child.retired and child.loaded and self._phase in (RUNNING, DRAINING):
            self._counts["restarts"] += 1
            log.warn("NER child {pid} is gone: starting another", pid=child.pid)
        if child.loaded or self._failed_starts < MAX_FAILED_STARTS:
            self._restore()
        elif self._failed_starts == MAX_FAILED_STARTS:
            log.critical("{n} NER children in a row could not load the model: the pool no longer replaces them "
                         "by itself; queued articles still start one at a time", n=self._failed_starts)
        self._dispatch()

    def _restore(self):
        """Start children until ``min_children`` are alive (not while the pool stops)."""
        if self._phase not in (RUNNING, DRAINING):
            return
        for _ in range(self.min_children - len(self._live())):
            self._spawn().addErrback(lambda _: None)  # already logged by _child_not_loaded

    def _grow(self):
        """Start extra children, up to ``max_children``, for queued work that no free child can take."""
        if not self._queue or self._idle():
            return
        live = self._live()
        starting = sum(1 for child in live if child.state == STARTING)
        for _ in range(min(self.max_children - len(live), self._queue.batches_needed() - starting)):
            self._spawn().addErrback(lambda _: None)

    def _recycle_due(self, child: Child, pending: int = 0) -> str | None:
        """Why ``child`` is due for recycling once its ``pending`` batches are done, if it is: it will have done
        ``recycle_after_tasks`` batches, or it has grown past ``recycle_rss_mb``."""
        if self.recycle_after_tasks and child.batches + pending >= self.recycle_after_tasks:
            return f"{child.batches + pending} batches"
        if self.recycle_rss_mb is not None and child.rss is not None and child.rss > self.recycle_rss_mb * 2**20:
            return f"{child.rss / 2**20:.0f} MB resident"
        return None

    def _recycle_if_due(self, child: Child):
        """Replace a child that has done ``recycle_after_tasks`` batches or grown past ``recycle_rss_mb``."""
        why = self._recycle_due(child)
        if why is None:
            return
        self._counts["recycled"] += 1
        log.info("recycling NER child {pid} after {why}", pid=child.pid, why=why)
        child.stop(STOP_GRACE)
        self._restore()

    def _schedule_prune(self):
        """Keep one timer, for when the longest-idle extra child will have been idle ``max_idle`` seconds.

        There is none while the pool has no extra child, or no extra child is idle.
        """
        idle = self._idle()
        due = None
        if idle and len(self._live()) > self.min_children:
            due = idle[0].idle_since + self.max_idle
        if self._prune_timer is not None and self._prune_timer.active() and due == self._prune_due:
            return
        if self._prune_timer is not None and self._prune_timer.active():
            self._prune_timer.cancel()
        self._prune_timer, self._prune_due = None, due
        if due is not None:
            self._prune_timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._prune)

    def _prune(self):
        self._prune_timer = self._prune_due = None
        now = self.clock.seconds()
        for child in self._idle():
            if len(self._live()) <= self.min_children or now - child.idle_since < self.max_idle:
                break
            self._counts["pruned"] += 1
            log.info("stopping NER child {pid}: idle for {s:.0f} s", pid=child.pid, s=now - child.idle_since)
            child.stop(STOP_GRACE)
        self._dispatch()

    # -- status ----------------------------------------------------------------------------------------------------

    def state(self) -> dict:
        """A JSON-able picture of the pool for ``/status``; ``processes`` says which child holds which batch."""
        processes = sorted(self.children, key=lambda child: child.pid or 0)
        busy = [child for child in processes if child.state == BUSY]
        counts = self._counts
        return {
            "running": bool(self.running),
            "children": len(self._live()),
            "busy": len(busy),
            "min_children": self.min_children,
            "max_children": self.max_children,
            "queued": {"articles": len(self._queue), "words": self._queue.words},
            "in_flight": {
                "batches": len(self._in_flight),
                "articles": sum(len(batch.articles) for batch in self._in_flight),
            },
            **{name: counts[name] for name in (
                "batches", "articles", "words", "restarts", "crashes", "timeouts", "poisoned", "recycled",
                "overloaded", "cancelled", "killed", "failed", "retried", "resent", "pruned", "invalid", "shared",
            )},
            "child_words_per_second": round(self._words_per_second or 0.0, 1),
            "model": self.model,
            "budget": self.budget,
            "processes": [
                {
                    "pid": child.pid,
                    "state": child.state,
                    "busy": child.state == BUSY,
                    "articles": sum(len(batch.articles) for batch in child.held),
                    "waiting_in_pipe": sum(len(batch.articles) for batch in child.held[1:]),
                    "batches": child.batches,
                    "rss_mb": round(child.rss / 2**20, 1) if child.rss is not None else None,
                }
                for child in processes
            ],
        }

    def metrics(self) -> list:
        """For /metrics: the pool now (children, queue, each child's memory), its counts, its histograms;
        every sample labelled with the pool (``pool="ner.fr"``), since a daemon may run several."""
        state = self.state()
        pool = {"pool": self.label}
        families = [
            gauge("pipedingest_ner_children", "NER child processes alive (or loading), not asked to stop",
                  state["children"], **pool),
            gauge("pipedingest_ner_children_busy", "NER children working on a batch", state["busy"], **pool),
            gauge("pipedingest_ner_queued_articles", "Articles waiting for a child", state["queued"]["articles"],
                  **pool),
            gauge("pipedingest_ner_queued_words", "Words of the articles waiting for a child",
                  state["queued"]["words"], **pool),
            gauge("pipedingest_ner_in_flight_articles", "Articles in batches that children are working on",
                  state["in_flight"]["articles"], **pool),
            *(count(name, documentation, self._counts[key], **pool) for key, name, documentation in NER_COUNTS),
        ]
        rss = {child.pid: resident_bytes(child.pid) for child in self.children if child.pid and not child.exited}
        memory = gauges("pipedingest_ner_child_resident_memory_bytes",
                        "Resident memory of each NER child (VmRSS of /proc/<pid>/status)", ["pool", "pid"],
                        [((self.label, pid), size) for pid, size in sorted(rss.items()) if size is not None])
        return [*families, memory, *reported((self._extraction_seconds, self._batch_seconds), **pool)]


#: The pool's counts as counters: (its key in ``state()``, the metric, what it counts).
NER_COUNTS = (
    ("articles", "pipedingest_ner_articles_extracted", "Articles whose entities a child found"),
    ("words", "pipedingest_ner_words_extracted", "Words (runs of non-whitespace) of the articles extracted"),
    ("batches", "pipedingest_ner_batches", "Batches sent to children"),
    ("restarts", "pipedingest_ner_child_restarts", "Children that died unasked and were replaced"),
    ("crashes", "pipedingest_ner_child_crashes", "Batches whose child died while working on them"),
    ("killed", "pipedingest_ner_deadline_kills",
     "Children killed because their batch overran every deadline in it"),
    ("recycled", "pipedingest_ner_child_recycles",
     "Children replaced after recycle_after_tasks batches or past recycle_rss_mb"),
    ("pruned", "pipedingest_ner_child_prunes", "Extra children stopped after staying idle"),
    ("timeouts", "pipedingest_ner_timeouts", "Articles failed at their deadline"),
    ("retried", "pipedingest_ner_retried", "Articles retried alone after their child died"),
    ("resent", "pipedingest_ner_resent",
     "Articles waiting in the pipe of a child that died on another batch, sent again (not a crash)"),
    ("poisoned", "pipedingest_ner_poisoned", "Articles that took a child down twice (422)"),
    ("overloaded", "pipedingest_ner_overloaded", "Articles refused because too much was queued (503)"),
    ("invalid", "pipedingest_ner_invalid", "Texts refused because they cannot be encoded as UTF-8"),
    ("cancelled", "pipedingest_ner_cancelled", "Articles whose caller stopped waiting (a client went away)"),
    ("shared", "pipedingest_ner_shared", "Texts that followed an identical one in flight instead of being extracted"),
    ("failed", "pipedingest_ner_failed_batches", "Batches that failed for another reason than a child's death"),
)
