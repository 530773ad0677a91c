"""Processors that keep articles and read them back: ``store-article``, ``find-stored-article``,
``fetch-article``, ``list-articles``.

A model upgrade: ``find-stored-article`` with ``reextract: when-model-differs`` lets an article through to
extraction again when its stored ``model`` (name or version) is not its pool's, and marks it stale
(``stale_path``); ``store-article`` then replaces the stored document with ``replace()``, which corrects the
entity counters in the same commit, once, however many re-posts of that id race (the first replaces, the
others find the new model already there).

They name a store declared under ``stores:``; the store's errors become HTTP
statuses here (the stores know nothing of HTTP).
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.article import DEFAULT_SOURCE, stored_document, stored_result
from pipedingest.engine.baton import get_path, set_path
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option, Processor
from pipedingest.providers.ner import SINGLE_POOL
from pipedingest.store.base import (
    DocumentTooLarge,
    IndexMissing,
    InvalidArticle,
    PermanentStoreError,
    QueryUnsupported,
    StoreUnavailable,
    TooManyEntities,
)
from pipedingest.web.errors import WebError

STORE = Option(str, "articles", "the store's name under 'stores:'")
#: The values of ``find-stored-article``'s ``reextract``.
NEVER, WHEN_MODEL_DIFFERS = "never", "when-model-differs"
REEXTRACT = (NEVER, WHEN_MODEL_DIFFERS)


def store_reference(step, name: str):
    return step.reference(f"store.{name}", "store", "store")


def store_failed(failure):
    """The HTTP answer for a store failure."""
    if failure.check(IndexMissing):  # the body names the index too, for scripts that deploy what is missing
        missing = failure.value
        index = {"collection": missing.collection, "fields": missing.fields} if missing.fields else None
        raise WebError(501, missing.message, index=index, create_link=missing.link)
    if failure.check(QueryUnsupported):
        raise WebError(501, failure.value.message)
    if failure.check(DocumentTooLarge):
        raise WebError(413, failure.value.message, limit_bytes=failure.value.limit)
    if failure.check(TooManyEntities):
        raise WebError(422, failure.value.message, limit_entities=failure.value.limit)
    if failure.check(InvalidArticle):
        raise WebError(400, failure.value.message)
    if failure.check(StoreUnavailable):
        raise WebError(503, f"the store is unavailable: {failure.value.message}", {"retry-after": "5"})
    if failure.check(PermanentStoreError):
        raise WebError(502, f"the store refused the article: {failure.value.message}")
    return failure


def checked_limit(raw: str, most: int) -> int:
    """A query's ``limit``: a whole number from 1 to *most*, else a WebError 400 that says so."""
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise WebError(400, f"limit must be a whole number from 1 to {most}", given=raw[:20])
    return int(raw)


@provider(IPlugin, IProcessor)
class StoreArticle(Processor):
    """Keep an article with its entities; 201 when it is new, 200 when that id was already stored.

    Idempotent: posting the same article again stores nothing twice and counts nothing twice.
    """

    name = "store-article"
    options = {
        "store": STORE,
        "article_path": Option(str, "article", "where the article is"),
        "result_path": Option(str, "result", "where the entities are"),
        "status_path": Option(str, "status", "where to put 201 (created) or 200 (already stored)"),
        "output_path": Option(str, "stored", "where to put true (created) or false"),
        "default_source": Option(str, DEFAULT_SOURCE, "the source of an article that names none"),
        "stale_path": Option(str, "stale", "where find-stored-article marks a stored article to replace"),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])

    def process(self, baton):
        article = get_path(baton, self.config["article_path"])
        result = get_path(baton, self.config["result_path"])
        document = stored_document(article, result, self.config["default_source"])
        if get_path(baton, self.config["stale_path"], None):
            return self.store.value.replace(document).addCallbacks(self._replaced, store_failed,
                                                                   callbackArgs=(baton,))
        return self.store.value.put(document).addCallbacks(self._stored, store_failed, callbackArgs=(baton,))

    def _stored(self, created: bool, baton):
        baton = set_path(baton, self.config["output_path"], created)
        return set_path(baton, self.config["status_path"], 201 if created else 200)

    def _replaced(self, outcome: str, baton):
        return self._stored(outcome == "created", baton)


@provider(IPlugin, IProcessor)
class FindStoredArticle(Processor):
    """An article whose id is already stored: what was stored for it, and 200, without extracting it again.

    A loader re-run after a crash then costs one read per article, not one extraction. Sets
    ``output_path`` to true when found (with ``result_path`` and ``status_path`` as ``store-article`` would
    have set them for an article already stored), false otherwise; a pipeline goes on to extract and store
    only when it is false (``stop: {decider: "baton: baton['found']"}``). As with ``store-article``, the
    article stored first wins: a second one with the same id and another body is not extracted.

    ``reextract: when-model-differs`` (with ``pool``, the pool that would extract it): a stored article whose
    model name or version differs from the pool's is treated as not found, so it is extracted again, and
    ``stale_path`` is set to its stored model, so that ``store-article`` replaces it. ``never`` (the
    default): what is stored is answered, whatever model found it.
    """

    name = "find-stored-article"
    options = {
        "store": STORE,
        "article_path": Option(str, "article", "where the article is"),
        "result_path": Option(str, "result", "where to put the stored entities (when found)"),
        "status_path": Option(str, "status", "where to put 200 (when found)"),
        "output_path": Option(str, "found", "where to put true (already stored) or false"),
        "reextract": Option(str, NEVER, "never, or when-model-differs: extract again what an older model found",
                            choices=REEXTRACT),
        "pool": Option(str, SINGLE_POOL, "with reextract: the NER pool whose model is the current one"),
        "stale_path": Option(str, "stale", "where to put the stored model of an article to extract again"),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])
        self.pool = None
        if config["reextract"] != NEVER:
            self.pool = step.reference(config["pool"], wanted="NER pool")

    def process(self, baton):
        article = get_path(baton, self.config["article_path"])
        return self.store.value.get(article["id"]).addCallbacks(self._found, store_failed, callbackArgs=(baton,))

    def _found(self, document, baton):
        if document is None:
            return set_path(baton, self.config["output_path"], False)
        if self.pool is not None and model_differs(document.get("model"), self.pool.value.model):
            baton = set_path(baton, self.config["stale_path"], document.get("model") or {})
            return set_path(baton, self.config["output_path"], False)
        baton = set_path(baton, self.config["result_path"], stored_result(document))
        baton = set_path(baton, self.config["status_path"], 200)
        return set_path(baton, self.config["output_path"], True)


def model_differs(stored, current) -> bool:
    """Whether a document stored by model *stored* (``{name, version}``) is stale for the pool's *current*
    model; never while the pool has not said which model it runs (no child has loaded it yet)."""
    if not current:
        return False
    if not isinstance(stored, dict):
        return True
    return (stored.get("name"), stored.get("version")) != (current.get("name"), current.get("version"))


@provider(IPlugin, IProcessor)
class FetchArticle(InputOutputProcessor):
    """The stored document of an article id; 404 when there is none."""

    name = "fetch-article"
    options = {"store": STORE,
               "input_path": Option(str, "request.path_params.id", "where the article id is"),
               "output_path": Option(str, "content", "where to put the document")}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])

    def process_input(self, article_id, baton):
        return self.store.value.get(article_id).addCallbacks(self._found, store_failed, callbackArgs=(article_id,))

    @staticmethod
    def _found(document, article_id):
        if document is None:
            raise WebError(404, f"no article with id {article_id!r}")
        return document


@provider(IPlugin, IProcessor)
class ListArticles(InputOutputProcessor):
    """The most recently stored articles, newest first: ``?source=S&limit=N``."""

    name = "list-articles"
    options = {"store": STORE,
               "input_path": Option(str, "request.args", "the query arguments"),
               "output_path": Option(str, "content", "where to put {articles, count}"),
               "max_limit": Option(int, 100, "the largest limit a client may ask for", minimum=1)}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])

    def process_input(self, args, baton):
        source = (args.get("source") or [None])[0]
        limit = checked_limit((args.get("limit") or ["20"])[0], self.config["max_limit"])
        listed = self.store.value.recent(source=source, limit=limit)
        return listed.addCallbacks(lambda articles: {"count": len(articles), "articles": articles}, store_failed)
