"""An article's Firestore document: the write on its way, its size, the token, and the document read back.

Each document carries ``sort_at`` (:data:`SORT_FIELD`), what queries order it by,
and a private ``_ingest_token`` (:data:`TOKEN_FIELD`) unique to the put (or replace)
that wrote it last, so that a write whose answer was lost can recognise its own
document; readers drop both.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from twisted.internet.defer import Deferred

from pipedingest.store.base import iso_utc, jsonable
from pipedingest.store.firestore.counters import MAX_FIELD_TRANSFORMS, ShardPlan, shard_write_size

#: A private field naming the put that created the document (see the module docstring).
TOKEN_FIELD = "_ingest_token"
#: The text a document sorts by in queries: ``published_at``, else the store's time when it was first stored
#: (fixed-width UTC, as in SQLite's index table); readers drop it.
SORT_FIELD = "sort_at"
#: A private field set on a document whose entity keys were added to a day bucket (see ``counters.py``): a
#: replace takes them off that day again only then, never for a document stored before day buckets existed,
#: or by a store that kept no counters.
DAYS_COUNTED_FIELD = "_days_counted"


def wire_size(value) -> int:
    """An upper bound of *value*'s size once encoded as a Firestore ``Value`` protobuf.

    Per value: a 2-byte tag and a 5-byte length; per map entry: another 2 tags, 2
    lengths and the key.  Loose for tiny values, tight for bodies, which dominate.
    """
    if isinstance(value, str):
        return 7 + len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return 7 + len(value)
    if isinstance(value, dict):
        return 7 + sum(12 + len(str(key).encode("utf-8")) + wire_size(item)
                       for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return 7 + sum(7 + wire_size(item) for item in value)
    return 17  # numbers, booleans, null, timestamps


class Pending:
    """One put (or replace) on its way: what to write, how big it is, and who is waiting.

    ``shards`` holds the article's counts by shard: ``{shard: {(text key, label key): n}}``.
    ``size`` bounds the request bytes of the put in a commit of its own: its article's
    write (``article_size``) and its counts' (see :class:`~.counters.ShardPlan`); sharing a
    commit it needs no more, as its counts join the others' in shard documents.
    """

    __slots__ = ("article_id", "fields", "source", "shards", "token", "article_size", "shard_write_size",
                 "size", "deferred", "created")

    def __init__(self, article_id: str, fields: dict, shards: dict, path_bytes: int,
                 max_transforms: int = MAX_FIELD_TRANSFORMS):
        self.article_id = article_id
        self.fields = fields
        self.source = fields["source"]
        self.shards = shards
        self.token = uuid.uuid4().hex
        # Per write: its document's path, the precondition or merge mask, the
        # server-value transforms; per article: the token; all generously rounded up.
        self.article_size = path_bytes + len(article_id.encode("utf-8")) + 200 + wire_size(fields)
        self.shard_write_size = shard_write_size(path_bytes, self.source)
        alone = ShardPlan(max_transforms)
        alone.add(self)
        self.size = self.article_size + alone.bytes
        self.deferred: Deferred = Deferred()
        self.created: bool | None = None


def sort_text(data: dict) -> str | None:
    """What the stored document *data* sorts by: its ``sort_at``, else (stored before there was one) its
    ``ingested_at`` as fixed-width UTC text; None when it has neither."""
    if isinstance(data.get(SORT_FIELD), str):
        return data[SORT_FIELD]
    ingested_at = data.get("ingested_at")
    return iso_utc(ingested_at) if isinstance(ingested_at, datetime) else None


def stored(snapshot) -> dict:
    """The stored article of a document *snapshot*, as the stores give it (the token left out)."""
    data = snapshot.to_dict() or {}
    data.pop(TOKEN_FIELD, None)
    data.pop(SORT_FIELD, None)
    data.pop(DAYS_COUNTED_FIELD, None)
    return jsonable({"id": snapshot.id, **data})
