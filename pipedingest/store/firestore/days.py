"""Day buckets for the reads: rolled up from their shards on a tick, then read one document per day.

Commits add an article's entity keys to a *day shard* (``counters.py``): R documents
per source and day, so that a busy day, like a popular entity, is never one hot
document.  Reading R shards per day would make a 30-day top-N cost 30 × R billed
reads, so a tick (:class:`DayRollup`) sums them into one *rolled* document per
source and day, and those of every source into one per day:

* ``{counters_collection}/{source}/entity_days/{day}``: ``{day, source_id, counts, through}``
* ``entity_days/{counters_collection}-{day}`` (top level): ``{day, counts, through}``, every source summed

A top-N over *D* days then reads *D* documents, and a timeline *D* documents (only
its key's field of each).  **Which days changed**: each day shard carries
``updated_at``, a server timestamp; the tick asks for the shards updated after its
watermark (a collection-group query), re-sums each (source, day) found from its
shards, and moves the watermark to the newest ``updated_at`` seen.  Firestore reads
are strongly consistent (a query sees every commit up to its read time, which is at
least that newest ``updated_at``), so a commit not yet seen has a later timestamp and
is found by the next tick.  A roll-up *recomputes* a sum, it never adds to one, so doing it
twice, or in several daemons at once, is harmless: a rolled document records the
newest ``updated_at`` (``through``) of the shards it summed, and a transaction keeps
an older sum from overwriting a newer one.  The watermark is kept in
``entity_days/~rolled-{counters_collection}`` so that a restarted daemon goes on where the last tick
ended.  Collection-group queries span the database: results under another store's counters collection
are left alone, so two stores may count in one database.

Writes: one day-shard document per source and day in each commit (an increment per
key), and per tick two documents per day that changed (its source's and the total).
Limits: a rolled document holds every key counted that day, each once (about 25 to
50 bytes), so a day of one source may count some 20,000 distinct keys before the
1 MiB limit; ``counts`` is exempt from indexing (``conf/firestore.indexes.json``).
"""
from __future__ import annotations

from collections import Counter

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath
from twisted.application.service import Service
from twisted.internet.defer import DeferredLock
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pipedingest.article import split_key
from pipedingest.store.base import iso_utc, value_size
from pipedingest.store.firestore.counters import (
    COUNTS_FIELD,
    DAY_SHARDS_COLLECTION,
    counted_key,
    document_id,
    field_name,
    text_of_field,
)

log = Logger()

#: Where the rolled documents are: each source's subcollection, and the top-level total of every source.
DAYS_COLLECTION = "entity_days"
#: The document (in the top-level ``entity_days``) that keeps the roll-up's watermark.
WATERMARK_ID = "~rolled"


class DayCounts:
    """The thread side: rolling day shards up, and reading rolled documents.  Every method blocks.

    :param collection: the counters' top collection (``sources``).
    :param rpc_timeout: seconds one call may take.
    :param max_document_bytes: a rolled document over half of it is logged (the day counts too many keys).
    """

    def __init__(self, collection: str, rpc_timeout: float, max_document_bytes: int):
        self.collection = collection
        self.rpc_timeout = rpc_timeout
        self.max_document_bytes = max_document_bytes

    def _of_source(self, client, source_id: str):
        return client.collection(self.collection).document(source_id)

    def _rolled(self, client, source: str | None, day: str):
        if source is None:
            return self._total(client, day)
        return self._of_source(client, document_id(source)).collection(DAYS_COLLECTION).document(day)

    def _total(self, client, day: str):
        """The day's total of every source of this store (named after its counters' collection, so that two
        stores counting in one database keep theirs apart)."""
        return client.collection(DAYS_COLLECTION).document(f"{self.collection}-{day}")

    def _watermark(self, client):
        return client.collection(DAYS_COLLECTION).document(f"{WATERMARK_ID}-{self.collection}")

    def _ours(self, source) -> bool:
        """Is *source* (a counters document, found by a collection-group query) one of this store's?"""
        return source is not None and source.parent.id == self.collection

    # -- the roll-up -----------------------------------------------------------------------------------

    def watermark(self, client):
        """The roll-up's watermark kept by the last tick of any daemon, or None (roll everything up)."""
        snapshot = self._watermark(client).get(retry=None, timeout=self.rpc_timeout)
        return (snapshot.to_dict() or {}).get("through") if snapshot.exists else None

    def roll_up(self, client, since) -> tuple:
        """Re-sum every (source, day) whose shards were updated after *since* (None: all of them).

        Returns ``(through, days rolled, reads, writes)``: *through* is the new watermark (the newest
        ``updated_at`` seen, else *since*).
        """
        query = client.collection_group(DAY_SHARDS_COLLECTION)
        if since is not None:
            query = query.where(filter=FieldFilter("updated_at", ">", since))
        changed: set[tuple[str, str]] = set()
        through, reads, writes = since, 0, 0
        for snapshot in query.select(["day", "updated_at"]).stream(retry=None, timeout=self.rpc_timeout):
            reads += 1
            data = snapshot.to_dict() or {}
            source = snapshot.reference.parent.parent
            if not self._ours(source) or not isinstance(data.get("day"), str):
                continue  # another store's counters (collection-group queries span the database)
            changed.add((source.id, data["day"]))
            if data.get("updated_at") is not None and (through is None or data["updated_at"] > through):
                through = data["updated_at"]
        for source_id, day in sorted(changed):
            read, written = self._roll_source(client, source_id, day)
            reads, writes = reads + read, writes + written
        for day in sorted({day for _, day in changed}):
            read, written = self._roll_total(client, day)
            reads, writes = reads + read, writes + written
        if through is not None and through != since:
            self._watermark(client).set({"through": through}, retry=None, timeout=self.rpc_timeout)
            writes += 1
        return through, len(changed), reads, writes

    def _roll_source(self, client, source_id: str, day: str) -> tuple[int, int]:
        """Sum the day shards of one source and day into its rolled document; ``(reads, writes)``."""
        shards = (self._of_source(client, source_id).collection(DAY_SHARDS_COLLECTION)
                  .where(filter=FieldFilter("day", "==", day)))
        counts: Counter = Counter()
        version, reads = None, 0
        for snapshot in shards.stream(retry=None, timeout=self.rpc_timeout):
            reads += 1
            data = snapshot.to_dict() or {}
            counts.update(data.get(COUNTS_FIELD) or {})
            if data.get("updated_at") is not None and (version is None or data["updated_at"] > version):
                version = data["updated_at"]
        rolled = self._of_source(client, source_id).collection(DAYS_COLLECTION).document(day)
        document = {"day": day, "source_id": source_id, "through": version,
                    COUNTS_FIELD: {name: n for name, n in counts.items() if n > 0}}
        self._warn_if_large(rolled, document)

        @firestore.transactional
        def write(transaction) -> bool:
            stored = rolled.get(field_paths=["through"], transaction=transaction, retry=None,
                                timeout=self.rpc_timeout)
            before = (stored.to_dict() or {}).get("through") if stored.exists else None
            if before is not None and version is not None and before >= version:
                return False  # another roll-up already summed these shards, or newer ones
            transaction.set(rolled, document)
            return True

        return reads + 1, int(write(client.transaction()))

    def _roll_total(self, client, day: str) -> tuple[int, int]:
        """Sum the rolled documents of every source for *day* into the day's total; ``(reads, writes)``."""
        total = self._total(client, day)
        sources = client.collection_group(DAYS_COLLECTION).where(filter=FieldFilter("day", "==", day))

        @firestore.transactional
        def write(transaction) -> int:
            counts: Counter = Counter()
            through, reads = None, 0
            for snapshot in transaction.get(sources, retry=None, timeout=self.rpc_timeout):
                reads += 1
                data = snapshot.to_dict() or {}
                if "source_id" not in data or not self._ours(snapshot.reference.parent.parent):
                    continue  # a total, or another store's day
                counts.update(data.get(COUNTS_FIELD) or {})
                if data.get("through") is not None and (through is None or data["through"] > through):
                    through = data["through"]
            document = {"day": day, "through": through,
                        COUNTS_FIELD: {name: n for name, n in counts.items() if n > 0}}
            self._warn_if_large(total, document)
            transaction.set(total, document)
            return reads

        return write(client.transaction()), 1

    def _warn_if_large(self, reference, document: dict) -> None:
        size = value_size(document.get(COUNTS_FIELD, {}))
        if size > self.max_document_bytes // 2:
            log.warn("the day bucket {path} holds {size} bytes of counts, over half of the {limit}-byte "
                     "limit", path=reference.path, size=size, limit=self.max_document_bytes)

    # -- reads -----------------------------------------------------------------------------------------

    def top(self, client, source: str, days: list[str], label: str | None, limit: int) -> tuple[list, int]:
        """The labelled keys of *source* counted most over *days*: ``([{"key", "count"}], reads)``."""
        totals: Counter = Counter()
        references = [self._rolled(client, source, day) for day in days]
        for snapshot in client.get_all(references, field_paths=[COUNTS_FIELD], retry=None,
                                       timeout=self.rpc_timeout):
            for name, n in ((snapshot.to_dict() or {}).get(COUNTS_FIELD) or {}).items():
                key = text_of_field(name)
                keyed_label = split_key(key)[1]
                if keyed_label is not None and (label is None or keyed_label == label):
                    totals[key] += n
        ranked = sorted((item for item in totals.items() if item[1] > 0), key=lambda item: (-item[1], item[0]))
        return [{"key": key, "count": n} for key, n in ranked[:limit]], len(references)

    def timeline(self, client, key: str, source: str | None, days: list[str]) -> tuple[dict, int]:
        """Articles counted under *key* per day of *days*, of *source* or all: ``({day: n > 0}, reads)``."""
        name = field_name(counted_key(key))
        path = FieldPath(COUNTS_FIELD, name).to_api_repr()
        references = [self._rolled(client, source, day) for day in days]
        found = {}
        for snapshot in client.get_all(references, field_paths=[path, "day"], retry=None,
                                       timeout=self.rpc_timeout):
            data = snapshot.to_dict() or {}
            n = (data.get(COUNTS_FIELD) or {}).get(name, 0)
            if n > 0:
                found[data["day"]] = n
        return found, len(references)


class DayRollup(Service):
    """The reactor side: a tick every *interval* seconds that rolls the changed days up on the store's pool.

    The first tick, *interval* after the start, begins at the watermark kept in Firestore.  Ticks (and
    :meth:`tick` called directly) take turns, so one process never rolls up twice at once.  A tick that
    fails is logged and the next one starts from the same watermark.  Stopping waits for the tick in
    progress.

    :param counts: the :class:`DayCounts` that does the work.
    :param client: returns the store's client (called in a pool thread).
    :param in_thread: runs a function on the store's pool (a Deferred).
    :param clock: IReactorTime of the tick.
    """

    def __init__(self, counts: DayCounts, client, in_thread, interval: float, clock):
        self.counts = counts
        self.interval = interval
        self.clock = clock
        self._client = client
        self._in_thread = in_thread
        self._turns = DeferredLock()
        self._loop: LoopingCall | None = None
        self._started = False
        self.through = None
        self.stats = {"ticks": 0, "days_rolled": 0, "reads": 0, "writes": 0, "failures": 0}

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._turns.run(lambda: None)  # after the tick in progress, and any waiting

    def tick(self):
        """One roll-up, after any in progress; its Deferred fires when done (a failure is logged, not raised)."""
        return self._turns.run(self._tick)

    def _tick(self):
        done = self._in_thread(self._roll_up)
        done.addCallbacks(self._ticked, self._failed)
        return done

    def _roll_up(self):
        client = self._client()
        if not self._started:
            self.through = self.counts.watermark(client)
            self.stats["reads"] += 1
            self._started = True
        return self.counts.roll_up(client, self.through)

    def _ticked(self, result):
        self.through, days, reads, writes = result
        self.stats["ticks"] += 1
        self.stats["days_rolled"] += days
        self.stats["reads"] += reads
        self.stats["writes"] += writes

    def _failed(self, failure):
        self.stats["failures"] += 1
        log.warn("rolling day buckets up failed (the next tick tries again): {error}",
                 error=failure.getErrorMessage())

    def state(self) -> dict:
        return {"interval": self.interval, **self.stats,
                "through": iso_utc(self.through) if self.through is not None else None}
