"""Articles stored before ``sort_at`` existed get it, once: the walk a store starts when it opens.

Queries order by ``sort_at`` (:data:`~.documents.SORT_FIELD`), and Firestore leaves every document without that
field out of a query ordered by it: an article stored by an earlier version would never be found. So a store,
once open, walks its collection in the background (start-up does not wait for it; queries answer meanwhile,
without the old articles until the walk has reached them) and gives each document without ``sort_at`` the value
a put gives (:func:`missing_fields`): its ``published_at``, else its ``ingested_at``. A document stored before
``entity_keys`` existed gets its keys too, from its entities, as SQLite fills its index table for such articles.

* **Cost.** The walk reads every document once, ``page_size`` at a time in id order, projected on ``sort_at``
  alone (little travels); only the documents without it are read again, with the fields the value comes from.
  ``state()`` counts those reads and the writes. Once a walk has seen the whole collection it writes a marker,
  ``{collection}/_ingest_state/backfills/sort_at`` (under a document that never exists, so neither a query nor a
  walk of the articles meets it); a later start reads that one document and skips the walk. Daemons of an older
  version that still store articles after the walk (a rolling upgrade) leave documents without ``sort_at``:
  upgrade every writer first, or delete the marker afterwards so that the next start walks again.
* **Beside other writers.** Updates go in ``BatchWrite`` requests, where each write succeeds or fails alone:
  ``update`` (which never recreates a document deleted meanwhile) with the update time the document was read at
  as its precondition, so that whatever changed it since (a replace, another daemon's walk) wins. Such a
  document is read again and left alone once it has ``sort_at``. Several daemons starting on one database walk
  side by side and update each document once between them.
* **Failures.** A transient error or a credentials problem pauses the walk until a read of the store gets
  through (then the step that failed is tried again; the walk keeps its place); anything else ends the walk
  with an error in the log, and the next start walks again; so does a walk that met documents which kept
  changing through ``CONFLICT_ROUNDS`` reads (it writes no marker). A document Firestore refuses to update is
  logged and left as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from google.cloud import firestore
from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch
from twisted.logger import Logger

from pipedingest.article import entity_keys
from pipedingest.idle import WhenIdle
from pipedingest.store.firestore.client import describe, is_transient
from pipedingest.store.firestore.documents import SORT_FIELD, sort_text, wire_size
from pipedingest.store.firestore.queries import KEYS_FIELD

log = Logger()

#: Where the marker is, below the articles' collection: a collection of a document that never exists.
MARKER_PARENT = "_ingest_state"
MARKER_COLLECTION = "backfills"
MARKER_ID = SORT_FIELD
#: Documents read per page of the walk.
PAGE_SIZE = 300
#: Writes per ``BatchWrite`` request (Firestore: 500).
MAX_WRITES = 500
#: How often the documents of one page whose update lost to another write are read and tried again.
CONFLICT_ROUNDS = 5
#: The fields a document without ``sort_at`` is read again with.
_SOURCE_FIELDS = [SORT_FIELD, "published_at", "ingested_at", KEYS_FIELD, "entities"]
#: google.rpc codes of a write that lost to another: its precondition failed, or the document is gone.
_LOST = {9, 5}
#: Where the walk stands: before, during, and the ways it ends.
WAITING, CHECKING, WALKING, PAUSED = "waiting", "checking", "walking", "paused"
DONE, SKIPPED, FAILED, STOPPED = "done", "skipped", "failed", "stopped"
ENDED = (DONE, SKIPPED, FAILED, STOPPED)


class MarkerRefused(Exception):
    """Firestore did not write the marker: the walk ends failed, and the next start walks again."""


def missing_fields(data: dict) -> dict:
    """The fields to add to a stored document *data* (read with ``sort_at``, ``published_at``, ``ingested_at``,
    ``entity_keys`` and ``entities``): none when it has ``sort_at`` or nothing to sort it by."""
    if isinstance(data.get(SORT_FIELD), str):
        return {}
    published = data.get("published_at")
    value = published if isinstance(published, str) and published else sort_text(data)
    if value is None:  # no put wrote this document: it has no ingested_at
        return {}
    fields = {SORT_FIELD: value}
    if not isinstance(data.get(KEYS_FIELD), list):
        fields[KEYS_FIELD] = entity_keys(data.get("entities"))
    return fields


@dataclass
class Page:
    """What one page of the walk did: the id to go on after (None: the walk is over) and its counts."""

    after: str | None = None
    reads: int = 0
    writes: int = 0
    conflicts: int = 0
    unsettled: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


class Walk:
    """The blocking side of the back-fill: each method runs in one of the store's pool threads.

    :param collection: the articles' collection.
    :param rpc_timeout: seconds one call may take.
    :param max_batch_bytes: estimated request bytes per ``BatchWrite``.
    :param page_size: documents read per page.
    """

    def __init__(self, collection: str, rpc_timeout: float, max_batch_bytes: int, page_size: int = PAGE_SIZE):
        self.collection = collection
        self.rpc_timeout = rpc_timeout
        self.max_batch_bytes = max_batch_bytes
        self.page_size = page_size

    def marker(self, client):
        return (client.collection(self.collection).document(MARKER_PARENT).collection(MARKER_COLLECTION)
                .document(MARKER_ID))

    def marked(self, client) -> bool:
        """Has a walk seen the whole collection before?"""
        return self.marker(client).get(retry=None, timeout=self.rpc_timeout).exists

    def mark(self, client, counts: dict) -> None:
        """Record that a walk has seen the whole collection (with what this one did, for whoever looks)."""
        batch = BulkWriteBatch(client)
        batch.set(self.marker(client), {"done_at": firestore.SERVER_TIMESTAMP, **counts})
        (status,) = batch.commit(retry=None, timeout=self.rpc_timeout).status
        if status.code != 0:
            raise MarkerRefused(f"Firestore refused the marker {MARKER_PARENT}/{MARKER_COLLECTION}/{MARKER_ID}: "
                                f"{status.message}")

    def page(self, client, after: str | None) -> Page:
        """Read the page of ids after *after* and give ``sort_at`` to those without it."""
        articles = client.collection(self.collection)
        query = articles.select([SORT_FIELD]).order_by("__name__").limit(self.page_size)
        if after is not None:
            query = query.start_after({"__name__": articles.document(after)})
        snapshots = list(query.stream(retry=None, timeout=self.rpc_timeout))
        page = Page(after=snapshots[-1].id if len(snapshots) == self.page_size else None, reads=len(snapshots))
        references = [snapshot.reference for snapshot in snapshots
                      if not isinstance((snapshot.to_dict() or {}).get(SORT_FIELD), str)]
        for _ in range(CONFLICT_ROUNDS):
            if not references:
                break
            fresh = list(client.get_all(references, field_paths=_SOURCE_FIELDS, retry=None,
                                        timeout=self.rpc_timeout))
            page.reads += len(fresh)
            writes = [(snapshot, fields) for snapshot in fresh if snapshot.exists
                      for fields in [missing_fields(snapshot.to_dict() or {})] if fields]
            references = self._update(client, writes, page)
        page.unsettled = len(references)
        return page

    def _update(self, client, writes: list, page: Page) -> list:
        """Send *writes* (``(snapshot, fields)``), each conditional on its snapshot's update time; the
        references of those that lost to another write, to read again."""
        lost = []
        for chunk in self._chunks(writes):
            batch = BulkWriteBatch(client)
            for snapshot, fields in chunk:
                batch.update(snapshot.reference, fields,
                             option=client.write_option(last_update_time=snapshot.update_time))
            response = batch.commit(retry=None, timeout=self.rpc_timeout)
            for (snapshot, _), status in zip(chunk, response.status):
                if status.code == 0:
                    page.writes += 1
                elif status.code in _LOST:
                    page.conflicts += 1
                    lost.append(snapshot.reference)
                else:
                    page.refused.append((snapshot.id, status.message))
        return lost

    def _chunks(self, writes: list):
        """*writes* cut into requests of at most ``MAX_WRITES`` writes and about ``max_batch_bytes``."""
        chunk, size = [], 0
        for write in writes:
            bytes_ = 300 + len(write[0].reference.path) + wire_size(write[1])
            if chunk and (len(chunk) == MAX_WRITES or size + bytes_ > self.max_batch_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(write)
            size += bytes_
        if chunk:
            yield chunk


class SortBackfill:
    """The reactor side of the back-fill: one walk, a page per call on the store's threads, until it ends.

    A call that fails for a passing reason (a transient error, a credentials problem) *pauses* the walk; the
    next read of the store that gets through (:meth:`resume`, called by the store) tries that step again. So
    the walk sets no timer of its own: a Firestore that answers reads is a Firestore the walk can go on with.

    :param walk: the blocking side.
    :param client: the store's client, in a pool thread.
    :param in_thread: runs a function on the store's pool; Deferred of its result.
    :param running: whether the store runs (the walk ends when it stops).
    :param name: the store's service name, for the log (a callable: the name is set after construction).
    :param problem_of: what an error says is wrong with the credentials, or None.
    """

    def __init__(self, walk: Walk, client: Callable, in_thread: Callable, running: Callable[[], bool],
                 name: Callable[[], str], problem_of: Callable):
        self.walk = walk
        self._client = client
        self._in_thread = in_thread
        self._running = running
        self._name = name
        self._problem_of = problem_of
        self.status = WAITING
        self.counts = {"reads": 0, "writes": 0, "conflicts": 0, "refused": 0, "unsettled": 0, "retries": 0}
        self._calling = False
        self._paused: tuple | None = None
        self._ended = WhenIdle(lambda: self.status in ENDED)

    def state(self) -> dict:
        return {"status": self.status, **self.counts}

    def wait(self):
        """Deferred that fires once the walk has ended (done, skipped, failed or stopped)."""
        return self._ended.wait()

    def start(self):
        """Look for the marker, then walk unless it is there."""
        self.status = CHECKING
        self._attempt(self.walk.marked, self._checked)

    def resume(self):
        """A read got through: try the paused step again (nothing when the walk is not paused)."""
        if self._paused is not None and not self._calling:
            status, function, then, args = self._paused
            self._paused = None
            self.status = status
            self.counts["retries"] += 1
            self._attempt(function, then, *args)

    def stop(self):
        """No more pages: a call in flight finishes, and the walk ends after it (the next start walks again)."""
        self._paused = None
        if not self._calling and self.status not in ENDED:
            self._end(STOPPED)

    def _checked(self, marked: bool):
        self.counts["reads"] += 1
        if marked:
            self._end(SKIPPED)
            return
        self.status = WALKING
        log.info("{name}: giving sort_at to the articles stored without it (a walk of {collection}, in the "
                 "background)", name=self._name(), collection=self.walk.collection)
        self._attempt(self.walk.page, self._paged, None)

    def _paged(self, page: Page):
        for name in ("reads", "writes", "conflicts", "unsettled"):
            self.counts[name] += getattr(page, name)
        self.counts["refused"] += len(page.refused)
        for article_id, message in page.refused:
            log.error("{name}: Firestore refused to give sort_at to article {id!r}: {message}", name=self._name(),
                      id=article_id, message=message)
        if page.after is not None:
            self._attempt(self.walk.page, self._paged, page.after)
        elif self.counts["unsettled"]:
            log.warn("{name}: {n} articles kept changing while the walk gave them sort_at; the next start walks "
                     "again", name=self._name(), n=self.counts["unsettled"])
            self._end(FAILED)
        else:
            self._attempt(self.walk.mark, self._marked, dict(self.counts))

    def _marked(self, _):
        log.info("{name}: every article has sort_at ({writes} given it, {reads} documents read)",
                 name=self._name(), writes=self.counts["writes"], reads=self.counts["reads"])
        self._end(DONE)

    def _attempt(self, function: Callable, then: Callable, *args):
        """Run ``function(client, *args)`` on the store's threads, then ``then(result)`` on the reactor."""
        if not self._running():
            self._end(STOPPED)
            return
        self._calling = True

        def succeeded(result):
            self._calling = False
            then(result)

        def failed(failure):
            self._calling = False
            self._pause_or_end(failure.value, function, then, args)

        self._in_thread(lambda: function(self._client(), *args)).addCallbacks(succeeded, failed)

    def _pause_or_end(self, error: BaseException, function, then, args):
        if not self._running():
            self._end(STOPPED)
            return
        problem = self._problem_of(error)
        if problem is None and not is_transient(error):
            log.error("{name}: the walk giving sort_at to older articles failed: {error}; the next start walks "
                      "again", name=self._name(), error=describe(error))
            self._end(FAILED)
            return
        log.warn("{name}: the walk giving sort_at to older articles waits for a read that gets through: "
                 "{problem}", name=self._name(), problem=problem or describe(error))
        self._paused = (self.status, function, then, args)
        self.status = PAUSED

    def _end(self, status: str):
        self.status = status
        self._ended.check()
