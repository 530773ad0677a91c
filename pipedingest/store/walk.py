"""Blocking, read-only walks over a store's articles, in id order, a page at a time.

For tools that run beside a daemon and read what it stored (``ingest-reextract``):
they never write, and they read without the daemon's help, so they work while it
runs. Each call blocks; a Twisted caller runs them on a thread of its own (a SQLite
connection belongs to the thread that opened it, so give the walk a pool of one).

* SQLite is opened read-only (``mode=ro``, ``query_only``); WAL lets it read while
  the daemon writes. Every condition of a :class:`Selection` is in the query.
* Firestore is read with Google's client, created as the store creates it
  (``store/firestore/client.py``): anonymous credentials when
  ``FIRESTORE_EMULATOR_HOST`` is set, Application Default Credentials otherwise. ``source`` and ``model`` are equality filters (served by the
  automatic single-field indexes, no composite index needed); the ``ingested_at``
  span is checked as documents are read, since a range there would make Firestore
  order by it rather than by id.

Pages follow ids (``id > after``), not offsets, so documents replaced behind the
cursor (as a re-extraction does) neither shift nor repeat what comes next.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Optional
from urllib.parse import quote

from pipedingest.store.base import iso_utc

#: Documents per page: a page of Firestore documents may be some MiB (each up to 1 MiB, most a few KiB).
PAGE_SIZE = 100


class WalkError(Exception):
    """The store cannot be read; the message is the whole report."""


@dataclass(frozen=True)
class Selection:
    """Which stored articles a walk yields: those of a source, of a model, stored in a span of time.

    ``since`` is inclusive and ``until`` exclusive, both on ``ingested_at``; ``model_version`` applies
    only with ``model_name``. Every field left None selects everything.
    """

    source: Optional[str] = None
    model_name: Optional[str] = None
    model_version: Optional[str] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None

    def in_span(self, ingested_at: Optional[str]) -> bool:
        """Whether an ``ingested_at`` (ISO 8601 UTC text, as stores give it) is within ``since``/``until``."""
        if self.since is None and self.until is None:
            return True
        if not isinstance(ingested_at, str):
            return False
        return ((self.since is None or ingested_at >= iso_utc(self.since))
                and (self.until is None or ingested_at < iso_utc(self.until)))

    def matches(self, document: dict) -> bool:
        """Whether *document* is selected (the whole test, for walks that filter as they read)."""
        model = document.get("model") if isinstance(document.get("model"), dict) else {}
        return ((self.source is None or document.get("source") == self.source)
                and (self.model_name is None or model.get("name") == self.model_name)
                and (self.model_version is None or model.get("version") == self.model_version)
                and self.in_span(document.get("ingested_at")))


@dataclass
class Page:
    """The selected documents of one page, and the id to read on from (None: the walk is over)."""

    documents: list
    after: Optional[str]


class SQLiteWalk:
    """The articles of one table of a SQLite file, read through a read-only connection."""

    def __init__(self, path: str, table: str = "articles"):
        if path == ":memory:":
            raise WalkError("the store is an in-memory SQLite database (path ':memory:'): nothing outlives its daemon")
        self.path = os.path.abspath(path)
        self.table = table
        if not os.path.isfile(self.path):
            raise WalkError(f"the SQLite database {self.path} does not exist (a relative path is read from the "
                            f"current folder: run where the daemon runs, or give -O stores.<name>.path=...)")
        try:
            self.connection = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, timeout=5.0)
            self.connection.execute("PRAGMA query_only = 1")
            found = self.connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                            (table,)).fetchone()
        except sqlite3.Error as error:
            raise WalkError(f"cannot read the SQLite database {self.path}: {error}") from None
        if not found:
            self.close()
            raise WalkError(f"the SQLite database {self.path} has no table {table!r} (no article stored yet, or "
                            f"another table: see the store's 'table')")

    @property
    def where(self) -> str:
        return f"sqlite {self.path} table {self.table}"

    def _conditions(self, selection: Selection) -> tuple[str, list]:
        conditions, arguments = [], []
        if selection.source is not None:
            conditions.append("source = ?")
            arguments.append(selection.source)
        if selection.model_name is not None:
            conditions.append("json_extract(document, '$.model.name') = ?")
            arguments.append(selection.model_name)
        if selection.model_version is not None:
            conditions.append("json_extract(document, '$.model.version') = ?")
            arguments.append(selection.model_version)
        if selection.since is not None:
            conditions.append("ingested_at >= ?")
            arguments.append(iso_utc(selection.since))
        if selection.until is not None:
            conditions.append("ingested_at < ?")
            arguments.append(iso_utc(selection.until))
        return " AND ".join(conditions) or "1", arguments

    def count(self, selection: Selection) -> int:
        where, arguments = self._conditions(selection)
        return self._query(f"SELECT COUNT(*) FROM {self.table} WHERE {where}", arguments)[0][0]

    def page(self, selection: Selection, after: Optional[str] = None, size: int = PAGE_SIZE) -> Page:
        where, arguments = self._conditions(selection)
        if after is not None:
            where += " AND id > ?"
            arguments.append(after)
        rows = self._query(f"SELECT id, ingested_at, document FROM {self.table} WHERE {where} ORDER BY id LIMIT ?",
                           arguments + [size])
        documents = [{"id": article_id, **json.loads(document), "ingested_at": ingested_at}
                     for article_id, ingested_at, document in rows]
        return Page(documents, rows[-1][0] if len(rows) == size else None)

    def _query(self, statement: str, arguments: list) -> list:
        try:
            return self.connection.execute(statement, arguments).fetchall()
        except sqlite3.Error as error:
            raise WalkError(f"cannot read the SQLite database {self.path}: {error}") from None

    def close(self) -> None:
        self.connection.close()


class FirestoreWalk:
    """The articles of one Firestore collection, read with Google's client (no write is ever made)."""

    def __init__(self, project: Optional[str] = None, database: str = "(default)", collection: str = "articles",
                 rpc_timeout: float = 30.0):
        # Here, not at the top: walking SQLite never loads Google's client.
        from pipedingest.store.base import StoreError
        from pipedingest.store.firestore.client import create_client

        self.database = database
        self.collection = collection
        self.timeout = rpc_timeout
        self.project = project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        try:
            self.client = create_client(project, database)
            self.project = self.client.project
        except StoreError as error:  # no project
            raise WalkError(str(error)) from None
        except Exception as error:
            raise self._error(error) from None

    @property
    def where(self) -> str:
        emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
        return (f"firestore project {self.project} database {self.database} collection {self.collection}"
                + (f" (emulator {emulator})" if emulator else ""))

    def _query(self, selection: Selection):
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.client.collection(self.collection)
        for field, value in (("source", selection.source), ("model.name", selection.model_name),
                             ("model.version", selection.model_version)):
            if value is not None:
                query = query.where(filter=FieldFilter(field, "==", value))
        return query

    def count(self, selection: Selection) -> int:
        query = self._query(selection)
        try:
            if selection.since is None and selection.until is None:
                (results,) = query.count().get(retry=None, timeout=self.timeout)
                return int(results[0].value)
            read = query.select(["ingested_at"]).stream(retry=None, timeout=self.timeout)
            return sum(1 for snapshot in read if selection.in_span(_ingested_at(snapshot)))
        except Exception as error:
            raise self._error(error) from None

    def page(self, selection: Selection, after: Optional[str] = None, size: int = PAGE_SIZE) -> Page:
        query = self._query(selection).order_by("__name__")
        if after is not None:
            query = query.start_after({"__name__": after})
        try:
            snapshots = list(query.limit(size).stream(retry=None, timeout=self.timeout))
        except Exception as error:
            raise self._error(error) from None
        from pipedingest.store.firestore.documents import stored

        documents = [document for document in map(stored, snapshots)
                     if selection.in_span(document.get("ingested_at"))]
        return Page(documents, snapshots[-1].id if len(snapshots) == size else None)

    def _error(self, error: BaseException) -> WalkError:
        from pipedingest.store.firestore.client import access_problem, describe

        problem = access_problem(error, self.project, self.database)
        return WalkError(problem or f"cannot read Firestore ({self.collection} in database {self.database} of "
                                    f"project {self.project}): {describe(error)}")

    def close(self) -> None:
        self.client.close()


def _ingested_at(snapshot) -> Optional[str]:
    value = (snapshot.to_dict() or {}).get("ingested_at")
    return iso_utc(value) if isinstance(value, datetime) else None


def open_walk(kind: str, settings: dict):
    """The walk of a store as configured under ``stores:`` (its checked settings); :class:`WalkError` if unreadable."""
    if kind == "sqlite":
        return SQLiteWalk(settings["path"], settings.get("table", "articles"))
    if kind == "firestore":
        return FirestoreWalk(settings.get("project"), settings.get("database", "(default)"),
                             settings.get("collection", "articles"), settings.get("rpc_timeout", 30.0))
    raise WalkError(f"a store of kind {kind!r} cannot be walked (sqlite or firestore)")

