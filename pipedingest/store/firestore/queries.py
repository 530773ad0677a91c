"""Reading articles by entity from Firestore: the query, the index it needs, and what a missing index means.

:meth:`~pipedingest.store.base.IArticleStore.query` in Firestore is one query on the articles collection:
``entity_keys`` array-contains the key (none for the key ``""``: every article), ``source ==`` when given,
``sort_at`` (:data:`~.documents.SORT_FIELD`) from *since* and before *until*, ordered by ``sort_at`` then
``__name__``, both descending, starting after the cursor's ``(sort_at, id)``. That is SQLite's order and tie-break
(sort time, then id, both descending; Firestore compares ids as UTF-8 bytes, as SQLite compares text), so both
stores answer the same pages. A page asks for ``limit + 1`` documents: the one past the page is read only to know
that there is a next page, and costs one more document read.

Each shape of the query but the plainest needs a composite index (:func:`index_for`), shipped in
``conf/firestore.indexes.json``. The emulator needs none; production Firestore refuses a query whose index is
missing with ``FAILED_PRECONDITION`` and a console link, which :func:`run` turns into
:class:`~pipedingest.store.base.IndexMissing` naming the index and how to deploy it (HTTP 501).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from pipedingest.store.base import IndexMissing
from pipedingest.store.firestore.documents import SORT_FIELD, stored

#: The field an article is found by (``pipedingest.article.entity_keys``), matched with array-contains.
KEYS_FIELD = "entity_keys"
#: Where the indexes are shipped, relative to the repository (and to what ``ingest-init`` copies out).
INDEX_FILE = "conf/firestore.indexes.json"
#: How Firestore says that a query needs an index it does not have.
_NEEDS_INDEX = "requires an index"
_LINK = re.compile(r"https://\S+")
_SHORT = {"ASCENDING": "ASC", "DESCENDING": "DESC", "ARRAY_CONTAINS": "ARRAY_CONTAINS"}


@dataclass(frozen=True)
class Index:
    """A composite index of *collection*: its fields in order, each ``(field path, ASCENDING | DESCENDING |
    ARRAY_CONTAINS)``, as ``firestore.indexes.json`` writes them (``__name__`` left implicit: Firestore adds it
    in the direction of the last field)."""

    collection: str
    fields: tuple[tuple[str, str], ...]

    def field_texts(self) -> list[str]:
        """``["entity_keys ARRAY_CONTAINS", "source ASC", "sort_at DESC", "__name__ DESC"]``: every field the
        index orders by, ``__name__`` included, as the Firestore console lists them."""
        last = self.fields[-1][1]
        fields = [*self.fields, ("__name__", last if last != "ARRAY_CONTAINS" else "ASCENDING")]
        return [f"{path} {_SHORT[mode]}" for path, mode in fields]

    def describe(self) -> str:
        """``articles: entity_keys ARRAY_CONTAINS, source ASC, sort_at DESC, __name__ DESC``."""
        return f"{self.collection}: " + ", ".join(self.field_texts())

    def gcloud(self, database: str) -> str:
        """The ``gcloud`` command that creates this index alone."""
        configs = " ".join(
            f"--field-config=field-path={path},array-config=contains" if mode == "ARRAY_CONTAINS"
            else f"--field-config=field-path={path},order={mode.lower()}" for path, mode in self.fields)
        return (f"gcloud firestore indexes composite create --database='{database}' "
                f"--collection-group={self.collection} {configs}")

    def as_json(self) -> dict:
        """This index as an entry of ``firestore.indexes.json``'s ``indexes``."""
        return {"collectionGroup": self.collection, "queryScope": "COLLECTION",
                "fields": [{"fieldPath": path, "arrayConfig": "CONTAINS"} if mode == "ARRAY_CONTAINS"
                           else {"fieldPath": path, "order": mode} for path, mode in self.fields]}


def index_for(collection: str, key: str, source: str | None) -> Index | None:
    """The composite index the query for *key* and *source* needs; None when Firestore's automatic single-field
    index on ``sort_at`` serves it (every article, of every source). The filters on ``sort_at`` (since, until,
    the cursor) need nothing more: they bound the field the index is ordered by."""
    fields = ([(KEYS_FIELD, "ARRAY_CONTAINS")] if key else []) + ([("source", "ASCENDING")] if source is not None
                                                                   else [])
    if not fields:
        return None
    return Index(collection, (*fields, (SORT_FIELD, "DESCENDING")))


def build(client, collection: str, key: str, source: str | None, since: str | None, until: str | None,
          limit: int, after: tuple[str, str] | None):
    """The Firestore query for one page (``limit + 1`` documents: see the module docstring)."""
    articles = client.collection(collection)
    query = articles
    if key:
        query = query.where(filter=FieldFilter(KEYS_FIELD, "array_contains", key))
    if source is not None:
        query = query.where(filter=FieldFilter("source", "==", source))
    if since is not None:
        query = query.where(filter=FieldFilter(SORT_FIELD, ">=", since))
    if until is not None:
        query = query.where(filter=FieldFilter(SORT_FIELD, "<", until))
    query = (query.order_by(SORT_FIELD, direction=firestore.Query.DESCENDING)
             .order_by("__name__", direction=firestore.Query.DESCENDING))
    if after is not None:
        query = query.start_after({SORT_FIELD: after[0], "__name__": articles.document(after[1])})
    return query.limit(limit + 1)


def run(client, collection: str, database: str, rpc_timeout: float, key: str = "", source: str | None = None,
        since: str | None = None, until: str | None = None, limit: int = 20,
        after: tuple[str, str] | None = None):
    """``(documents, last)`` as :meth:`IArticleStore.query` answers them, in a pool thread (it blocks).

    *last* is the ``(sort_at, id)`` of the last document answered when another page follows, else None.
    A missing index is :class:`IndexMissing`; every other error is the client's, for the store to describe.
    """
    query = build(client, collection, key, source, since, until, limit, after)
    try:
        snapshots = list(query.stream(retry=None, timeout=rpc_timeout))
    except api_exceptions.FailedPrecondition as error:
        if _NEEDS_INDEX not in str(error):
            raise
        raise index_missing(index_for(collection, key, source), database, error) from None
    documents = [stored(snapshot) for snapshot in snapshots[:limit]]
    last = None
    if len(snapshots) > limit:
        snapshot = snapshots[limit - 1]
        last = (snapshot.get(SORT_FIELD), snapshot.id)
    return documents, last


def index_missing(index: Index | None, database: str, error: BaseException) -> IndexMissing:
    """What an operator reads when Firestore refused the query for want of *index*: which index, where it is
    shipped, two ways to deploy it, and Firestore's own link to create it."""
    found = _LINK.search(str(error))
    link = found.group(0).rstrip(".,;)") if found else None
    if index is None:  # Firestore wants an index this module does not know it needs
        message = (f"Firestore database {database} needs an index to answer this query, and has none; "
                   f"the indexes the queries need are in {INDEX_FILE}: deploy them with "
                   "`firebase deploy --only firestore:indexes`")
        return IndexMissing(message + (f"; Firestore's link to create the one missing: {link}" if link else ""),
                            collection=None, fields=[], link=link)
    message = (f"Firestore database {database} has no index for this query; it needs the composite index "
               f"{index.describe()}. It is shipped in {INDEX_FILE}: deploy that file with "
               f"`firebase deploy --only firestore:indexes`, or create this index alone with "
               f"`{index.gcloud(database)}`; the query answers once the index is built (minutes)")
    if link:
        message += f". Firestore's link to create it: {link}"
    return IndexMissing(message, collection=index.collection, fields=index.field_texts(), link=link)
