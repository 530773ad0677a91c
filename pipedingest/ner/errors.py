"""What can go wrong when an article is handed to the NER pool.

Each error says what happened and carries what a caller needs to act on it (the web layer maps them to
503 + Retry-After, 504, 422, ...); none of them is raised by parsing another exception's text.
"""
from __future__ import annotations


class NERError(Exception):
    """Base of every error the NER layer raises, so a caller can catch the family at once."""


class ModelNotFound(NERError):
    """The configured spaCy model is neither an installed package nor a directory.

    Raised in the parent, before any child starts, so a typo in the config stops the daemon at once instead of
    producing children that fail one after another.
    """

    def __init__(self, model: str):
        self.model = model
        super().__init__(
            f"spaCy model {model!r} is not installed: it is neither an importable package nor a model directory — "
            f"install its package into this environment (e.g. `.venv/bin/pip install {model.replace('_', '-')}`) "
            f"or point `model` at a directory made by `nlp.to_disk()`"
        )


class ModelLoadFailed(NERError):
    """A child found the model but could not load it (corrupt files, unknown excluded component, ...).

    The child stays alive and answers every command with this error, so the pool can report the child's own
    message at start-up rather than watch a crash loop.
    """


class PoolStopped(NERError):
    """The pool is not running (not started yet, or stopping): nothing was queued."""


class PoolOverloaded(NERError):
    """Accepting the article would queue more work than ``max_queued`` allows: nothing was queued.

    ``retry_after`` is a hint in whole seconds (for an HTTP ``Retry-After`` header): the time the children need
    to work through what is queued now, from the recent throughput.
    """

    def __init__(self, queued_articles: int, queued_words: int, retry_after: int):
        self.queued_articles = queued_articles
        self.queued_words = queued_words
        self.retry_after = retry_after
        super().__init__(
            f"NER queue full ({queued_articles} articles, {queued_words} words waiting); retry in {retry_after} s"
        )


class ArticleTooLarge(NERError):
    """The article is longer than the children accept (``max_chars``); it would only waste a child's time."""

    def __init__(self, chars: int, max_chars: int):
        self.chars = chars
        self.max_chars = max_chars
        super().__init__(f"article has {chars} characters; the NER pool accepts at most {max_chars}")


class ArticleTimeout(NERError):
    """The article's deadline passed before its entities came back.

    ``deadline`` is the absolute time (on the pool's clock) that passed, ``allowed`` the seconds the article had
    from ``extract()`` to it. If a child was working on it, that child is killed once the deadline of every
    article of its batch has passed, and a new one started.
    """

    def __init__(self, deadline: float, dispatched: bool, allowed: float):
        self.deadline = deadline
        self.dispatched = dispatched
        self.allowed = allowed
        where = "in a child" if dispatched else "in the queue"
        super().__init__(f"no entities within {allowed:g} s (the article was still {where})")


class PoisonArticle(NERError):
    """The article killed a child twice: once in a batch, once alone. It is not tried again."""

    def __init__(self, crashes: int):
        self.crashes = crashes
        super().__init__(f"the article killed {crashes} NER children; it is not retried")


class InvalidText(NERError):
    """The text cannot be encoded as UTF-8: it holds a lone surrogate (e.g. from a JSON ``"\\ud800"`` escape).

    No child could read it, so it is refused at once and never queued.
    """

    def __init__(self, error: UnicodeEncodeError):
        self.position = error.start
        super().__init__(
            f"the text is not valid Unicode: character {error.start} is {error.object[error.start]!r} "
            f"({error.reason}); it cannot be encoded as UTF-8"
        )


class ExtractionFailed(NERError):
    """The article's batch could not be sent to its child, or the child's answer could not be used.

    Only the articles of that one batch fail; the child goes back to work for the others. ``reason`` is the
    original failure. Unlike a child's death this is not retried: it would most likely fail the same way again.
    """

    def __init__(self, what: str, reason):
        self.reason = reason
        super().__init__(f"{what}: {reason.type.__name__}: {reason.getErrorMessage()}")
