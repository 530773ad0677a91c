"""Cloud Firestore as the article store: batched, idempotent, retried commits.

The only module that imports the Firestore client.  Every client call runs on the
store's own sized thread pool (never the reactor thread, never the reactor's
default pool); the client itself is created there, because finding credentials
may block.  ``FIRESTORE_EMULATOR_HOST`` is honoured by the client; with it set
the store uses anonymous credentials.

**Project, database and credentials.**  The store writes to one database of one
project: ``database`` names it (``(default)``, or a named database).  Off the
emulator the credentials are Google's Application Default Credentials
(``google.auth.default()``: ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, or the service account of the machine), and the
project, unless given, is theirs (``GOOGLE_CLOUD_PROJECT`` first).  Both are
found when the store starts; a store that cannot name a project does not start.

Credentials that cannot be had, or that Firestore refuses, are not a start
failure: the site still answers, each put and read fails at once with a
:class:`StoreUnavailable` naming the credentials (HTTP 503), and ``readiness``
reports the problem, so ``/ready`` says what is wrong.  Such problems are
google-auth's errors (no credentials found, no access token: the latter reaches
the store inside gRPC's UNAVAILABLE, recognisable only by its text), 401 and 403.
Off the emulator the store reads one document when it starts, so that the
problem shows before any request does; while there is one it reads again every
``ACCESS_RECHECK`` seconds, and any call that gets through clears it: mounting a
key file or granting a role heals the daemon without a restart.

**Batching.**  Puts wait in a queue for up to ``batch_window`` seconds, then go
out in commits of at most ``max_batch_writes`` writes and ``max_batch_bytes``
bytes (an upper bound of the request's encoded size; the emulator refuses
requests over 4 MiB).  At most ``max_concurrent_commits`` commits run at once;
under load the queue fills while they run, so batches grow by themselves.

**Idempotency.**  Each article is written with ``create()``, a precondition that
its document does not exist, and its entity counters (``Increment``) go in the
same commit, which Firestore applies atomically.  One existing id fails the whole
commit with ALREADY_EXISTS, so the store then reads the batch's ids, settles the
ones that exist (False) and commits the rest again.  Each document carries a
private ``_ingest_token`` unique to the put (or replace) that wrote it last, so
when a commit did land but its answer was lost (a timeout, a dropped connection)
the retry recognises its own document and still reports True.  Two writes (puts
or replaces) of one id are never in flight at once in one process.

**Replace** is not batched: each is one Firestore transaction on the store's
threads, which reads the document, decides (created, unchanged: same model name
and version, replaced) and writes the whole document (``ingested_at`` kept, a new
token) with the counter increments: negative ones for the old document's tally on
its source's shards, positive ones for the new, chosen as a commit chooses them.
Across processes the transaction serialises replaces of one id; within one, a
replace waits for the puts and replaces of its id queued or in flight before it,
and puts queued after it wait for it.  Failures are retried and reported as for
commits; a transaction whose answer was lost is recognised by its token.  A
replace that nets a shard's count to 0 may leave +n and -n in two sub-shards:
``entity_counters`` leaves out sums of 0.

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
starting with ``~`` gets a leading ``~``.

A shard document grows with the distinct keys ever counted in it, and Firestore
refuses one over 1 MiB, or over 40,000 index entries unless ``counts`` is exempt
from indexing (``conf/firestore.indexes.json``): a commit touching a full one
fails, and so do its articles.  A key takes about 25 to 50 bytes (and, indexed,
four index entries), so a document holds some 10,000 keys when indexed and
20,000 or more when exempt; a source may count S times that of keys that are
written often, and up to R times more of rare ones, which spread over the
sub-shards.  ``entity_counters`` logs a warning when it reads a shard document
over half the size limit: raise ``counter_shards`` then.

**Failures.**  Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
RESOURCE_EXHAUSTED, INTERNAL) retry the commit with exponential backoff and
jitter until ``retry_deadline`` seconds have passed since its first attempt;
then its articles fail with :class:`StoreUnavailable`.  Any other error splits the
batch in halves until the article at fault is alone; that one fails with
:class:`PermanentStoreError` and a log line, and the rest are stored.  Every put's
Deferred fires; no write is dropped without a report (which is why BulkWriter,
which can drop a rejected batch silently, is not used).

**Reads** (``get``, ``recent``, ``entity_counters``) make one attempt; a transient
failure is a :class:`StoreUnavailable` the caller may retry.  ``recent`` with a
``source`` needs a composite index in production: ``source`` ascending,
``ingested_at`` descending, on the collection.  Documents committed together share
their server timestamp; ``recent`` then orders them by id.
"""
from __future__ import annotations

import hashlib
import math
import os
import random as _random
import re
import threading
import uuid
from collections import deque
from urllib.parse import quote

import google.auth
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import Increment
from google.cloud.firestore_v1.base_query import FieldFilter
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pipedingest.article import MAX_DISTINCT_ENTITIES
from pipedingest.idle import WhenIdle
from pipedingest.store.base import (
    MAX_DOCUMENT_BYTES,
    IArticleStore,
    PermanentStoreError,
    StoreError,
    StoreUnavailable,
    ThreadedStore,
    check_limit,
    counter_changes,
    entity_tally,
    jsonable,
    model_of,
    value_size,
)

log = Logger()

#: A private field naming the put that created the document (see the module docstring).
TOKEN_FIELD = "_ingest_token"
#: The subcollection of a source's counter document that holds its shard documents.
SHARDS_COLLECTION = "entity_shards"
#: Firestore's limit on field transforms applied to one document in one commit.
MAX_FIELD_TRANSFORMS = 500
#: The map field of a shard document that holds its counts (exempt from indexing in production).
COUNTS_FIELD = "counts"
#: The database a store uses unless told otherwise.
DEFAULT_DATABASE = "(default)"
#: What Firestore accepts as a database id: ``(default)``, or 4 to 63 lowercase letters,
#: digits and hyphens, starting with a letter and not ending with a hyphen.
DATABASE_ID = r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]"
#: Seconds between two reads that check whether a credentials problem is gone.
ACCESS_RECHECK = 10.0
#: The document the access check reads (it need not exist; nothing writes it).
ACCESS_CHECK_ID = "_ingest_access_check"
#: How gRPC reports credentials that failed to give a token (google-auth's RefreshError or
#: TransportError, raised inside the call): an UNAVAILABLE with this text.
_TOKEN_FAILED = "Getting metadata from plugin failed"

_RESERVED_FIELD = re.compile(r"^__.*__$", re.DOTALL)

_TRANSIENT = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.Aborted,
    api_exceptions.ResourceExhausted,
    api_exceptions.InternalServerError,
)


def is_transient(error: BaseException) -> bool:
    """Worth retrying unchanged?  A request over the server's size cap is not, though
    it arrives as RESOURCE_EXHAUSTED: splitting the batch is what helps."""
    if isinstance(error, api_exceptions.ResourceExhausted) and "exceeds maximum size" in str(error):
        return False
    return isinstance(error, _TRANSIENT)


def access_problem(error: BaseException, project: str | None, database: str) -> str | None:
    """What *error* says is wrong with the store's credentials or their rights, or None.

    The text names the credentials and what to do, since that is what an operator
    reads in the 503 and in ``/ready``.  None: the error is about something else.
    """
    if isinstance(error, auth_exceptions.DefaultCredentialsError):
        return (f"no usable Google credentials ({_describe(error)}); set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service account key file, run `gcloud auth application-default login`, or run with a "
                "service account attached")
    if isinstance(error, auth_exceptions.GoogleAuthError) or (
            isinstance(error, api_exceptions.ServiceUnavailable) and _TOKEN_FAILED in str(error)):
        return f"the Google credentials could not get an access token ({_describe(error)})"
    if isinstance(error, api_exceptions.Unauthenticated):
        return f"Firestore did not accept the Google credentials ({_describe(error)})"
    if isinstance(error, api_exceptions.PermissionDenied):
        return (f"the Google credentials may not use Firestore database {database} of project {project} "
                f"({_describe(error)}); grant their account roles/datastore.user, and check that the "
                "Firestore API is enabled")
    return None


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


class _Pending:
    """One put on its way: what to write, how big it is, and who is waiting.

    ``shards`` holds the article's counts by shard: ``{shard: {(text key, label key): n}}``.
    ``size`` bounds the request bytes of the put in a commit of its own: its article's
    write (``article_size``) and its counts' (see :class:`_ShardPlan`); sharing a commit
    it needs no more, as its counts join the others' in shard documents.
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
        self.shard_write_size = _shard_write_size(path_bytes, self.source)
        alone = _ShardPlan(max_transforms)
        alone.add(self)
        self.size = self.article_size + alone.bytes
        self.deferred: Deferred = Deferred()
        self.created: bool | None = None


def _shard_write_size(path_bytes: int, source: str) -> int:
    """An upper bound of one shard-document write of *source*, its increments aside."""
    return path_bytes + len(document_id(source).encode("utf-8")) + len(SHARDS_COLLECTION) + 84


class _Replacement:
    """One replace on its way: the checked document (a :class:`_Pending`), and what the latest
    attempt that wrote decided, so that a retry which finds its token reports that."""

    __slots__ = ("item", "outcome", "counters")

    def __init__(self, item: _Pending):
        self.item = item
        self.outcome: str | None = None
        self.counters: _ShardPlan | None = None


class _Turns:
    """The article ids being written in this process, and the replaces waiting for one.

    A batch of puts takes its ids when it is cut, and queued puts of an id taken
    wait; a replace waits until its id is free and every put of it queued before
    it has been settled.  So one id is never written by two commits at once here.
    """

    def __init__(self):
        self._taken: set[str] = set()
        self._waiting: dict[str, deque[Deferred]] = {}

    def __contains__(self, article_id: str) -> bool:
        return article_id in self._taken

    def take(self, ids: set[str]) -> None:
        self._taken |= ids

    def wait(self, article_id: str, queued: bool) -> Deferred:
        """Fires once *article_id* is the caller's: at once unless it is taken, waited for, or *queued*."""
        if not queued and article_id not in self._taken and article_id not in self._waiting:
            self._taken.add(article_id)
            return succeed(None)
        turn: Deferred = Deferred()
        self._waiting.setdefault(article_id, deque()).append(turn)
        return turn

    def give_back(self, article_id: str) -> None:
        """The writer of *article_id* is done: hand it to the first replace waiting for it, or free it."""
        waiting = self._waiting.get(article_id)
        if not waiting:
            self._taken.discard(article_id)
            return
        turn = waiting.popleft()
        if not waiting:
            del self._waiting[article_id]
        self._taken.add(article_id)
        turn.callback(None)


def _documents_for(keys: int, max_transforms: int) -> int:
    """Shard documents (writes) that *keys* distinct counted keys of one shard need in one commit."""
    return math.ceil(keys / max_transforms)


def _key_size(key: tuple[str, str]) -> int:
    """An upper bound of one increment's encoded size: its field path, quoted and escaped, and its value."""
    text, label = key
    return 3 * len(text.encode("utf-8")) + 3 * len(label.encode("utf-8")) + 48


class _ShardPlan:
    """The counter writes of one commit: its articles' counts summed per shard document.

    A shard's distinct keys go ``max_transforms`` to a document (Firestore applies
    at most 500 field transforms to one document per commit), so a shard needs one
    write per started ``max_transforms`` keys, however many articles share them;
    a key shared by several articles is sent once.
    """

    def __init__(self, max_transforms: int):
        self.max_transforms = max_transforms
        self.counts: dict[tuple[str, int], dict[tuple[str, str], int]] = {}
        #: Shard-document writes the commit needs so far, and an upper bound of their bytes.
        self.writes = 0
        self.bytes = 0

    def cost(self, item: _Pending) -> tuple[int, int]:
        """The shard-document writes and bytes that adding *item* would add."""
        writes = size = 0
        for shard, keys in item.shards.items():
            counts = self.counts.get((item.source, shard), {})
            new = [key for key in keys if key not in counts]
            if new:
                documents = (_documents_for(len(counts) + len(new), self.max_transforms)
                             - _documents_for(len(counts), self.max_transforms))
                writes += documents
                size += documents * item.shard_write_size + sum(_key_size(key) for key in new)
        return writes, size

    def add(self, item: _Pending) -> None:
        self.add_counts(item.source, item.shards, item.shard_write_size)

    def add_counts(self, source: str, shards: dict, shard_write_size: int) -> None:
        """Add *source*'s ``{shard: {(text key, label key): n}}``; a write of its costs *shard_write_size*."""
        for shard, keys in shards.items():
            counts = self.counts.setdefault((source, shard), {})
            before = _documents_for(len(counts), self.max_transforms)
            for key, n in keys.items():
                if key not in counts:
                    counts[key] = 0
                    self.bytes += _key_size(key)
                counts[key] += n
            documents = _documents_for(len(counts), self.max_transforms) - before
            self.writes += documents
            self.bytes += documents * shard_write_size

    def documents(self, subshards: int, first_sub: int):
        """``(source, shard, sub-shard, {(text key, label key): n})`` for each document to write.

        A shard's first ``max_transforms`` keys go to sub-shard *first_sub*, the next
        ones to the following sub-shards (past R only when one commit has more than
        R × ``max_transforms`` keys of one shard), so no document gets two writes.
        """
        for (source, shard), counts in self.counts.items():
            keys = list(counts.items())
            for chunk, start in enumerate(range(0, len(keys), self.max_transforms)):
                sub = (first_sub + chunk) % subshards if chunk < subshards else chunk
                yield source, shard, sub, dict(keys[start:start + self.max_transforms])


class _Commit:
    """What one thread-side commit did, for the counters in ``state()``."""

    def __init__(self):
        self.commits = 0
        self.conflicts = 0
        self.writes = 0
        self.bytes = 0
        self.counter_writes = 0
        self.counter_increments = 0


@implementer(IArticleStore)
class FirestoreStore(ThreadedStore):
    """Articles in a Firestore collection, document id = article id.

    :param project: the Google Cloud project; default ``$GOOGLE_CLOUD_PROJECT``, else
        the project of the Application Default Credentials (found at start).
    :param database: the Firestore database id: ``(default)`` or a named database.
    :param collection: the articles' collection.
    :param entity_counters: keep per-source entity counters in shard documents (see the
        module docstring), applied in the commit that creates the article.
    :param counters_collection: the top collection of the counters (``sources``).
    :param counter_shards: S, the shards an entity text is hashed among (capacity).
    :param counter_subshards: R, the documents of one shard that commits pick among (write rate).
    :param max_field_transforms: increments on one document per commit (Firestore: 500).
    :param threads: the size of the store's thread pool.
    :param batch_window: seconds a put may wait for others to share its commit.
    :param max_batch_writes: writes per commit (Firestore: 500); with counters, enough for
        an article with ``MAX_DISTINCT_ENTITIES`` entities: 1 + S + that / ``max_field_transforms``.
    :param max_batch_bytes: estimated request bytes per commit (the emulator caps 4 MiB).
    :param max_concurrent_commits: commits in flight at once (keep below ``threads``
        so reads still find a thread).
    :param rpc_timeout: seconds one call to Firestore may take.
    :param retry_initial, retry_maximum, retry_deadline: backoff of transient failures:
        the first delay, the largest, and the total time before giving up.
    :param max_document_bytes: refuse larger documents with :class:`DocumentTooLarge`.
    :param clock: IReactorTime for the batch window, the backoff and the access rechecks.
    :param random: a ``random.Random`` for the jitter.
    """

    kind = "firestore"

    def __init__(self, project: str | None = None, database: str = DEFAULT_DATABASE,
                 collection: str = "articles",
                 entity_counters: bool = False, counters_collection: str = "sources",
                 counter_shards: int = 64, counter_subshards: int = 8,
                 max_field_transforms: int = MAX_FIELD_TRANSFORMS, threads: int = 4,
                 batch_window: float = 0.05, max_batch_writes: int = 500,
                 max_batch_bytes: int = 3 * 1024 * 1024, max_concurrent_commits: int = 2,
                 rpc_timeout: float = 30.0, retry_initial: float = 0.1, retry_maximum: float = 5.0,
                 retry_deadline: float = 60.0, max_document_bytes: int = MAX_DOCUMENT_BYTES,
                 reactor=None, clock=None, random: _random.Random | None = None):
        if max_concurrent_commits < 1 or threads < 1:
            raise ValueError("threads and max_concurrent_commits must be at least 1")
        if not 1 <= max_batch_writes <= 500:
            raise ValueError(f"max_batch_writes must be from 1 to 500, not {max_batch_writes}")
        if not collection or "/" in collection:
            raise ValueError(f"collection must be a collection id without '/', not {collection!r}")
        if not re.fullmatch(DATABASE_ID, database):
            raise ValueError(f"database must be '(default)' or a database id (4 to 63 lowercase letters, "
                             f"digits and hyphens, starting with a letter), not {database!r}")
        if counter_shards < 1 or counter_subshards < 1:
            raise ValueError("counter_shards and counter_subshards must be at least 1")
        if not 1 <= max_field_transforms <= MAX_FIELD_TRANSFORMS:
            raise ValueError(f"max_field_transforms must be from 1 to {MAX_FIELD_TRANSFORMS}, "
                             f"not {max_field_transforms}")
        most = 1 + counter_shards + math.ceil(MAX_DISTINCT_ENTITIES / max_field_transforms)
        if entity_counters and most > max_batch_writes:
            raise ValueError(
                f"max_batch_writes={max_batch_writes} is too small for the entity counters: an article "
                f"with {MAX_DISTINCT_ENTITIES} distinct entities may need {most} writes "
                f"(1 + counter_shards + {MAX_DISTINCT_ENTITIES} / max_field_transforms); "
                f"raise max_batch_writes or lower counter_shards")
        super().__init__(threads=threads, reactor=reactor, clock=clock, max_document_bytes=max_document_bytes)
        #: The project: given, from the environment, or (once started) the credentials'.
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.database = database
        self.collection = self.container = collection
        self.entity_counters_enabled = entity_counters
        self.counters_collection = counters_collection
        self.counter_shards = counter_shards
        self.counter_subshards = counter_subshards
        self.max_field_transforms = max_field_transforms
        self.batch_window = batch_window
        self.max_batch_writes = max_batch_writes
        self.max_batch_bytes = max_batch_bytes
        self.max_concurrent_commits = max_concurrent_commits
        self.rpc_timeout = rpc_timeout
        self.retry_initial = retry_initial
        self.retry_maximum = retry_maximum
        self.retry_deadline = retry_deadline
        self._random = random or _random.Random()
        self._client_lock = threading.Lock()
        self._client_instance = None
        # The longest document path prefix a write names (project, database, collections); a
        # project still to be found takes 100 bytes (ids have at most 30, domain-scoped ones more).
        self._path_bytes = len(f"projects/{self.project or 'x' * 100}/databases/{database}/documents/"
                               f"{collection}/{counters_collection}/") + 64
        self._queue: deque[_Pending] = deque()
        self._queued_counters = _ShardPlan(max_field_transforms)
        self._turns = _Turns()
        self._in_flight_items = 0
        self._commits_running = 0
        self._replacing = 0
        self._timer = None
        self._flushed = WhenIdle(lambda: not self._queue and not self._commits_running and not self._replacing)
        #: What is wrong with the credentials (see ``access_problem``), or None.
        self._access_problem: str | None = None
        self._access_checking = False
        self._access_checked = False  # has a check ended yet?
        self._access_recheck = None
        self._stats.update({"commits": 0, "retries": 0, "created": 0, "existing": 0, "replaced": 0,
                            "unchanged": 0, "conflicts": 0, "split": 0,
                            "counter_writes": 0, "counter_increments": 0, "access_errors": 0})
        self._largest = {"writes": 0, "bytes": 0}

    # -- starting: the project and the credentials ----------------------------

    @staticmethod
    def on_emulator() -> bool:
        return bool(os.environ.get("FIRESTORE_EMULATOR_HOST"))

    def startService(self):
        """Start the pool, then find the credentials and the project (in a thread: google-auth may
        block); fails when no project can be found.  Off the emulator, check the access in the
        background (see the module docstring)."""
        super().startService()
        return self.in_thread(self._open).addCallbacks(self._opened, self._open_failed)

    def _open(self):
        """``(project, credentials error or None)``, in a pool thread."""
        try:
            return self._client().project, None
        except auth_exceptions.DefaultCredentialsError as error:
            if self.project is None:
                raise StoreError(
                    f"no Google Cloud project for Firestore: 'project' is not set, GOOGLE_CLOUD_PROJECT is not "
                    f"set, and no Application Default Credentials name one ({_describe(error)})") from None
            return self.project, error

    def _opened(self, opened):
        self.project, error = opened
        log.info("{name}: Firestore database {database} of project {project}{emulator}", name=self.name,
                 database=self.database, project=self.project,
                 emulator=" (emulator)" if self.on_emulator() else "")
        if error is not None:
            self._access_failed(access_problem(error, self.project, self.database))
        elif not self.on_emulator():
            self._check_access()

    def _open_failed(self, failure):
        Service.stopService(self)
        self._stop_pool(None)
        return failure

    def stopService(self):
        if self._access_recheck is not None and self._access_recheck.active():
            self._access_recheck.cancel()
        self._access_recheck = None
        return super().stopService()

    # -- the client, in the pool's threads ------------------------------------

    def _client(self):
        """The client, created on first use (again after a failed attempt: credentials may appear)."""
        with self._client_lock:
            if self._client_instance is None:
                if self.on_emulator():
                    credentials, project = AnonymousCredentials(), self.project
                else:
                    credentials, found = google.auth.default(scopes=firestore.Client.SCOPE)
                    project = self.project or found
                    if not project:
                        raise StoreError("no Google Cloud project for Firestore: 'project' is not set, "
                                         "GOOGLE_CLOUD_PROJECT is not set, and the Application Default "
                                         "Credentials name none")
                self._client_instance = firestore.Client(project=project, credentials=credentials,
                                                         database=self.database)
            return self._client_instance

    def closing(self):
        return self.in_thread(self._close_client)

    def _close_client(self):
        with self._client_lock:
            client, self._client_instance = self._client_instance, None
        if client is not None:
            client.close()

    # -- access: problems with the credentials ---------------------------------

    def readiness(self) -> str | None:
        """Why the daemon cannot be ready because of this store's credentials, or None."""
        if self._access_problem is not None:
            return self._access_problem
        if self._access_checking and not self._access_checked:
            return f"checking access to Firestore database {self.database} of project {self.project}"
        return None

    def _check_access(self):
        """Read one document, to learn whether the credentials work (the result is not needed)."""
        self._access_recheck = None
        if not self.running or self._access_checking:
            return
        self._access_checking = True

        def read():
            (self._client().collection(self.collection).document(ACCESS_CHECK_ID)
             .get(retry=None, timeout=self.rpc_timeout))

        def checked(_):
            self._access_checking, self._access_checked = False, True
            self._access_ok()

        def failed(failure):
            self._access_checking, self._access_checked = False, True
            problem = access_problem(failure.value, self.project, self.database)
            if problem is not None:
                self._access_failed(problem)
                return
            log.warn("{name}: checking access to Firestore failed: {error}", name=self.name,
                     error=_describe(failure.value))
            if self._access_problem is not None:
                self._schedule_access_recheck()  # not known to be gone: look again later

        self.in_thread(read).addCallbacks(checked, failed)

    def _access_failed(self, problem: str):
        """A call failed for *problem*: report it (once) and look again from time to time."""
        self._stats["access_errors"] += 1
        if problem != self._access_problem:
            log.error("{name}: {problem}", name=self.name, problem=problem)
        self._access_problem = problem
        self._schedule_access_recheck()

    def _access_ok(self):
        """A call got through: whatever was wrong with the credentials is not any more."""
        if self._access_problem is not None:
            log.info("{name}: Firestore accepts the credentials again", name=self.name)
            self._access_problem = None
        if self._access_recheck is not None and self._access_recheck.active():
            self._access_recheck.cancel()
        self._access_recheck = None

    def _schedule_access_recheck(self):
        if self.running and self._access_recheck is None:
            self._access_recheck = self._clock.callLater(ACCESS_RECHECK, self._check_access)

    # -- put: queue, batch, commit ---------------------------------------------

    def prepare(self, article_id, fields, tally):
        """The put on its way; the constructor made sure that its writes fit one commit."""
        item = _Pending(article_id, fields, self._shards_of(tally), self._path_bytes, self.max_field_transforms)
        if item.size > self.max_batch_bytes:
            raise PermanentStoreError(
                f"article {article_id!r} needs about {item.size} request bytes, more than "
                f"max_batch_bytes={self.max_batch_bytes}", article_id)
        return item

    def _shards_of(self, tally: dict) -> dict[int, dict[tuple[str, str], int]]:
        """An :func:`entity_tally` by shard, keyed by map keys: ``{shard: {(text key, label key): n}}``."""
        shards: dict[int, dict[tuple[str, str], int]] = {}
        for text, labels in tally.items():
            keys = shards.setdefault(shard_of(text, self.counter_shards), {})
            for label, n in labels.items():
                keys[field_name(text), field_name(label)] = n
        return shards

    def write(self, item):
        self._queue.append(item)
        self._queued_counters.add(item)
        self._schedule()
        return item.deferred

    def _schedule(self):
        if len(self._queue) + self._queued_counters.writes >= self.max_batch_writes:
            self._drain()
        elif self._timer is None and self._queue:
            self._timer = self._clock.callLater(self.batch_window, self._drain)

    def _drain(self):
        """Start commits for what is queued, as far as the concurrency limit allows."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        while self._queue and self._commits_running < self.max_concurrent_commits:
            batch = self._take_batch()
            if not batch:
                break  # everything queued waits for the same ids in flight
            self._commits_running += 1
            self._in_flight_items += len(batch)
            self._commit(batch).addErrback(self._commit_broke, batch).addBoth(self._commit_ended)
        self._check_flushed()

    def _take_batch(self) -> list[_Pending]:
        """The oldest queued puts that fit one commit, at most one per id, none already in flight.

        A commit's writes are its articles plus the shard documents of their summed
        counts (:class:`_ShardPlan`), which grow only when a shard gets more distinct
        keys than one document may take in a commit.
        """
        batch: list[_Pending] = []
        ids: set[str] = set()
        counters = _ShardPlan(self.max_field_transforms)
        article_bytes = 0
        kept: deque[_Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.article_id in ids or item.article_id in self._turns:
                kept.append(item)
                continue
            writes, size = counters.cost(item)
            fits = (len(batch) + 1 + counters.writes + writes <= self.max_batch_writes
                    and article_bytes + item.article_size + counters.bytes + size <= self.max_batch_bytes)
            if not fits:
                kept.append(item)
                if batch:
                    break
                continue
            batch.append(item)
            ids.add(item.article_id)
            counters.add(item)
            article_bytes += item.article_size
        kept.extend(self._queue)
        self._queue = kept
        self._queued_counters = _ShardPlan(self.max_field_transforms)
        for item in kept:
            self._queued_counters.add(item)
        self._turns.take(ids)
        return batch

    def _commit_broke(self, failure, batch: list[_Pending]):
        """A bug, not a Firestore answer: fail what is undecided rather than lose it."""
        log.failure("storing a batch of {count} articles broke", failure, count=len(batch))
        undecided = [item for item in batch if not item.deferred.called]
        for item in undecided:
            item.created = None
        self._fail(undecided, StoreError, f"internal error while storing: {failure.getErrorMessage()}")

    def _commit_ended(self, _):
        self._commits_running -= 1
        if self._queue:
            self._drain()
        self._check_flushed()

    @inlineCallbacks
    def _commit(self, batch: list[_Pending]):
        """Commit *batch* until each of its puts is settled; never fails."""
        first_attempt = self._clock.seconds()
        failures = 0
        while batch:
            first_sub = self._random.randrange(self.counter_subshards) if self.entity_counters_enabled else 0
            try:
                result = yield self.in_thread(self._commit_in_thread, batch, first_sub).addBoth(
                    self.commit_took, self._clock.seconds())
            except Exception as error:
                batch = self._settle_decided(batch)
                if not batch:
                    return
                problem = access_problem(error, self.project, self.database)
                if problem is not None:  # every write of the batch would fail alike: no retry, no split
                    self._access_failed(problem)
                    self._fail(batch, StoreUnavailable, problem)
                    return
                if is_transient(error):
                    delay = self._backoff(failures, first_attempt)
                    failures += 1
                    if delay is None:
                        self._fail(batch, StoreUnavailable, f"Firestore kept failing for "
                                   f"{self.retry_deadline:g}s; last error: {_describe(error)}")
                        return
                    self._stats["retries"] += 1
                    log.warn("Firestore commit of {count} articles failed ({error}); retry {n} in {delay:.2f}s",
                             count=len(batch), error=_describe(error), n=failures, delay=delay)
                    yield task.deferLater(self._clock, delay, lambda: None)
                    continue
                if len(batch) == 1:
                    self._fail(batch, PermanentStoreError,
                               f"Firestore refused article {batch[0].article_id!r}: {_describe(error)}")
                    return
                self._stats["split"] += 1
                middle = len(batch) // 2
                yield self._commit(batch[:middle])
                yield self._commit(batch[middle:])
                return
            else:
                self._access_ok()
                self._stats["commits"] += result.commits
                self._stats["conflicts"] += result.conflicts
                self._stats["counter_writes"] += result.counter_writes
                self._stats["counter_increments"] += result.counter_increments
                self._largest["writes"] = max(self._largest["writes"], result.writes)
                self._largest["bytes"] = max(self._largest["bytes"], result.bytes)
                self._settle_decided(batch)
                return

    def _backoff(self, failures: int, first_attempt: float) -> float | None:
        """Seconds to wait after the transient failure number *failures* (from 0): exponential, with
        jitter; None when retrying then would pass ``retry_deadline`` since *first_attempt*."""
        delay = min(self.retry_maximum, self.retry_initial * 2 ** failures)
        delay = delay / 2 + self._random.uniform(0, delay / 2)
        if self._clock.seconds() + delay - first_attempt > self.retry_deadline:
            return None
        return delay

    def _commit_in_thread(self, batch: list[_Pending], first_sub: int = 0) -> _Commit:
        """Create the batch's documents and counters; decide ``created`` for each put.

        Runs in a pool thread.  A commit that fails on an existing id is followed by a
        read of the batch's ids, and the still-absent ones are committed again, with
        the counts of those alone.  *first_sub* is the sub-shard its counts go to.
        """
        client = self._client()
        articles = client.collection(self.collection)
        pending = [item for item in batch if item.created is None]
        outcome = _Commit()
        for _ in range(len(pending) + 1):
            writes = client.batch()
            counters = self._add_writes(client, writes, pending, first_sub)
            try:
                writes.commit(retry=None, timeout=self.rpc_timeout)
            except api_exceptions.AlreadyExists:
                outcome.conflicts += 1
                snapshots = client.get_all([articles.document(item.article_id) for item in pending],
                                           field_paths=[TOKEN_FIELD], retry=None, timeout=self.rpc_timeout)
                tokens = {snapshot.id: (snapshot.to_dict() or {}).get(TOKEN_FIELD)
                          for snapshot in snapshots if snapshot.exists}
                for item in pending:
                    if item.article_id in tokens:
                        item.created = tokens[item.article_id] == item.token
                pending = [item for item in pending if item.created is None]
                if not pending:
                    return outcome
                continue
            outcome.commits += 1
            outcome.writes = len(pending) + counters.writes
            outcome.bytes = sum(item.article_size for item in pending) + counters.bytes
            outcome.counter_writes = counters.writes
            outcome.counter_increments = sum(len(keys) for keys in counters.counts.values())
            for item in pending:
                item.created = True
            return outcome
        raise api_exceptions.Aborted("documents kept appearing and vanishing during the commit")

    def _add_writes(self, client, writes, items: list[_Pending], first_sub: int) -> _ShardPlan:
        """The articles' creates and their summed counts, into the WriteBatch *writes*; the counts' plan."""
        articles = client.collection(self.collection)
        counters = _ShardPlan(self.max_field_transforms)
        for item in items:
            writes.create(articles.document(item.article_id),
                          dict(item.fields, ingested_at=firestore.SERVER_TIMESTAMP, **{TOKEN_FIELD: item.token}))
            counters.add(item)
        self._add_counter_writes(client, writes, counters, first_sub)
        return counters

    def _add_counter_writes(self, client, writes, counters: _ShardPlan, first_sub: int) -> None:
        """The shard documents' increments of *counters*, into *writes* (a batch or a transaction)."""
        for source, shard, sub, counts in counters.documents(self.counter_subshards, first_sub):
            nested: dict[str, dict[str, Increment]] = {}
            for (text, label), n in counts.items():
                nested.setdefault(text, {})[label] = Increment(n)
            writes.set(self._shards(client, source).document(f"s{self.counter_shards}-{shard}-{sub}"),
                       {COUNTS_FIELD: nested}, merge=True)

    def _shards(self, client, source: str):
        """The collection of *source*'s shard documents."""
        return (client.collection(self.counters_collection).document(document_id(source))
                .collection(SHARDS_COLLECTION))

    def _settle_decided(self, batch: list[_Pending]) -> list[_Pending]:
        """Fire the Deferreds of the puts already decided; return the others."""
        undecided = []
        for item in batch:
            if item.created is None:
                undecided.append(item)
                continue
            self._stats["created" if item.created else "existing"] += 1
            self._release(item)
            item.deferred.callback(item.created)
        return undecided

    def _fail(self, batch: list[_Pending], error_class, message: str):
        for item in batch:
            self._stats["errors"] += 1
            log.error("article {article_id} not stored: {message}", article_id=item.article_id,
                      message=message)
            self._release(item)
            item.deferred.errback(error_class(message, item.article_id))

    def _release(self, item: _Pending):
        self._in_flight_items -= 1
        self._turns.give_back(item.article_id)

    # -- replace: one transaction each ----------------------------------------

    def rewrite(self, item: _Pending) -> Deferred:
        self._replacing += 1
        done = self._replace(_Replacement(item))
        done.addCallbacks(self._replaced, self._replace_failed, errbackArgs=(item.article_id,))
        return done.addBoth(self._replace_ended)

    @inlineCallbacks
    def _replace(self, replacement: _Replacement):
        """Run the replace's transaction once its id is free, retrying transient failures; the outcome."""
        article_id = replacement.item.article_id
        yield self._turns.wait(article_id, queued=any(item.article_id == article_id for item in self._queue))
        try:
            first_attempt = self._clock.seconds()
            failures = 0
            while True:
                first_sub = self._random.randrange(self.counter_subshards) if self.entity_counters_enabled else 0
                try:
                    outcome, counters = yield self.in_thread(
                        self._replace_in_thread, replacement, first_sub).addBoth(
                        self.commit_took, self._clock.seconds())
                except StoreError:
                    raise
                except Exception as error:
                    problem = access_problem(error, self.project, self.database)
                    if problem is not None:
                        self._access_failed(problem)
                        raise StoreUnavailable(problem, article_id) from None
                    if not is_transient(error):
                        raise PermanentStoreError(f"Firestore refused to replace article {article_id!r}: "
                                                  f"{_describe(error)}", article_id) from None
                    delay = self._backoff(failures, first_attempt)
                    failures += 1
                    if delay is None:
                        raise StoreUnavailable(f"Firestore kept failing for {self.retry_deadline:g}s; "
                                               f"last error: {_describe(error)}", article_id) from None
                    self._stats["retries"] += 1
                    log.warn("replacing article {article_id} failed ({error}); retry {n} in {delay:.2f}s",
                             article_id=article_id, error=_describe(error), n=failures, delay=delay)
                    yield task.deferLater(self._clock, delay, lambda: None)
                    continue
                self._access_ok()
                if counters is not None:
                    self._stats["commits"] += 1
                    self._stats["counter_writes"] += counters.writes
                    self._stats["counter_increments"] += sum(len(keys) for keys in counters.counts.values())
                return outcome
        finally:
            self._turns.give_back(article_id)

    def _replace_in_thread(self, replacement: _Replacement, first_sub: int):
        """``(outcome, counter plan)`` of one transaction (see the module docstring); the plan is None
        when nothing was written.  Runs in a pool thread."""
        item = replacement.item
        client = self._client()
        reference = client.collection(self.collection).document(item.article_id)

        @firestore.transactional
        def replace(transaction):
            snapshot = reference.get(transaction=transaction, retry=None, timeout=self.rpc_timeout)
            stored = (snapshot.to_dict() or {}) if snapshot.exists else None
            if stored is not None and stored.get(TOKEN_FIELD) == item.token:
                return replacement.outcome, replacement.counters  # an attempt whose answer was lost landed
            if stored is not None and model_of(stored) == model_of(item.fields):
                return "unchanged", None
            counters = _ShardPlan(self.max_field_transforms)
            if self.entity_counters_enabled:
                old_tally = entity_tally(stored.get("entities")) if stored is not None else {}
                changes = counter_changes(stored.get("source") if stored is not None else item.source, old_tally,
                                          item.source, entity_tally(item.fields.get("entities")))
                for source, tally in changes.items():
                    counters.add_counts(source, self._shards_of(tally), _shard_write_size(self._path_bytes, source))
            size = item.article_size + counters.bytes
            if size > self.max_batch_bytes:
                raise PermanentStoreError(f"replacing article {item.article_id!r} needs about {size} request "
                                          f"bytes, more than max_batch_bytes={self.max_batch_bytes}",
                                          item.article_id)
            ingested_at = (stored or {}).get("ingested_at") or firestore.SERVER_TIMESTAMP
            transaction.set(reference, dict(item.fields, ingested_at=ingested_at, **{TOKEN_FIELD: item.token}))
            self._add_counter_writes(client, transaction, counters, first_sub)
            replacement.outcome = "created" if stored is None else "replaced"
            replacement.counters = counters
            return replacement.outcome, counters

        try:
            return replace(client.transaction())
        except StoreError:
            raise
        except Exception as error:
            if replacement.outcome is not None and self._written_by(reference, item.token):
                return replacement.outcome, replacement.counters
            cause = _behind(error)
            if cause is error:
                raise
            raise cause from None

    def _written_by(self, reference, token: str) -> bool:
        """Does the document carry *token*: did a transaction whose answer was lost land?  False when
        this read fails too: the caller then reports the transaction's own error."""
        try:
            snapshot = reference.get(field_paths=[TOKEN_FIELD], retry=None, timeout=self.rpc_timeout)
        except Exception:
            return False
        return snapshot.exists and (snapshot.to_dict() or {}).get(TOKEN_FIELD) == token

    def _replaced(self, outcome: str) -> str:
        self._stats[outcome] += 1
        return outcome

    def _replace_failed(self, failure, article_id: str):
        self._stats["errors"] += 1
        log.error("article {article_id} not replaced: {message}", article_id=article_id,
                  message=failure.getErrorMessage())
        return failure

    def _replace_ended(self, result):
        self._replacing -= 1
        if self._queue:  # puts of its id may have waited for it
            if self.running:
                self._schedule()
            else:
                self._drain()
        self._check_flushed()
        return result

    # -- stopping --------------------------------------------------------------

    def flush(self) -> Deferred:
        """Commit everything queued now, and fire when every accepted put is settled."""
        if self._queue:
            self._drain()
        return self._flushed.wait()

    def _check_flushed(self):
        self._flushed.check()

    # -- reads -----------------------------------------------------------------

    def get(self, article_id):
        return self._read(self._get, article_id)

    def _get(self, article_id):
        snapshot = (self._client().collection(self.collection).document(article_id)
                    .get(retry=None, timeout=self.rpc_timeout))
        return _document(snapshot) if snapshot.exists else None

    def recent(self, source=None, limit=20):
        try:
            check_limit(limit)
        except ValueError:
            return fail()
        return self._read(self._recent, source, limit)

    def _recent(self, source, limit):
        query = self._client().collection(self.collection)
        if source is not None:
            query = query.where(filter=FieldFilter("source", "==", source))
        query = (query.order_by("ingested_at", direction=firestore.Query.DESCENDING)
                 .order_by("__name__", direction=firestore.Query.DESCENDING).limit(limit))
        return [_document(snapshot) for snapshot in query.stream(retry=None, timeout=self.rpc_timeout)]

    def entity_counters(self, source):
        return self._read(self._entity_counters, source)

    def _entity_counters(self, source):
        """The sum of every shard document of *source* (of any S and R)."""
        counters: dict[str, dict] = {}
        for snapshot in self._shards(self._client(), source).stream(retry=None, timeout=self.rpc_timeout):
            data = snapshot.to_dict() or {}
            size = value_size(data)
            if size > self.max_document_bytes // 2:
                log.warn("entity shard {path} holds {size} bytes, over half of the {limit}-byte limit; "
                         "raise counter_shards (now {shards})", path=snapshot.reference.path, size=size,
                         limit=self.max_document_bytes, shards=self.counter_shards)
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

    def _read(self, function, *args):
        def answered(result):
            self._access_ok()
            return result

        def translate(failure):
            error = failure.value
            if isinstance(error, StoreError):
                return failure
            problem = access_problem(error, self.project, self.database)
            if problem is not None:
                self._access_failed(problem)
                raise StoreUnavailable(problem)
            if is_transient(error):
                raise StoreUnavailable(f"Firestore read failed: {_describe(error)}")
            raise StoreError(f"Firestore read failed: {_describe(error)}")

        return self.in_thread(function, *args).addCallbacks(answered, translate)

    # -- status ----------------------------------------------------------------

    def state(self):
        return {
            "kind": self.kind,
            "running": bool(self.running),
            "project": self.project,
            "database": self.database,
            "collection": self.collection,
            "emulator": os.environ.get("FIRESTORE_EMULATOR_HOST"),
            "access_problem": self._access_problem,
            "queued": len(self._queue),
            "in_flight": self._in_flight_items + self._replacing,
            "commits_in_flight": self._commits_running,
            **self._stats,
            "largest_commit": dict(self._largest),
            "batch": {"window": self.batch_window, "max_writes": self.max_batch_writes,
                      "max_bytes": self.max_batch_bytes},
            "counters": {"enabled": self.entity_counters_enabled, "shards": self.counter_shards,
                         "subshards": self.counter_subshards, "max_field_transforms": self.max_field_transforms},
            "threads": self.thread_state(),
        }


def _behind(error: BaseException) -> BaseException:
    """The error behind one the transaction machinery raised: the client reports a contended transaction
    whose attempts ran out as a ValueError caused by the ABORTED, and a transaction that failed to begin
    as the ValueError of its rollback, raised while handling the begin's error."""
    while isinstance(error, ValueError) and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:300]}"


def _document(snapshot) -> dict:
    data = snapshot.to_dict()
    data.pop(TOKEN_FIELD, None)
    return jsonable({"id": snapshot.id, **data})
