"""Processors for news articles: validating them and extracting their entities.

``validate-article`` and ``validate-articles`` turn a request into articles
(or clear 400/413 errors); ``extract-entities`` asks the NER pool, entering the
baton in a pending table while it waits; ``describe-error`` turns a failure
into the ``{"status", "error"}`` a batch reports for one article.  These
processors are where pool errors become HTTP statuses: the pool itself knows
nothing of HTTP.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import FirstError, gatherResults
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.article import (
    DEFAULT_TEXT_FIELDS,
    TEXT_FIELDS,
    ArticleError,
    ArticleTooLong,
    check_article,
    count_words,
    extraction_result,
)
from pipedingest.config.errors import ConfigError
from pipedingest.deadline import Deadline
from pipedingest.engine.baton import get_path, set_path
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option, Processor
from pipedingest.providers.ner import SINGLE_POOL
from pipedingest.ner.errors import (
    ArticleTimeout,
    ArticleTooLarge,
    InvalidText,
    PoisonArticle,
    PoolOverloaded,
    PoolStopped,
)
from pipedingest.web.body import BodyError, is_json_type
from pipedingest.web.errors import WebError, describe_failure


def checked_article(value: Any, max_chars: int | None) -> dict:
    """The article in *value* (see :func:`pipedingest.article.check_article`), or a WebError: 400, 413."""
    try:
        return check_article(value, max_chars)
    except ArticleTooLong as error:
        raise WebError(413, error.message, **error.detail) from None
    except ArticleError as error:
        raise WebError(400, error.message, **error.detail) from None


def request_json(request) -> Any:
    """The request's JSON body (parsed and checked by the site, see ``web/body.py``), or 400/415."""
    if is_json_type(request.content_type) and request.body:
        return request.json
    if not request.body:
        raise WebError(400, "the request has no body; send a JSON article")
    raise WebError(415, f"send JSON (content-type: application/json), not {request.content_type or 'an untyped body'}")


MAX_CHARS = Option((int, type(None)), None, "the longest body accepted (413 beyond); null: only the body limit",
                   minimum=1)


@provider(IPlugin, IProcessor)
class ValidateArticle(InputOutputProcessor):
    """The request's JSON body as a checked article (with a content-hash id when none is given)."""

    name = "validate-article"
    options = {"input_path": Option(str, "request", "where the request is"),
               "output_path": Option(str, "article", "where to put the article"),
               "max_chars": MAX_CHARS}

    def process_input(self, request, baton):
        return checked_article(request_json(request), self.config["max_chars"])


@provider(IPlugin, IProcessor)
class ValidateArticles(InputOutputProcessor):
    """A JSON array or NDJSON body as a list of items: ``{"article": ...}`` or ``{"status", "error"}``.

    One bad article does not fail the others; too many articles fails the request (413).
    Each good item carries the request's ``deadline``, so that the pipeline run for
    it (``for-each``) waits no longer than the request may.
    """

    name = "validate-articles"
    options = {"input_path": Option(str, "request", "where the request is"),
               "output_path": Option(str, "items", "where to put the items"),
               "max_articles": Option(int, 100, "the most articles one request may carry", minimum=1),
               "max_chars": MAX_CHARS}

    def process_input(self, request, baton):
        values = self._values(request)
        if len(values) > self.config["max_articles"]:
            raise WebError(413, f"{len(values)} articles in one request; the limit is {self.config['max_articles']}",
                           limit_articles=self.config["max_articles"])
        if not values:
            raise WebError(400, "the batch is empty")
        deadline = baton.get("deadline") if isinstance(baton, dict) else None
        items = []
        for value in values:
            if isinstance(value, WebError):
                items.append({"status": value.status, "error": {"status": value.status, "message": value.message}})
                continue
            try:
                item = {"article": checked_article(value, self.config["max_chars"])}
            except WebError as error:
                items.append({"status": error.status, "error": {"status": error.status, "message": error.message}})
                continue
            if deadline is not None:
                item["deadline"] = deadline
            items.append(item)
        return items

    def _values(self, request) -> list:
        if request.ndjson is not None:
            return [WebError(value.status, value.message) if isinstance(value, BodyError) else value
                    for value in request.ndjson]
        parsed = request_json(request)
        if not isinstance(parsed, list):
            raise WebError(400, "a batch must be a JSON array of articles (or NDJSON, one per line)")
        return parsed


@provider(IPlugin, IProcessor)
class ExtractEntities(InputOutputProcessor):
    """The named entities of an article, from an NER pool (``pool``: ``ner.pool``, or a named one, ``ner.fr``).

    ``fields`` says which of the article's texts are read: the body alone by default (the answer is then as it
    always was), or ``[title, body]``. With more than the body, each entity carries the ``field`` it was
    found in, its ``start``/``end`` index into that field's text, and the answer lists the ``fields`` read;
    each field is one text for the pool (an empty or absent title is skipped), all extracted at once.

    The work is bounded by the request's deadline (the baton's ``deadline``, see
    :mod:`pipedingest.deadline`), extended for a long article by
    ``seconds_per_1000_words``; a baton without one (a tick, a test) gets the
    pool's ``deadline``.  While it waits, the baton is entered in the ``pending``
    table (if named), so the reaper answers it should it pass that deadline, and
    a client disconnect takes the article out of the pool's queue.
    """

    name = "extract-entities"
    options = {"input_path": Option(str, "article", "where the article is"),
               "output_path": Option(str, "result", "where to put the result"),
               "pool": Option(str, SINGLE_POOL, "the NER pool: ner.pool (a single-pool 'ner:' section) or ner.NAME"),
               "fields": Option(list, list(DEFAULT_TEXT_FIELDS), f"the article's texts to read, among "
                                f"{', '.join(TEXT_FIELDS)}", items=str),
               "pending": Option((str, type(None)), None, "the pending table to wait in"),
               "deadline_path": Option((str, type(None)), "deadline",
                                       "where the request's deadline is (null: the pool's own deadline)"),
               "seconds_per_1000_words": Option(float, 0.5, "more time for long articles, per 1000 words",
                                                minimum=0)}

    def __init__(self, config, step):
        super().__init__(config, step)
        fields = config["fields"]
        unknown = [name for name in fields if name not in TEXT_FIELDS]
        if unknown or not fields or len(set(fields)) != len(fields):
            raise ConfigError(f"fields must name each of {', '.join(TEXT_FIELDS)} at most once, and at least one, "
                              f"not {fields}", "for example: fields: [title, body]", key="fields")
        self.fields = tuple(fields)
        self.clock = step.clock
        self.pool = step.reference(config["pool"], wanted="NER pool")
        self.pending = None
        if config["pending"]:
            self.pending = step.reference(f"pending.{config['pending']}", "pending", "pending table")

    def process_input(self, article, baton):
        pool = self.pool.value
        texts = [(name, article.get(name) or "") for name in self.fields]
        texts = [(name, text) for name, text in texts if name == "body" or text.strip()]
        if not texts:
            raise WebError(400, f"the article has none of the fields this route reads: {', '.join(self.fields)}")
        allowance = sum(count_words(text) for _, text in texts) / 1000 * self.config["seconds_per_1000_words"]
        deadline = get_path(baton, self.config["deadline_path"], None) if self.config["deadline_path"] else None
        if isinstance(deadline, Deadline):
            deadline.extend_to(deadline.at + allowance)
            until = deadline.at
        else:
            until = self.clock.seconds() + pool.deadline + allowance
        if self.fields == DEFAULT_TEXT_FIELDS:
            work = pool.extract(article["body"], until)
        else:
            work = gatherResults([pool.extract(text, until) for _, text in texts], consumeErrors=True)
            work.addCallbacks(self._merged, _first_failure, callbackArgs=([name for name, _ in texts],))
        if self.pending is not None:
            work = self.pending.value.track(baton, work, until)
        return work.addCallbacks(self._result, self._failed, callbackArgs=(article,))

    @staticmethod
    def _merged(extracted: list, names: list) -> dict:
        """The extractions of several fields as one, each entity naming its field."""
        entities = [{**entity, "field": name} for name, one in zip(names, extracted) for entity in one["entities"]]
        return {"entities": entities, "model": extracted[0]["model"]}

    def _result(self, extracted: dict, article: dict) -> dict:
        return extraction_result(article, extracted["entities"], extracted["model"], self.fields)

    @staticmethod
    def _failed(failure):
        if failure.check(PoolOverloaded):
            retry = max(1, int(failure.value.retry_after))
            raise WebError(503, "too much work queued; retry later", {"retry-after": str(retry)},
                           retry_after_seconds=retry)
        if failure.check(PoolStopped):
            raise WebError(503, "entity extraction is not running", {"retry-after": "5"})
        if failure.check(PoisonArticle):
            raise WebError(422, "this article crashed the entity extractor twice; it will not be retried")
        if failure.check(ArticleTimeout):
            raise WebError(504, "entity extraction took too long")
        if failure.check(ArticleTooLarge):
            raise WebError(413, str(failure.value))
        if failure.check(InvalidText):
            raise WebError(400, str(failure.value))
        return failure


def _first_failure(failure):
    """The failure of the first field whose extraction failed (``gatherResults`` wraps it)."""
    failure.trap(FirstError)
    return failure.value.subFailure


@provider(IPlugin, IProcessor)
class DescribeError(Processor):
    """Replace a failed baton with ``{"status", "error"}``, as a batch reports one failed article."""

    name = "describe-error"
    options = {"output_path": Option(str, "", "where to put the description ('' replaces the baton)")}

    def process(self, baton):
        status, error, _ = describe_failure(baton["failure"], "in a batch item")
        return set_path(baton, self.config["output_path"], {"status": status, "error": error})


@provider(IPlugin, IProcessor)
class BatchResponse(InputOutputProcessor):
    """The per-article results of a batch as one response body, with counts by status."""

    name = "batch-response"
    options = {"input_path": Option(str, "results", "the list of per-article results"),
               "output_path": Option(str, "content", "where to put the response body")}

    def process_input(self, results, baton):
        counts = Counter(str(item.get("status", 200)) for item in results)
        return {"count": len(results), "statuses": dict(sorted(counts.items())), "results": results}
