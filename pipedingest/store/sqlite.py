"""The embedded article store: stdlib sqlite3 on one dedicated thread.

SQLite connections belong to the thread that opened them, so the store owns a
pool of exactly one thread; the connection is opened, used and closed there,
and ``check_same_thread`` stays on so a mistake fails loudly.  WAL mode lets
readers (another process, the sqlite3 shell) look while the daemon writes.

Each ``put`` is one transaction: ``INSERT OR IGNORE`` of the document, and,
only when that inserted a row, the entity counters (one row per source, entity
text and label in ``{table}_entity_counters``), so a repeated id is never stored
or counted twice.  Each ``replace`` is one ``BEGIN IMMEDIATE`` transaction too:
it reads the stored row, decides (created, unchanged, replaced) and writes the
row and the counters' changes; the write lock taken first makes a concurrent
replace in another process wait and then find the new model.  Counter rows that
fall to 0 are deleted.  The limits are Firestore's, applied by the shared
:class:`~pipedingest.store.base.ThreadedStore`: what SQLite accepts, Firestore
accepts too.

Reading by entity: ``{table}_keys`` holds one row per entity key and article (and
one under ``""`` for every article) with the article's source and sort time; every
store keeps it, whether or not it counts entities.  A store that counts entities
also keeps the day buckets ``{table}_entity_days``: one row per source, UTC day
(of the sort time) and key, counting the articles of ``{table}_keys`` on that day,
so a bucket is always that table's rows grouped, changed in the same transaction
(+1 per key row written, -1 per key row deleted by a replace; a bucket at 0 is
deleted).  The buckets are built from ``{table}_keys`` when they are new (a
database stored before them, or counters just turned on) or when a store that
does not count has opened the database since (``{table}_meta`` keeps when they
were last built, and such a store deletes that record); within the transaction
that creates the schema, so a restart never counts an article twice.
"""
from __future__ import annotations

import json
import re
import os
import sqlite3
import time
from datetime import datetime, timezone

from twisted.internet.defer import fail
from twisted.logger import Logger
from zope.interface import implementer

from pipedingest.article import document_keys, split_key
from pipedingest.dates import day_of
from pipedingest.store.base import (
    MAX_DOCUMENT_BYTES,
    IArticleStore,
    StoreError,
    StoreUnavailable,
    ThreadedStore,
    check_limit,
    counter_changes,
    entity_tally,
    iso_utc,
    jsonable,
    model_of,
)

log = Logger()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@implementer(IArticleStore)
class SQLiteStore(ThreadedStore):
    """Articles in a SQLite file (or ``:memory:``), one row per article id.

    :param path: the database file; created with its tables when absent.
    :param table: the articles table; its counters live in ``{table}_entity_counters``.
    :param entity_counters: keep per-source entity counts, applied once per article id.
    :param max_document_bytes: refuse larger documents (Firestore's measure, so dev matches prod).
    :param clock: IReactorTime; ``ingested_at`` is its ``seconds()``.
    """

    kind = "sqlite"

    def __init__(self, path: str, table: str = "articles", entity_counters: bool = False,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES, reactor=None, clock=None):
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        super().__init__(threads=1, reactor=reactor, clock=clock, max_document_bytes=max_document_bytes)
        self.path = path
        self.table = self.container = table
        self.entity_counters_enabled = entity_counters
        self._connection: sqlite3.Connection | None = None
        self._opened = None
        self._stats.update({"commits": 0, "created": 0, "existing": 0, "replaced": 0, "unchanged": 0})

    # -- lifecycle -------------------------------------------------------------

    def startService(self):
        """Open the database; the daemon's start-up waits for it, and fails if it cannot be opened."""
        super().startService()
        self._opened = self.in_thread(self._open)
        self._opened.addErrback(self._open_failed)
        return self._opened

    def _open_failed(self, failure):
        self._stats["errors"] += 1
        raise StoreUnavailable(f"cannot open the SQLite database {self.path}: {failure.getErrorMessage()}")

    def _open(self):
        folder = os.path.dirname(self.path)
        if folder and self.path != ":memory:":
            os.makedirs(folder, exist_ok=True)  # here, not at configuration time: --check creates nothing
        # timeout: wait for a lock (another store opening the same file) instead of failing at once
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """WAL mode and the tables, once.

        Two stores may open one file at the same time (the shipped configs keep the status tests' table
        beside the articles). The schema is written in one ``BEGIN IMMEDIATE`` transaction, which takes the
        write lock first and so waits for the other (a read that turns into a write would fail at once);
        switching to WAL, which cannot wait in a transaction, is retried for the same ``timeout``.
        """
        give_up = time.monotonic() + 5.0
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > give_up:
                    raise
                time.sleep(0.01)
        connection.execute("PRAGMA synchronous=NORMAL")
        statements = [
            f"""CREATE TABLE IF NOT EXISTS {self.table} (
                id TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                ingested_at TEXT NOT NULL,
                document TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS {self.table}_by_time ON {self.table} (ingested_at)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_by_source_time ON {self.table} (source, ingested_at)",
            f"""CREATE TABLE IF NOT EXISTS {self.table}_keys (
                key TEXT NOT NULL,
                id TEXT NOT NULL,
                source TEXT NOT NULL,
                sort_at TEXT NOT NULL,
                PRIMARY KEY (key, id))""",
            f"CREATE INDEX IF NOT EXISTS {self.table}_keys_by_time ON {self.table}_keys (key, sort_at, id)",
            f"""CREATE INDEX IF NOT EXISTS {self.table}_keys_by_source_time
                ON {self.table}_keys (key, source, sort_at, id)""",
            f"""CREATE TABLE IF NOT EXISTS {self.table}_entity_counters (
                source TEXT NOT NULL,
                entity TEXT NOT NULL,
                label TEXT NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (source, entity, label))""",
            f"CREATE TABLE IF NOT EXISTS {self.table}_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]
        connection.create_function("day_of", 1, day_of, deterministic=True)
        connection.create_function("key_label", 1, lambda key: split_key(key)[1] or "", deterministic=True)
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                connection.execute(statement)
            indexed = self._index_unindexed(connection)
            self._prepare_day_buckets(connection, rebuild=indexed > 0)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _index_unindexed(self, db) -> int:
        """Index the articles stored before the index table existed (they have no row under the key ""); how many."""
        rows = db.execute(
            f"SELECT id, source, ingested_at, document FROM {self.table} WHERE id NOT IN "
            f"(SELECT id FROM {self.table}_keys WHERE key = '')").fetchall()
        for article_id, source, ingested_at, document in rows:
            fields = json.loads(document)
            self._index(db, article_id, source, sort_time(fields, ingested_at), document_keys(fields))
        if rows:
            log.info("indexed {n} articles stored before {table}_keys existed", n=len(rows), table=self.table)
        return len(rows)

    def _prepare_day_buckets(self, db, rebuild: bool) -> None:
        """Create ``{table}_entity_days`` and build it from ``{table}_keys`` when it is new or may be incomplete
        (*rebuild*: articles were just indexed; or no record of its last build); a store that does not count
        entities deletes that record instead, since the articles it stores go uncounted (module docstring)."""
        days, meta = f"{self.table}_entity_days", f"{self.table}_meta"
        if not self.entity_counters_enabled:
            db.execute(f"DELETE FROM {meta} WHERE name = 'entity_days_built'")
            return
        db.execute(f"""CREATE TABLE IF NOT EXISTS {days} (
                source TEXT NOT NULL,
                day TEXT NOT NULL,
                key TEXT NOT NULL,
                label TEXT NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (source, day, key)) WITHOUT ROWID""")
        db.execute(f"CREATE INDEX IF NOT EXISTS {days}_by_key ON {days} (key, day, source)")
        built = db.execute(f"SELECT value FROM {meta} WHERE name = 'entity_days_built'").fetchone()
        if built is not None and not rebuild:
            return
        db.execute(f"DELETE FROM {days}")
        db.execute(
            f"INSERT INTO {days} (source, day, key, label, count) "
            f"SELECT source, day_of(sort_at), key, key_label(key), COUNT(*) FROM {self.table}_keys "
            "WHERE key != '' GROUP BY source, day_of(sort_at), key")
        db.execute(f"INSERT OR REPLACE INTO {meta} (name, value) VALUES ('entity_days_built', ?)", (self._now(),))
        buckets = db.execute(f"SELECT COUNT(*) FROM {days}").fetchone()[0]
        log.info("built {n} entity day buckets in {table} from the stored articles", n=buckets, table=days)

    def _index(self, db, article_id: str, source: str, sort_at: str, keys) -> None:
        """The rows that find *article_id*: one per entity key, and one under "" (every article)."""
        db.executemany(f"INSERT OR REPLACE INTO {self.table}_keys (key, id, source, sort_at) VALUES (?, ?, ?, ?)",
                       [(key, article_id, source, sort_at) for key in ["", *keys]])

    def closing(self):
        return self.in_thread(self._close)

    def _close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"the SQLite database {self.path!r} is not open")
        return self._connection

    # -- writes ----------------------------------------------------------------

    def prepare(self, article_id, fields, tally):
        document = json.dumps(jsonable(fields), ensure_ascii=False, separators=(",", ":"))
        return article_id, fields["source"], document, tally, model_of(fields), fields

    def write(self, prepared):
        article_id, source, document, tally, _, fields = prepared
        written = self._in_transaction(self._insert, article_id, source, self._now(), document, tally, fields)
        written.addCallback(lambda created: self._count_write("created" if created else "existing", created))
        return written

    def rewrite(self, prepared):
        replaced = self._in_transaction(self._replace, *prepared, self._now())
        replaced.addCallback(lambda outcome: self._count_write(outcome, outcome))
        return replaced

    def _now(self) -> str:
        return iso_utc(datetime.fromtimestamp(self._clock.seconds(), timezone.utc))

    def _in_transaction(self, function, *args):
        """Run *function* (db, *args) in one ``BEGIN IMMEDIATE`` transaction on the store's thread, timed."""
        done = self.in_thread(self._transaction, function, *args)
        done.addBoth(self.commit_took, self._clock.seconds())
        done.addErrback(self._count_error)
        return done

    def _transaction(self, function, *args):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = function(db, *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _insert(self, db, article_id, source, ingested_at, document, tally, fields) -> bool:
        created = db.execute(
            f"INSERT OR IGNORE INTO {self.table} (id, source, ingested_at, document) "
            "VALUES (?, ?, ?, ?)", (article_id, source, ingested_at, document)).rowcount == 1
        if created:
            sort_at, keys = sort_time(fields, ingested_at), document_keys(fields)
            self._index(db, article_id, source, sort_at, keys)
            if self.entity_counters_enabled:
                self._add_day_counts(db, day_changes([], [(source, sort_at, key) for key in keys]))
        if created and tally:
            self._add_counts(db, {source: tally})
        return created

    def _replace(self, db, article_id, source, document, tally, model, fields, ingested_at) -> str:
        row = db.execute(f"SELECT source, document, ingested_at FROM {self.table} WHERE id = ?",
                         (article_id,)).fetchone()
        if row is None:
            self._insert(db, article_id, source, ingested_at, document, tally, fields)
            return "created"
        old_source, old_document = row[0], json.loads(row[1])
        if model_of(old_document) == model:
            return "unchanged"
        db.execute(f"UPDATE {self.table} SET source = ?, document = ? WHERE id = ?", (source, document, article_id))
        old_rows = db.execute(f"SELECT source, sort_at, key FROM {self.table}_keys WHERE id = ? AND key != ''",
                              (article_id,)).fetchall()
        db.execute(f"DELETE FROM {self.table}_keys WHERE id = ?", (article_id,))
        sort_at, keys = sort_time(fields, row[2]), document_keys(fields)
        self._index(db, article_id, source, sort_at, keys)
        if self.entity_counters_enabled:
            self._add_counts(db, counter_changes(old_source, entity_tally(old_document.get("entities")),
                                                 source, tally))
            self._add_day_counts(db, day_changes(old_rows, [(source, sort_at, key) for key in keys]))
        return "replaced"

    def _add_counts(self, db, changes: dict) -> None:
        """Add ``{source: {text: {label: n}}}`` to the counters (n may be negative); drop rows left at 0."""
        rows = [(source, text, label, n) for source, tally in changes.items()
                for text, labels in tally.items() for label, n in labels.items()]
        db.executemany(
            f"INSERT INTO {self.table}_entity_counters (source, entity, label, count) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (source, entity, label) "
            "DO UPDATE SET count = count + excluded.count", rows)
        if any(n < 0 for *_, n in rows):
            db.executemany(
                f"DELETE FROM {self.table}_entity_counters "
                "WHERE source = ? AND entity = ? AND label = ? AND count = 0",
                [row[:3] for row in rows if row[3] < 0])

    def _add_day_counts(self, db, changes: dict) -> None:
        """Add ``{(source, day, key): n}`` to the day buckets (n may be negative); drop buckets left at 0."""
        rows = [(source, day, key, split_key(key)[1] or "", n) for (source, day, key), n in changes.items()]
        db.executemany(
            f"INSERT INTO {self.table}_entity_days (source, day, key, label, count) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (source, day, key) DO UPDATE SET count = count + excluded.count", rows)
        db.executemany(
            f"DELETE FROM {self.table}_entity_days WHERE source = ? AND day = ? AND key = ? AND count = 0",
            [row[:3] for row in rows if row[4] < 0])

    def _count_write(self, outcome: str, result):
        self._stats["commits"] += 1
        self._stats[outcome] += 1
        return result

    def _count_error(self, failure):
        self._stats["errors"] += 1
        return failure

    # -- reads -----------------------------------------------------------------

    def get(self, article_id):
        return self.in_thread(self._get, article_id)

    def _get(self, article_id):
        row = self._db().execute(
            f"SELECT id, ingested_at, document FROM {self.table} WHERE id = ?",
            (article_id,)).fetchone()
        return _document(row) if row else None

    def recent(self, source=None, limit=20):
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self.in_thread(self._recent, source, limit)

    def _recent(self, source, limit):
        query = f"SELECT id, ingested_at, document FROM {self.table}"
        arguments: tuple = ()
        if source is not None:
            query += " WHERE source = ?"
            arguments = (source,)
        query += " ORDER BY ingested_at DESC, rowid DESC LIMIT ?"
        return [_document(row) for row in self._db().execute(query, arguments + (limit,))]

    def query(self, key="", source=None, since=None, until=None, limit=20, after=None):
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self.in_thread(self._query, key, source, since, until, limit, after)

    def _query(self, key, source, since, until, limit, after):
        conditions, arguments = ["k.key = ?"], [key]
        for condition, value in (("k.source = ?", source), ("k.sort_at >= ?", since), ("k.sort_at < ?", until)):
            if value is not None:
                conditions.append(condition)
                arguments.append(value)
        if after is not None:
            conditions.append("(k.sort_at < ? OR (k.sort_at = ? AND k.id < ?))")
            arguments += [after[0], after[0], after[1]]
        rows = self._db().execute(
            f"SELECT a.id, a.ingested_at, a.document, k.sort_at FROM {self.table}_keys k "
            f"JOIN {self.table} a ON a.id = k.id WHERE {' AND '.join(conditions)} "
            "ORDER BY k.sort_at DESC, k.id DESC LIMIT ?", arguments + [limit + 1]).fetchall()
        documents = [_document(row[:3]) for row in rows[:limit]]
        last = (rows[limit - 1][3], rows[limit - 1][0]) if len(rows) > limit else None
        return documents, last

    def top_entities(self, source, since, until, label=None, limit=50):
        if not self.entity_counters_enabled:
            return fail(self.counts_unsupported())
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self.in_thread(self._top_entities, source, since, until, label, limit)

    def _top_entities(self, source, since, until, label, limit):
        conditions, arguments = ["source = ?", "label = ?"], [source, label]
        if label is None:  # the labelled keys only: "apple" alone counts what "apple|ORG" and "apple|PERSON" do
            conditions[1:], arguments[1:] = ["label != ''"], []
        conditions, arguments = _window(conditions, arguments, since, until)
        rows = self._db().execute(
            f"SELECT key, SUM(count) AS n FROM {self.table}_entity_days WHERE {' AND '.join(conditions)} "
            "GROUP BY key ORDER BY n DESC, key ASC LIMIT ?", arguments + [limit])
        return {"entities": [{"key": key, "count": n} for key, n in rows], "as_of": None}

    def timeline(self, key, source=None, since=None, until=None):
        if not self.entity_counters_enabled:
            return fail(self.counts_unsupported())
        return self.in_thread(self._timeline, key, source, since, until)

    def _timeline(self, key, source, since, until):
        conditions, arguments = ["key = ?"], [key]
        if source is not None:
            # "+source": filter rows found by the (key, day, source) index, which the planner would otherwise
            # pass over for the primary key, scanning every bucket of the source in the window
            conditions.append("+source = ?")
            arguments.append(source)
        conditions, arguments = _window(conditions, arguments, since, until)
        rows = self._db().execute(
            f"SELECT day, SUM(count) FROM {self.table}_entity_days WHERE {' AND '.join(conditions)} "
            "GROUP BY day ORDER BY day", arguments)
        return {"days": {day: n for day, n in rows if n > 0}, "as_of": None}

    def entity_counters(self, source):
        return self.in_thread(self._entity_counters, source)

    def _entity_counters(self, source):
        counters: dict[str, dict] = {}
        rows = self._db().execute(
            f"SELECT entity, label, count FROM {self.table}_entity_counters WHERE source = ?",
            (source,))
        for entity, label, count in rows:
            counter = counters.setdefault(entity, {"count": 0, "labels": {}})
            counter["count"] += count
            counter["labels"][label] = count
        return counters

    def state(self):
        return {
            "kind": self.kind,
            "running": bool(self.running),
            "path": self.path,
            "table": self.table,
            **self.calls_state(),
            "retries": 0,
            **self._stats,
            "threads": self.thread_state(),
        }


def sort_time(fields: dict, ingested_at: str) -> str:
    """When an article sorts: when it was published, else when it was ingested (both fixed-width UTC text)."""
    return fields.get("published_at") or ingested_at


def day_changes(removed, added) -> dict[tuple[str, str, str], int]:
    """What taking the key rows *removed* off the day buckets and adding *added* changes:
    ``{(source, day, key): n}``, from rows ``(source, sort_at, key)``, changes that cancel out left out."""
    changes: dict[tuple[str, str, str], int] = {}
    for rows, sign in ((removed, -1), (added, 1)):
        for source, sort_at, key in rows:
            bucket = (source, day_of(sort_at), key)
            changes[bucket] = changes.get(bucket, 0) + sign
    return {bucket: n for bucket, n in changes.items() if n}


def _window(conditions: list, arguments: list, since, until) -> tuple[list, list]:
    """*conditions* and *arguments* with the day window: from *since* (inclusive) to *until* (exclusive)."""
    for condition, value in (("day >= ?", since), ("day < ?", until)):
        if value is not None:
            conditions.append(condition)
            arguments.append(value)
    return conditions, arguments


def _document(row) -> dict:
    article_id, ingested_at, document = row
    return {"id": article_id, **json.loads(document), "ingested_at": ingested_at}
