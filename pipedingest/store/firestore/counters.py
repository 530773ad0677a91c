"""The per-source entity counters, in sharded documents.

**Entity counters** live in shard documents
``{counters_collection}/{source}/entity_shards/s{S}-{shard}-{sub}`` holding one map,
``counts: {entity text: {label: n}}``.  An entity's shard is a hash of its text
among ``counter_shards`` (S); its sub-shard is drawn at random among
``counter_subshards`` (R) for each commit attempt, so that a popular entity's
increments spread over R documents (Firestore sustains about one write per
second on one document).  A commit carries the counts of all its articles summed
per shard document: one write per document, one field ``Increment`` per text and
label, at most ``max_field_transforms`` (Firestore: 500) of them on one document;
a shard with more distinct keys in one commit takes the next sub-shards too.  The
batch cutter counts these writes against ``max_batch_writes``.
``entity_counters(source)`` sums every document in the source's ``entity_shards``,
whatever its S, so S and R may be changed at any time: documents of another S
simply stop growing.  Map keys are the texts and labels themselves (the client
quotes them in field paths), except that one matching ``__.*__`` (reserved) or
starting with ``~`` gets a leading ``~``.  A replace that nets a shard's count to 0
may leave +n and -n in two sub-shards: ``entity_counters`` leaves out sums of 0.

A shard document grows with the distinct keys ever counted in it, and Firestore
refuses one over 1 MiB, or over 40,000 index entries unless ``counts`` is exempt
from indexing (``conf/firestore.indexes.json``): a commit touching a full one
fails, and so do its articles.  A key takes about 25 to 50 bytes (and, indexed,
four index entries), so a document holds some 10,000 keys when indexed and
20,000 or more when exempt; a source may count S times that of keys that are
written often, and up to R times more of rare ones, which spread over the
sub-shards.  ``entity_counters`` logs a warning when it reads a shard document
over half the size limit: raise ``counter_shards`` then.

**Day buckets** (for the reads of ``days.py``) go in the same commits: an article
adds 1 to each of its entity keys (``entity_keys``, clipped as texts are) on the day
it sorts by (``sort_at``), in ``{counters_collection}/{source}/entity_day_shards/
{day}-{sub}``: ``{day, counts: {key: n}, updated_at}``.  The sub-shard is the
commit's (R of them), so a busy day's increments spread as a popular entity's do;
``updated_at`` (a server timestamp, one more transform per document) tells the
roll-up which days changed.  A :class:`ShardPlan` plans them beside the entity
shards, a :class:`DayShard` being their shard.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import NamedTuple
from urllib.parse import quote

from google.cloud.firestore_v1 import SERVER_TIMESTAMP, Increment
from twisted.logger import Logger

from pipedingest.article import document_keys
from pipedingest.store.base import MAX_COUNTED_LABEL_BYTES, MAX_COUNTED_TEXT_BYTES, counted_as, value_size

log = Logger()

#: The subcollection of a source's counter document that holds its shard documents.
SHARDS_COLLECTION = "entity_shards"
#: The subcollection of a source's counter document that holds its day-bucket shards.
DAY_SHARDS_COLLECTION = "entity_day_shards"
#: The longest entity key counted in a day bucket (text and label, as the entity shards clip them).
MAX_COUNTED_KEY_BYTES = MAX_COUNTED_TEXT_BYTES + 1 + MAX_COUNTED_LABEL_BYTES
#: Firestore's limit on field transforms applied to one document in one commit.
MAX_FIELD_TRANSFORMS = 500
#: The map field of a shard document that holds its counts (exempt from indexing in production).
COUNTS_FIELD = "counts"

_RESERVED_FIELD = re.compile(r"^__.*__$", re.DOTALL)


def document_id(text: str) -> str:
    """A valid Firestore document id for *text* (a source or an entity), readable when possible."""
    escaped = quote(text, safe=" !$&'()*+,;=:@-._~")
    if escaped in ("", ".", ".."):
        escaped = escaped.replace(".", "%2E") or "%00"
    if escaped.startswith("__") and escaped.endswith("__"):
        escaped = "%5F" + escaped[1:]
    return escaped[:1500]


def field_name(text: str) -> str:
    """*text* (an entity text or label) as a map key Firestore accepts; see :func:`text_of_field`.

    Names matching ``__.*__`` are reserved, so they, and names starting with ``~``,
    get a leading ``~``; anything else (dots, backquotes, slashes) is kept as it is,
    because the client quotes each part of a field path.
    """
    if text.startswith("~") or _RESERVED_FIELD.match(text):
        return "~" + text
    return text


def text_of_field(name: str) -> str:
    """The text that :func:`field_name` made *name* of."""
    return name[1:] if name.startswith("~") else name


def shard_of(text: str, shards: int) -> int:
    """The shard of an entity text among *shards*: stable across processes and releases."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_write_size(path_bytes: int, source: str) -> int:
    """An upper bound of one shard-document write of *source* (entity or day shard), its increments aside."""
    return path_bytes + len(document_id(source).encode("utf-8")) + len(DAY_SHARDS_COLLECTION) + 120


class DayShard(NamedTuple):
    """The shard of a day bucket in a :class:`ShardPlan` (entity shards are numbers)."""

    day: str


def counted_key(key: str) -> str:
    """An entity key as day buckets count it: clipped to ``MAX_COUNTED_KEY_BYTES`` (see ``counted_as``)."""
    return counted_as(key, MAX_COUNTED_KEY_BYTES)


def _documents_for(keys: int, max_transforms: int) -> int:
    """Shard documents (writes) that *keys* distinct counted keys of one shard need in one commit."""
    return math.ceil(keys / max_transforms)


def _key_size(key: tuple[str, str]) -> int:
    """An upper bound of one increment's encoded size: its field path (``counts``, then the text and label,
    each quoted in backquotes, a backquote or backslash escaped: at most twice its bytes) and the transform
    around it (about 20 bytes; 27 measured for a 10-byte key alone)."""
    text, label = key
    return 2 * len(text.encode("utf-8")) + 2 * len(label.encode("utf-8")) + 40


class ShardPlan:
    """The counter writes of one commit: its articles' counts summed per shard document.

    A shard's distinct keys go ``max_transforms`` to a document (Firestore applies
    at most 500 field transforms to one document per commit), so a shard needs one
    write per started ``max_transforms`` keys, however many articles share them;
    a key shared by several articles is sent once.  An item added is anything with
    ``source``, ``shards`` (``{shard: {(text key, label key): n}}``) and
    ``shard_write_size``: a put on its way (``documents.Pending``).
    """

    def __init__(self, max_transforms: int):
        self.max_transforms = max_transforms
        self.counts: dict[tuple[str, int], dict[tuple[str, str], int]] = {}
        #: Shard-document writes the commit needs so far, and an upper bound of their bytes.
        self.writes = 0
        self.bytes = 0

    def cost(self, item) -> tuple[int, int]:
        """The shard-document writes and bytes that adding *item* would add."""
        writes = size = 0
        for shard, keys in item.shards.items():
            counts = self.counts.get((item.source, shard), {})
            new = [key for key in keys if key not in counts]
            if new:
                limit = self.limit(shard)
                documents = _documents_for(len(counts) + len(new), limit) - _documents_for(len(counts), limit)
                writes += documents
                size += documents * item.shard_write_size + sum(_key_size(key) for key in new)
        return writes, size

    def add(self, item) -> None:
        self.add_counts(item.source, item.shards, item.shard_write_size)

    def add_counts(self, source: str, shards: dict, shard_write_size: int) -> None:
        """Add *source*'s ``{shard: {(text key, label key): n}}``; a write of its costs *shard_write_size*."""
        for shard, keys in shards.items():
            counts = self.counts.setdefault((source, shard), {})
            limit = self.limit(shard)
            before = _documents_for(len(counts), limit)
            for key, n in keys.items():
                if key not in counts:
                    counts[key] = 0
                    self.bytes += _key_size(key)
                counts[key] += n
            documents = _documents_for(len(counts), limit) - before
            self.writes += documents
            self.bytes += documents * shard_write_size

    def limit(self, shard) -> int:
        """The keys one document of *shard* takes in a commit: a day shard's ``updated_at`` is a transform too."""
        return self.max_transforms - 1 if isinstance(shard, DayShard) else self.max_transforms

    @property
    def day_writes(self) -> int:
        """The day-bucket documents among the plan's writes (what the reads cost the commits)."""
        return sum(_documents_for(len(keys), self.limit(shard))
                   for (_, shard), keys in self.counts.items() if isinstance(shard, DayShard))

    @property
    def increments(self) -> int:
        """The field increments the plan writes."""
        return sum(len(keys) for keys in self.counts.values())

    def documents(self, subshards: int, first_sub: int):
        """``(source, shard, sub-shard, {(text key, label key): n})`` for each document to write.

        A shard's first ``max_transforms`` keys go to sub-shard *first_sub*, the next
        ones to the following sub-shards (past R only when one commit has more than
        R × ``max_transforms`` keys of one shard), so no document gets two writes.
        """
        for (source, shard), counts in self.counts.items():
            keys = list(counts.items())
            limit = self.limit(shard)
            for chunk, start in enumerate(range(0, len(keys), limit)):
                sub = (first_sub + chunk) % subshards if chunk < subshards else chunk
                yield source, shard, sub, dict(keys[start:start + limit])


class CounterShards:
    """Where and how a store keeps its counters: the collection, S, R and the transforms per document."""

    def __init__(self, collection: str, shards: int, subshards: int, max_transforms: int):
        self.collection = collection
        self.shards = shards
        self.subshards = subshards
        self.max_transforms = max_transforms

    def plan(self) -> ShardPlan:
        return ShardPlan(self.max_transforms)

    def by_shard(self, tally: dict) -> dict[int, dict[tuple[str, str], int]]:
        """An :func:`entity_tally` by shard, keyed by map keys: ``{shard: {(text key, label key): n}}``."""
        shards: dict[int, dict[tuple[str, str], int]] = {}
        for text, labels in tally.items():
            keys = shards.setdefault(shard_of(text, self.shards), {})
            for label, n in labels.items():
                keys[field_name(text), field_name(label)] = n
        return shards

    def for_article(self, fields: dict, tally: dict, day: str) -> dict:
        """The shards a new article's counts go to: its :func:`entity_tally` by entity shard, and, when the
        store counts (*tally* is then not empty unless the article has no entity), its keys' bucket of *day*."""
        shards: dict = self.by_shard(tally)
        if tally:
            shards.update(self.by_day(day, dict.fromkeys(document_keys(fields), 1)))
        return shards

    @staticmethod
    def by_day(day: str, counts: dict[str, int]) -> dict[DayShard, dict[tuple[str, str], int]]:
        """*counts* ``{entity key: n}`` on *day*, as a plan's shards: ``{DayShard: {(key, ""): n}}``."""
        bucket: dict[tuple[str, str], int] = {}
        for key, n in counts.items():
            counted = (field_name(counted_key(key)), "")
            bucket[counted] = bucket.get(counted, 0) + n
        return {DayShard(day): {key: n for key, n in bucket.items() if n}}

    def of_source(self, client, source: str, collection: str = SHARDS_COLLECTION):
        """The collection of *source*'s shard documents (or of its day shards)."""
        return client.collection(self.collection).document(document_id(source)).collection(collection)

    def add_writes(self, client, writes, plan: ShardPlan, first_sub: int) -> None:
        """The shard documents' increments of *plan*, into *writes* (a batch or a transaction)."""
        for source, shard, sub, counts in plan.documents(self.subshards, first_sub):
            if isinstance(shard, DayShard):
                writes.set(self.of_source(client, source, DAY_SHARDS_COLLECTION).document(f"{shard.day}-{sub}"),
                           {"day": shard.day, "updated_at": SERVER_TIMESTAMP,
                            COUNTS_FIELD: {key: Increment(n) for (key, _), n in counts.items()}}, merge=True)
                continue
            nested: dict[str, dict[str, Increment]] = {}
            for (text, label), n in counts.items():
                nested.setdefault(text, {})[label] = Increment(n)
            writes.set(self.of_source(client, source).document(f"s{self.shards}-{shard}-{sub}"),
                       {COUNTS_FIELD: nested}, merge=True)

    def read(self, client, source: str, rpc_timeout: float, max_document_bytes: int) -> dict:
        """The sum of every shard document of *source* (of any S and R).  Blocks."""
        counters: dict[str, dict] = {}
        for snapshot in self.of_source(client, source).stream(retry=None, timeout=rpc_timeout):
            data = snapshot.to_dict() or {}
            size = value_size(data)
            if size > max_document_bytes // 2:
                log.warn("entity shard {path} holds {size} bytes, over half of the {limit}-byte limit; "
                         "raise counter_shards (now {shards})", path=snapshot.reference.path, size=size,
                         limit=max_document_bytes, shards=self.shards)
            for name, labels in data.get(COUNTS_FIELD, {}).items():
                counter = counters.setdefault(text_of_field(name), {"count": 0, "labels": {}})
                for label_name, n in labels.items():
                    label = text_of_field(label_name)
                    counter["labels"][label] = counter["labels"].get(label, 0) + n
                    counter["count"] += n
        for text, counter in list(counters.items()):  # a replace may leave +n and -n in two sub-shards
            counter["labels"] = {label: n for label, n in counter["labels"].items() if n}
            if not counter["labels"]:
                del counters[text]
        return counters
