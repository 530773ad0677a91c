"""Cloud Firestore as the article store: batched, idempotent, retried commits.

Together with ``store/walk.py`` (the read-only walk of ``ingest-reextract``), the
only code that imports Google's Firestore client; both create it with
:func:`~.client.create_client`.  Every client call of the store runs on its own
sized thread pool (never the reactor thread, never the reactor's default pool); the
client itself is created there, because finding credentials may block.
``FIRESTORE_EMULATOR_HOST`` is honoured by the client; with it set the store uses
anonymous credentials.

The package, one seam a module:

* ``store.py``: :class:`FirestoreStore`, the service: settings, start and stop, the
  client it holds, reads (``get``, ``recent``, ``query``, ``entity_counters``) and ``state()``.
* ``queries.py``: articles by entity: the query, the composite index each shape of it
  needs, and a missing index named (``IndexMissing``).
* ``backfill.py``: the walk that gives ``sort_at`` to articles stored before it existed,
  once, in the background after the store opens.
* ``client.py``: creating the client (emulator or Application Default Credentials,
  project and database), and what its errors mean (transient, credentials).
* ``access.py``: a credentials problem, reported by ``/ready`` and each call, and the
  rechecks that clear it.
* ``commits.py``: puts, queued and cut into batches, committed with ``create()``
  preconditions, retried, split around an article Firestore refuses.
* ``replace.py``: replaces, one transaction each, taking turns with the puts of their id.
* ``counters.py``: the per-source entity counters in shard documents, and their limits.
* ``documents.py``: the document on its way (its size bound, its token) and read back.
* ``backoff.py``: the delays between retries of transient failures.
"""
from pipedingest.store.firestore.access import ACCESS_CHECK_ID, ACCESS_RECHECK
from pipedingest.store.firestore.client import (
    DATABASE_ID,
    DEFAULT_DATABASE,
    access_problem,
    create_client,
    is_transient,
    on_emulator,
)
from pipedingest.store.firestore.counters import (
    COUNTS_FIELD,
    MAX_FIELD_TRANSFORMS,
    SHARDS_COLLECTION,
    document_id,
    field_name,
    shard_of,
    text_of_field,
)
from pipedingest.store.firestore.documents import TOKEN_FIELD, wire_size
from pipedingest.store.firestore.store import FirestoreStore

__all__ = [
    "ACCESS_CHECK_ID", "ACCESS_RECHECK", "COUNTS_FIELD", "DATABASE_ID", "DEFAULT_DATABASE", "MAX_FIELD_TRANSFORMS",
    "SHARDS_COLLECTION", "TOKEN_FIELD", "FirestoreStore", "access_problem", "create_client", "document_id",
    "field_name", "is_transient", "on_emulator", "shard_of", "text_of_field", "wire_size",
]
