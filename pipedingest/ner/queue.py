"""The articles waiting for a child, and how they are cut into batches.

Nothing here starts a process or reads a clock: an ``Article`` is a text and its bookkeeping, a ``Batch`` the
articles one child got in one call, and an ``ArticleQueue`` decides which articles go together. ``pool.py``
decides when, and to which child.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from twisted.internet import defer


@dataclass(eq=False)
class Article:
    """One text waiting for its entities, from ``extract()`` until its Deferred fires.

    ``data`` is the text's UTF-8, encoded once when the pool accepted it (a text that cannot be encoded never
    becomes an Article). ``words`` is the whitespace word count, known before any child sees the text, used to
    bound batches and the queue. ``deadline`` is absolute, on the pool's clock; ``expiry`` the timer that fails
    the article at that moment, cancelled whenever the article is answered, cancelled or failed otherwise.
    ``alone`` marks an article that was in a batch whose child died: it is retried in a batch of its own, so
    that if it was the one that killed the child it cannot take others down with it a second time.
    """

    data: bytes
    words: int
    queued_at: float
    deadline: float
    result: defer.Deferred = None
    crashes: int = 0
    alone: bool = False
    dispatched: bool = False
    expiry: object = None
    #: Who waits for this extraction (see ``NERPool.extract``): each caller's Deferred and its own timer.
    followers: list = None
    key: bytes = b""

    @property
    def waiting(self) -> bool:
        return not self.result.called


@dataclass(eq=False)
class Batch:
    """Articles sent to one child in one ``ExtractEntities`` call.

    A batch may wait in its child's pipe behind another (see ``NERPool`` ``prefetch``): ``started`` says the
    child works on it (it is the first the child holds), since ``started_at``. ``overrun`` is the timer that
    kills the child once the deadline of every article in the started batch has passed; ``killed`` is set when
    it did, so that the child's death is taken for a timeout, not a crash, and nothing is retried.
    """

    articles: list
    child: object = None
    started: bool = False
    started_at: float = 0.0
    killed: bool = False
    overrun: object = None

    def start(self, now: float) -> None:
        self.started = True
        self.started_at = now

    @property
    def words(self) -> int:
        return sum(article.words for article in self.articles)

    @property
    def deadline(self) -> float:
        """When the last of its articles' deadlines passes."""
        return max(article.deadline for article in self.articles)

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

    def batches_needed(self) -> int:
        """About how many batches what is waiting makes: how many children could start on it at once."""
        return math.ceil(len(self._articles) / self.max_batch_docs)

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
