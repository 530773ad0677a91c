"""The article: its fields, its id, its word count and the document it is stored as.

Everything that handles articles takes its definitions from here: the validating
processors, the NER pool (which bounds its batches in words), the stores (which
keep the document) and ``ingest-load`` (which counts the words it sent).  The
module imports nothing of Twisted or of the rest of the daemon, so the loader, an
HTTP client only, can use it too.

An article as a client sends it::

    {"id"?, "title"?, "body", "source"?, "url"?, "published"?, "language"?}      all text

``language`` is a language tag (``fr``, ``fr-CA``, ``EN``), kept as its primary subtag in lower case
(``fr``): the value pipelines route on. ``detect-language`` fills it in when the client sends none, and
then adds ``language_confidence`` (0 to 1).

Its stored document adds what extraction found and when it was stored::

    {"id", "title", "source", "url", "published", "published_at", "body", "language", "language_confidence",
     "entities", "entity_counts", "words", "model", "fields", "ingested_at"}

``published_at`` is ``published`` read as a moment (:mod:`pipedingest.dates`: ISO 8601, RFC 2822, the news
corpus' ``2017/2/7``), fixed-width ISO 8601 UTC text that sorts; a ``published`` in none of those forms is
kept as text, without ``published_at``, and the answer carries a ``warnings`` list saying so.

``fields`` is there only when extraction read more than the body (``extract-entities`` ``fields:``): each
entity then names its ``field``, and its ``start``/``end`` index into that field's text.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any, Optional

from pipedingest.dates import published_at
from pipedingest.dates import warning as published_warning

#: The fields a client may send, all text; only ``body`` is required.
INPUT_FIELDS = ("id", "title", "body", "source", "url", "published", "language")
#: What extraction adds: the entities, their count per label, the word count, the model, and (only when
#: more than the body was read) the fields read; ``language`` is the article's, when known.
RESULT_FIELDS = ("entities", "entity_counts", "words", "model", "fields", "language")
#: What the service adds to an article: ``published_at`` (its ``published`` read as a moment,
#: :mod:`pipedingest.dates`) and ``language_confidence`` (``detect-language``, when it stated no language).
DETECTED_FIELDS = ("published_at", "language_confidence")
#: What a store keeps to find articles by entity: every entity's key, alone and with its label
#: (:func:`entity_keys`), for Firestore's ``array-contains`` and SQLite's index table.
INDEX_FIELDS = ("entity_keys",)
#: The fields of a stored document besides ``id`` (and ``ingested_at``, which the store sets).
STORED_FIELDS = ("title", "source", "url", "published", "body") + DETECTED_FIELDS + RESULT_FIELDS + INDEX_FIELDS
#: The text fields extraction may read (``extract-entities`` ``fields:``); the body alone by default.
TEXT_FIELDS = ("title", "body")
DEFAULT_TEXT_FIELDS = ("body",)
#: The source of an article that names none.
DEFAULT_SOURCE = "unknown"
#: Firestore's limit on a document id, applied in every store alike.
MAX_ID_BYTES = 1500
#: The most distinct entities one article may carry, in every store alike; a store refuses
#: an article with more (``TooManyEntities``, HTTP 422) and stores and counts nothing of it.
#: An entity is a text with its label: "Paris" as GPE and as PERSON are two.  The bound
#: keeps one article's entity counters within one Firestore commit (each stored with the
#: article, atomically) and is well above what a real article yields; a 1 MiB document
#: holds some 25,000 of the shortest entities at the very most anyway.
MAX_DISTINCT_ENTITIES = 10_000

_RESERVED_ID = re.compile(r"^__.*__$")
#: A label as a key ends with it (:func:`split_key`): upper case, as the models write labels.
_KEY_LABEL = re.compile(r"[A-Z][A-Z0-9_]*")
#: A language tag as clients send it: a primary subtag of 2 or 3 letters, then optional subtags.
_LANGUAGE_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


class ArticleError(ValueError):
    """The input is not a usable article; ``message`` says why (an HTTP layer answers 400)."""

    def __init__(self, message: str, **detail: Any):
        super().__init__(message)
        self.message = message
        self.detail = detail


class ArticleTooLong(ArticleError):
    """The body is longer than the configured limit (an HTTP layer answers 413)."""

    def __init__(self, chars: int, limit: int):
        super().__init__(f"the article body has {chars} characters; the limit is {limit}", limit_chars=limit)
        self.chars = chars
        self.limit = limit


def count_words(text: str) -> int:
    """The article's word count: runs of non-whitespace.

    Known before any NER runs (the pool bounds its batches and queue with it), the
    same in the daemon and in ``ingest-load``, and what the API reports as ``words``.
    """
    return len(text.split())


def content_id(article: dict) -> str:
    """A stable id from the article's content: the same article always gets the same id."""
    canonical = json.dumps([article.get(key) for key in ("title", "body", "source", "url", "published")],
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def id_problem(article_id: Any) -> Optional[str]:
    """Why *article_id* cannot name a document (in any store), or None when it can."""
    if not isinstance(article_id, str) or not article_id:
        return "must be non-empty text"
    if "/" in article_id:
        return "contains '/'"
    if article_id in (".", ".."):
        return "is '.' or '..'"
    if _RESERVED_ID.match(article_id):
        return "matches the reserved pattern __.*__"
    if len(article_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def _is_unicode(text: str) -> bool:
    """False for text holding lone surrogates, which cannot be encoded, stored or sent to a child."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_article(value: Any, max_chars: Optional[int] = None) -> dict:
    """The article in *value* with its id (given, or :func:`content_id`); else :class:`ArticleError`.

    The id is checked here, before any extraction, so an article that could never be
    stored costs no NER.
    """
    if not isinstance(value, dict):
        raise ArticleError("an article must be a JSON object", expected={"body": "text", "title": "text"})
    unknown = sorted(str(key) for key in set(value) - set(INPUT_FIELDS))
    if unknown:
        raise ArticleError(f"unknown article field(s): {', '.join(unknown)}", allowed=list(INPUT_FIELDS))
    wrong = [key for key in INPUT_FIELDS if key in value and not isinstance(value[key], str)]
    if wrong:
        raise ArticleError(f"article field(s) must be text: {', '.join(wrong)}")
    broken = [key for key in INPUT_FIELDS if key in value and not _is_unicode(value[key])]
    if broken:
        raise ArticleError(f"article field(s) hold invalid Unicode (lone surrogates): {', '.join(broken)}")
    body = value.get("body")
    if body is None or not body.strip():
        raise ArticleError("the article has no body", field="body")
    if max_chars is not None and len(body) > max_chars:
        raise ArticleTooLong(len(body), max_chars)
    article = {key: value[key] for key in INPUT_FIELDS if key in value}
    if "language" in article:
        article["language"] = language_code(article["language"])
    moment = published_at(article["published"]) if "published" in article else None
    if moment is not None:
        article["published_at"] = moment
    if not article.get("id"):
        article["id"] = content_id(article)
    problem = id_problem(article["id"])
    if problem:
        raise ArticleError(f"article id {article['id'][:100]!r} {problem}", field="id")
    return article


def language_code(tag: str) -> str:
    """The primary subtag of a language tag, in lower case (``fr-CA`` → ``fr``); else :class:`ArticleError`."""
    match = _LANGUAGE_TAG.match(tag.strip())
    if match is None:
        raise ArticleError(f"language {tag[:40]!r} is not a language tag such as 'en' or 'fr-CA'", field="language")
    return match.group(1).lower()


def entity_key(text: str, label: Optional[str] = None) -> str:
    """The key an entity is found by: its text case-folded, its runs of whitespace made one space, trimmed;
    then ``|`` and its label when one is given (``"Tim  Cook"`` → ``tim cook``, ``tim cook|PERSON``).
    Labels are kept as the model writes them (upper case)."""
    key = " ".join(text.casefold().split())
    return f"{key}|{label}" if label else key


def entity_keys(entities) -> list[str]:
    """The keys a stored article is found by: each entity's :func:`entity_key`, alone and with its label."""
    keys = set()
    for entity in entities or ():
        if isinstance(entity, dict) and isinstance(entity.get("text"), str) and entity["text"].strip():
            keys.add(entity_key(entity["text"]))
            if isinstance(entity.get("label"), str) and entity["label"]:
                keys.add(entity_key(entity["text"], entity["label"]))
    return sorted(keys)


def document_keys(document: dict) -> list[str]:
    """The keys a stored *document* is found and counted by: its ``entity_keys``, else (a document stored
    before they were kept, or written without them) its entities' :func:`entity_keys`."""
    return document.get("entity_keys") or entity_keys(document.get("entities"))


def split_key(key: str) -> tuple[str, Optional[str]]:
    """A key's text and label (``"tim cook|PERSON"`` → ``("tim cook", "PERSON")``), the label None when the key
    has none. The label is what follows the last ``|`` when that has a label's shape (upper case); key texts
    are case-folded, so a text that holds ``|`` is never taken for a label (``"a|b"`` → ``("a|b", None)``)."""
    text, bar, label = key.rpartition("|")
    if bar and _KEY_LABEL.fullmatch(label):
        return text, label
    return key, None


def entity_counts(entities: list) -> dict:
    """How many entities of each label, labels in alphabetical order."""
    return dict(sorted(Counter(entity["label"] for entity in entities).items()))


def extraction_result(article: dict, entities: list, model: dict, fields=DEFAULT_TEXT_FIELDS) -> dict:
    """What the API answers for an article: its id, entities, counts per label, words and model.

    ``words`` counts the words of the *fields* read. ``fields`` and ``language`` are in the answer only
    when extraction read more than the body, and when the article's language is known.
    """
    result = {"id": article["id"], "entities": entities, "entity_counts": entity_counts(entities),
              "model": model, "words": sum(count_words(article.get(name) or "") for name in fields)}
    if tuple(fields) != DEFAULT_TEXT_FIELDS:
        result["fields"] = list(fields)
    if article.get("language"):
        result["language"] = article["language"]
    return with_warnings(result, article)


def with_warnings(result: dict, article: dict) -> dict:
    """*result*, with ``warnings`` when something the client sent was kept but could not be used: a
    ``published`` that is not a date (the article then sorts by when it was ingested)."""
    published = article.get("published")
    if published and published_at(published) is None:
        result["warnings"] = [published_warning(published)]
    return result


def stored_document(article: dict, result: dict, default_source: str = DEFAULT_SOURCE) -> dict:
    """The document a store keeps for *article* and its extraction *result* (without ``ingested_at``)."""
    document = {"id": article["id"]}
    document.update({key: article[key] for key in STORED_FIELDS if key in article})
    document.update({key: result[key] for key in RESULT_FIELDS if key in result})
    document["entity_keys"] = entity_keys(document.get("entities"))
    if not document.get("source"):
        document["source"] = default_source
    return document


def stored_result(document: dict) -> dict:
    """What the API answers for an article already stored, from its stored *document*."""
    result = {"id": document["id"], **{key: document[key] for key in RESULT_FIELDS if key in document}}
    return with_warnings(result, document)


def check_document(document: Any) -> dict:
    """The stored fields of *document* (without ``id``); :class:`ArticleError` when its shape is wrong.

    Unknown keys are refused rather than dropped, so that nothing a caller sends is
    lost without a word; missing optional fields are simply absent.
    """
    if not isinstance(document, dict):
        raise ArticleError(f"a document must be a dict, not {type(document).__name__}")
    problem = id_problem(document.get("id"))
    if problem:
        raise ArticleError(f"article id {document.get('id')!r:.100} {problem}")
    unknown = sorted(str(key) for key in set(document) - set(STORED_FIELDS) - {"id"})
    if unknown:
        raise ArticleError(f"article {document['id']!r} has keys the store does not keep: {', '.join(unknown)}; "
                           f"allowed: id, {', '.join(STORED_FIELDS)}")
    source = document.get("source")
    if not isinstance(source, str) or not source:
        raise ArticleError(f"article {document['id']!r} needs a non-empty string 'source'")
    return {key: document[key] for key in STORED_FIELDS if key in document}
