"""``query-articles``: the stored articles that mention an entity, newest first, a page at a time.

``GET /articles?entity=Apple&label=ORG&source=S&since=T&until=T&limit=N&cursor=C`` answers
``{"count", "articles": [...], "next_cursor"}``. Articles sort by ``published_at`` (``published`` read as a
moment), else by ``ingested_at``, newest first, then by id. ``entity`` is matched on its key
(:func:`pipedingest.article.entity_key`: case folded, runs of whitespace made one space, trimmed), so
``apple``, ``APPLE`` and `` Apple `` find the same articles; ``label`` narrows to that label. ``since``
(inclusive) and ``until`` (exclusive) take the forms ``published`` does (:mod:`pipedingest.dates`).

Pages are cut by a cursor, never an offset: ``next_cursor`` names the last article answered (its sort time and
id), and the next page starts after it, so articles stored while a client walks the pages neither repeat nor
push older ones out of reach. The cursor is opaque to clients; one that does not decode to such a position is
a 400, as is a bad date, a limit out of range, a label the named pools' models do not have, or a label without
an entity.
"""
from __future__ import annotations

import base64
import binascii
import json
import re

from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.article import entity_key, id_problem
from pipedingest.dates import FORMS, parse
from pipedingest.dates import iso_utc as moment_text
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option
from pipedingest.processors.store import STORE, checked_limit, store_failed, store_reference
from pipedingest.web.errors import WebError

#: What a sort time looks like in a cursor (the fixed-width UTC text of :mod:`pipedingest.dates`).
_SORT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
#: A label's shape when no pool says which labels exist.
_LABEL = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
#: The longest entity text a query may name (longer ones are no entity a model found).
MAX_ENTITY_CHARS = 512
#: The option that says which labels a query may name.
POOLS = Option(list, [], "NER pools whose models' labels are the known ones (none: any label of upper-case "
               "letters)", items=str)


class KnownLabels:
    """The labels a query may name: those of the models of the NER pools named (a step's references, taken
    when the configuration loads), else any text of a label's shape."""

    def __init__(self, step, pools: list[str]):
        self.pools = [step.reference(name, wanted="NER pool") for name in pools]

    def known(self) -> set[str] | None:
        """The labels the pools' models have (those of the models loaded so far); None when no pool is named."""
        if not self.pools:
            return None
        known = set()
        for pool in self.pools:
            known.update(pool.value.location.meta.get("labels", {}).get("ner", ()))
        return known

    def check(self, label: str) -> str:
        """*label*, or a WebError 400 naming it (and the known labels, when the pools say which)."""
        known = self.known()
        if (known is not None and label not in known) or (known is None and not _LABEL.fullmatch(label)):
            raise WebError(400, f"unknown label {label[:40]!r}",
                           **({"labels": sorted(known)} if known is not None else {}))
        return label


def encode_cursor(position: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, str]:
    """The ``(sort_at, id)`` a cursor names; ValueError for anything that is not one."""
    try:
        position = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("the cursor does not decode") from None
    if (not isinstance(position, list) or len(position) != 2 or not all(isinstance(p, str) for p in position)
            or not _SORT_TIME.match(position[0]) or id_problem(position[1])):
        raise ValueError("the cursor names no position")
    return position[0], position[1]


@provider(IPlugin, IProcessor)
class QueryArticles(InputOutputProcessor):
    """The stored articles that mention ``entity`` (or all), newest first, with a cursor to the next page."""

    name = "query-articles"
    options = {"store": STORE,
               "input_path": Option(str, "request.args", "the query arguments"),
               "output_path": Option(str, "content", "where to put {count, articles, next_cursor}"),
               "max_limit": Option(int, 100, "the largest limit a client may ask for", minimum=1, maximum=1000),
               "default_limit": Option(int, 20, "the limit when none is asked for", minimum=1, maximum=1000),
               "pools": POOLS}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])
        self.labels = KnownLabels(step, config["pools"])

    def process_input(self, args, baton):
        query = self.parse(args)
        found = self.store.value.query(**query)
        return found.addCallbacks(self._answer, store_failed)

    @staticmethod
    def _answer(found):
        documents, last = found
        return {"count": len(documents), "articles": documents,
                "next_cursor": encode_cursor(last) if last is not None else None}

    def parse(self, args) -> dict:
        """The store query the arguments ask for; WebError 400 naming what is wrong."""
        one = {name: values[-1] for name, values in args.items() if values}
        entity, label = one.get("entity"), one.get("label")
        if label is not None and entity is None:
            raise WebError(400, "label narrows an entity: give entity too")
        key = ""
        if entity is not None:
            if not entity.strip() or len(entity) > MAX_ENTITY_CHARS:
                raise WebError(400, f"entity must be 1 to {MAX_ENTITY_CHARS} characters, not blank")
            if label is not None:
                self.labels.check(label)
            key = entity_key(entity, label)
        limit = checked_limit(one.get("limit", str(self.config["default_limit"])), self.config["max_limit"])
        query = {"key": key, "source": one.get("source"), "limit": limit, "since": None, "until": None,
                 "after": None}
        for name in ("since", "until"):
            if name in one:
                moment = parse(one[name])
                if moment is None:
                    raise WebError(400, f"{name} {one[name][:40]!r} is not a date ({FORMS})")
                query[name] = moment_text(moment)
        if "cursor" in one:
            try:
                query["after"] = decode_cursor(one["cursor"])
            except ValueError as problem:
                raise WebError(400, f"{problem}: start again without a cursor") from None
        return query
