"""Firestore as GCP users run it: named databases, the credentials' project, credential errors, the index file.

The daemons here are real ``twistd ingest`` processes on ``conf/prod.yaml``.  Those that must meet no
credentials run without the emulator and with ``GOOGLE_APPLICATION_CREDENTIALS`` naming a missing file, so
that the real google-auth raises its real error at first use, before any network is tried; every wait is
bounded.  There is no network to Google here: what Firestore itself answers to bad credentials (401, 403)
cannot be provoked, so those answers are checked where they are told apart (``access_problem``).
"""
from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.grpc import AuthMetadataPlugin
from google.auth.transport.requests import Request
from google.cloud import firestore as gcf
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports.grpc import FirestoreGrpcTransport
from google.cloud.firestore_v1.types import StructuredQuery
from google.oauth2 import service_account
from twisted.internet import reactor, task

from pipedingest.article import STORED_FIELDS
from pipedingest.config.loader import load_config
from pipedingest.providers.stores import DATABASE_ID as CONFIG_DATABASE_ID
from pipedingest.service import build_daemon
from pipedingest.store.base import StoreError, StoreUnavailable, value_size
from pipedingest.store.firestore import (
    ACCESS_RECHECK,
    COUNTS_FIELD,
    DATABASE_ID,
    SHARDS_COLLECTION,
    FirestoreStore,
    access_problem,
)
from pipedingest.store.firestore import queries
from pipedingest.store.firestore.counters import DAY_SHARDS_COLLECTION
from pipedingest.store.firestore.days import DAYS_COLLECTION
from tests.conftest import PROD, ROOT, config_errors
from tests.twistd_process import Daemon, twistd

INDEXES = os.path.join(ROOT, "conf", "firestore.indexes.json")
FIREBASE = os.path.join(ROOT, "firebase.json")
ARTICLE = {"id": "named-1", "title": "Merger", "source": "wire",
           "body": "Siemens bought a factory in Munich from Bosch on Friday."}
#: Environment variables through which google-auth or the client could find a project or credentials.
GOOGLE_VARIABLES = ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS",
                    "CLOUDSDK_CONFIG", "CLOUDSDK_CORE_PROJECT")


def without_google(tmp_path, **extra) -> dict:
    """The environment with none of Google's variables, a fresh HOME (no gcloud configuration), and *extra*."""
    env = {name: value for name, value in os.environ.items() if name not in GOOGLE_VARIABLES}
    env.update(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), **extra)
    return env


def request(daemon: Daemon, path: str, payload=None):
    """``(status, headers, JSON body)`` of a GET, or a POST of *payload*, with the daemon's token."""
    headers = {"authorization": f"Bearer {daemon.token}", "content-type": "application/json"}
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    try:
        with urllib.request.urlopen(urllib.request.Request(daemon.base + path, data, headers), timeout=30) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())


def wait_for_ready_reason(daemon: Daemon, text: str, timeout: float = 120.0) -> dict:
    """Poll ``/ready`` until its reason contains *text*; its answer."""
    import time

    daemon.wait_listening(timeout)
    deadline = time.monotonic() + timeout
    while True:
        status, _, answer = request(daemon, "/ready")
        if text in answer.get("reason", ""):
            assert status == 503, answer
            return answer
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"/ready never gave a reason with {text!r}; last {answer}:\n{daemon.output[-5000:]}")
        time.sleep(0.1)


def clear_database(emulator, database: str) -> None:
    """Delete every document of *database* in the emulator (the fixture clears only ``(default)``)."""
    url = f"http://{emulator.host}/emulator/v1/projects/{emulator.project}/databases/{database}/documents"
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30) as answer:
        answer.read()


def service_account_file(path, project: str) -> str:
    """A well-formed service account key for *project* whose token endpoint refuses connections at once."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "0" * 40, "private_key": pem,
        "client_email": f"ingest@{project}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token"}))  # the discard port: nothing listens
    return str(path)


# -- a named database -----------------------------------------------------------------------------------------

def test_a_named_database_holds_everything_and_the_default_one_nothing(tmp_path, firestore):
    clear_database(firestore, "other")
    env = dict(os.environ, INGEST_TOKEN=uuid.uuid4().hex, FIRESTORE_DATABASE="other")
    daemon = Daemon(PROD, cwd=tmp_path, env=env)
    try:
        daemon.wait_ready()  # the status tests stored and read back their article: in "other" too
        status, _, created = request(daemon, "/articles", ARTICLE)
        assert status == 201, created
        status, _, stored = request(daemon, "/articles/named-1")
        assert status == 200 and stored["body"] == ARTICLE["body"] and stored["entities"] == created["entities"]
        status, _, listed = request(daemon, "/articles?source=wire")
        assert status == 200 and [a["id"] for a in listed["articles"]] == ["named-1"]
        status, _, report = request(daemon, "/status")
        assert {name: (report["components"][name]["database"], report["components"][name]["project"])
                for name in ("store.articles", "store.statustests")} == \
            {"store.articles": ("other", firestore.project), "store.statustests": ("other", firestore.project)}
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-5000:]
    finally:
        daemon.kill()

    named = gcf.Client(project=firestore.project, database="other")
    default = gcf.Client(project=firestore.project)
    try:
        assert named.collection("articles").document("named-1").get().to_dict()["body"] == ARTICLE["body"]
        assert named.collection("statustest_articles").document("status-test-1").get().exists
        shards = list(named.collection("sources").document("wire").collection(SHARDS_COLLECTION).stream())
        assert shards and all(COUNTS_FIELD in shard.to_dict() for shard in shards)
        assert [collection.id for collection in default.collections()] == []  # emptied by the fixture
    finally:
        named.close()
        default.close()
        clear_database(firestore, "other")


def test_the_database_option_takes_only_what_firestore_accepts(tmp_path):
    base = """\
        stores:
          articles: {kind: firestore, project: p, database: %s}
        """
    for good in ("(default)", "other", "ingest-eu-1", "a" * 63):
        assert config_errors(tmp_path, base % good) == [], good
    for bad in ("Other", "abc", "1abc", "ab_c", "abc-", "a" * 64, "(Default)"):
        errors = config_errors(tmp_path, base % bad)
        assert len(errors) == 1 and errors[0].startswith(
            f"{tmp_path}/conf.yaml:2:53: option 'database' of store 'articles' must be '(default)' or a database "
            "id (4 to 63 lowercase letters, digits and hyphens, starting with a letter), not "), (bad, errors)
    assert CONFIG_DATABASE_ID[0] == DATABASE_ID  # the provider and the store accept the same


# -- the project ------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_project_comes_from_the_application_default_credentials(tmp_path, monkeypatch):
    for name in GOOGLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_file(tmp_path / "key.json", "adc-project-7"))
    store = FirestoreStore(rpc_timeout=5)
    assert store.project is None
    await store.startService()
    try:
        assert store.project == "adc-project-7" and store.state()["project"] == "adc-project-7"
    finally:
        await store.stopService()  # waits for the access check: bounded by rpc_timeout


@pytest_twisted.ensureDeferred
async def test_a_store_that_can_find_no_project_does_not_start(tmp_path, monkeypatch):
    for name in GOOGLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    store = FirestoreStore()
    with pytest.raises(StoreError) as raised:
        await store.startService()
    assert raised.value.message == (
        "no Google Cloud project for Firestore: 'project' is not set, GOOGLE_CLOUD_PROJECT is not set, and no "
        f"Application Default Credentials name one (DefaultCredentialsError: File {tmp_path}/missing.json was "
        "not found.)")
    assert not store.running
    with pytest.raises(StoreUnavailable):
        await store.get("x")  # its pool is stopped too


def test_a_daemon_that_can_find_no_project_exits_3_before_binding(tmp_path):
    env = without_google(tmp_path, INGEST_TOKEN=uuid.uuid4().hex,
                         GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"))
    result = twistd("-c", PROD, "-O", "web.main.port=0", cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "did not start: no Google Cloud project for Firestore: 'project' is not set" in output
    assert "listening on" not in output


# -- credentials ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_self_test_without_credentials_ends_failed_saying_why(tmp_path):
    """--self-test waits a bounded time for what the stores wait for, then its tests fail (it never hangs)."""
    env = without_google(tmp_path, INGEST_TOKEN=uuid.uuid4().hex, GOOGLE_CLOUD_PROJECT="pipedingest-no-credentials",
                         GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing-key.json"))
    result = twistd("-c", PROD, "-O", "web.main.port=0", "--self-test", cwd=tmp_path, env=env, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert "running the status tests anyway" in output and "no usable Google credentials" in output
    assert "FAILED" in result.stdout


def test_without_credentials_requests_get_503_and_ready_names_them(tmp_path):
    missing = tmp_path / "missing-key.json"
    env = without_google(tmp_path, INGEST_TOKEN=uuid.uuid4().hex, GOOGLE_CLOUD_PROJECT="pipedingest-no-credentials",
                         GOOGLE_APPLICATION_CREDENTIALS=str(missing))
    daemon = Daemon(PROD, cwd=tmp_path, env=env)
    try:
        ready = wait_for_ready_reason(daemon, "no usable Google credentials")
        assert ready["ready"] is False and ready["reason"].startswith("waiting: store.")
        assert f"File {missing} was not found" in ready["reason"]

        status, headers, answer = request(daemon, "/articles", ARTICLE)
        assert status == 503 and headers["retry-after"] == "5", answer
        message = answer["error"]["message"]
        assert message.startswith("the store is unavailable: no usable Google credentials "
                                  f"(DefaultCredentialsError: File {missing} was not found.)"), message
        assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "refused" not in message
        status, _, answer = request(daemon, "/articles/named-1")
        assert status == 503 and "no usable Google credentials" in answer["error"]["message"]

        status, _, report = request(daemon, "/status")
        for name in ("store.articles", "store.statustests"):
            component = report["components"][name]
            assert component["project"] == "pipedingest-no-credentials" and component["database"] == "(default)"
            assert component["access_problem"].startswith("no usable Google credentials"), component
        assert report["status_tests"] is None  # not run: they could only fail
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-5000:]
    finally:
        daemon.kill()
    assert "store.articles: no usable Google credentials" in daemon.output
    assert "waiting before the status tests: store." in daemon.output


@pytest_twisted.ensureDeferred
async def test_a_store_without_credentials_heals_once_a_call_gets_through(tmp_path, monkeypatch, firestore):
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    invalid = tmp_path / "key.json"
    invalid.write_text("not a key")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(invalid))
    clock = task.Clock()
    store = FirestoreStore(project=firestore.project, clock=clock, reactor=reactor)
    await store.startService()
    try:
        problem = store.readiness()
        assert problem.startswith(f"no usable Google credentials (DefaultCredentialsError: "
                                  f"('File {invalid} is not a valid json file."), problem
        putting = store.put({"id": "a-1", "source": "wire", "body": "Oslo."})
        clock.advance(store.batch_window)
        with pytest.raises(StoreUnavailable) as raised:
            await putting
        assert raised.value.message == problem
        with pytest.raises(StoreUnavailable):
            await store.get("a-1")
        assert store.state()["access_problem"] == problem and store.state()["access_errors"] == 3

        # The same credentials problem, until a call gets through: here, the emulator needs none.
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore.host)
        assert store.readiness() == problem  # nothing looked again yet: the recheck waits for the clock
        clock.advance(ACCESS_RECHECK)
        for _ in range(1500):
            if store.readiness() is None:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert store.readiness() is None and store.state()["access_problem"] is None
        putting = store.put({"id": "a-1", "source": "wire", "body": "Oslo."})
        clock.advance(store.batch_window)
        assert await putting is True
    finally:
        await store.stopService()
    assert clock.getDelayedCalls() == []  # no recheck left behind


def test_a_token_that_cannot_be_had_is_recognised_in_grpcs_own_words(tmp_path, firestore):
    """google-auth fails inside the gRPC call (here: its token endpoint refuses connections); gRPC turns
    that into UNAVAILABLE, which only its text tells apart from an unreachable Firestore."""
    credentials = service_account.Credentials.from_service_account_file(
        service_account_file(tmp_path / "key.json", firestore.project), scopes=gcf.Client.SCOPE)
    channel = grpc.secure_channel(firestore.host, grpc.composite_channel_credentials(
        grpc.local_channel_credentials(), grpc.metadata_call_credentials(AuthMetadataPlugin(credentials, Request()))))
    try:
        client = FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))
        with pytest.raises(api_exceptions.ServiceUnavailable) as raised:
            client.get_document(request={"name": f"projects/{firestore.project}/databases/(default)/documents/a/b"},
                                retry=None, timeout=10)
    finally:
        channel.close()
    problem = access_problem(raised.value, firestore.project, "(default)")
    assert problem is not None and problem.startswith("the Google credentials could not get an access token "
                                                      "(ServiceUnavailable: "), problem


@pytest.mark.parametrize("error, expected", [
    (auth_exceptions.DefaultCredentialsError("File k.json was not found."), "no usable Google credentials"),
    (auth_exceptions.RefreshError("invalid_grant: Invalid JWT Signature."),
     "the Google credentials could not get an access token (RefreshError: invalid_grant"),
    (auth_exceptions.TransportError("connection refused"), "the Google credentials could not get an access token"),
    (api_exceptions.Unauthenticated("Request had invalid authentication credentials."),
     "Firestore did not accept the Google credentials (Unauthenticated: 401"),
    (api_exceptions.PermissionDenied("Missing or insufficient permissions."),
     "the Google credentials may not use Firestore database other of project p (PermissionDenied: 403"),
    (api_exceptions.ServiceUnavailable("DNS resolution failed for firestore.googleapis.com"), None),
    (api_exceptions.DeadlineExceeded("Deadline Exceeded"), None),
    (api_exceptions.AlreadyExists("Document already exists"), None),
    (api_exceptions.InvalidArgument("too big"), None),
])
def test_credential_errors_are_told_apart_from_others(error, expected):
    problem = access_problem(error, "p", "other")
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(expected), problem
    if isinstance(error, api_exceptions.PermissionDenied):
        assert "roles/datastore.user" in problem


# -- the index file ------------------------------------------------------------------------------------------

def test_firebase_json_deploys_the_index_file():
    with open(FIREBASE, encoding="utf-8") as stream:
        firebase = json.load(stream)
    assert firebase["firestore"]["database"] == "(default)"
    assert os.path.samefile(os.path.join(os.path.dirname(FIREBASE), firebase["firestore"]["indexes"]), INDEXES)


@pytest_twisted.ensureDeferred
async def test_the_index_overrides_name_the_large_fields_the_stored_documents_really_have(firestore):
    with open(INDEXES, encoding="utf-8") as stream:
        spec = json.load(stream)
    daemon = build_daemon(load_config(PROD, environ=dict(os.environ, INGEST_TOKEN="x")))
    articles = daemon.runtime.get("store.articles")
    exempt = {(override["collectionGroup"], override["fieldPath"])
              for override in spec["fieldOverrides"] if override["indexes"] == []}

    store = FirestoreStore(project=firestore.project, collection=articles.collection, entity_counters=True)
    await store.startService()
    try:
        entities = [{"text": f"Person {n}", "label": "PERSON", "start": 0, "end": 8} for n in range(300)]
        article = {"id": "large", "title": "A long one", "source": "wire", "url": "https://example.com/large",
                   "published": "2026-01-01", "body": "Ada Lovelace met Charles Babbage. " * 2000,
                   "entities": entities, "entity_counts": {"PERSON": 300}, "words": 10_000,
                   "model": {"name": "en_core_web_sm", "version": "3.8.0"}, "language": "en",
                   "language_confidence": 0.998, "fields": ["title", "body"],
                   "published_at": "2026-01-01T00:00:00.000000Z",
                   "entity_keys": sorted({f"person {n}" for n in range(300)} | {f"person {n}|PERSON" for n in range(300)})}
        assert set(article) - {"id"} == set(STORED_FIELDS)
        assert await store.put(article) is True
        await store.roll_up()
    finally:
        await store.stopService()
    client = gcf.Client(project=firestore.project)
    try:
        stored = client.collection(articles.collection).document("large").get().to_dict()
        source = client.collection("sources").document("wire")
        shards = [snapshot.to_dict() for snapshot in source.collection(SHARDS_COLLECTION).stream()]
        days = [snapshot.to_dict() for snapshot in source.collection(DAY_SHARDS_COLLECTION).stream()]
        rolled = [snapshot.to_dict() for snapshot in source.collection(DAYS_COLLECTION).stream()]
        rolled += [client.collection(DAYS_COLLECTION).document("sources-2026-01-01").get().to_dict()]
    finally:
        client.close()

    named = {field for group, field in exempt if group == articles.collection}
    assert named <= set(stored), f"overrides name fields the stored document does not have: {named - set(stored)}"
    large = {field for field, value in stored.items() if value_size(value) > 1500}
    # entity_keys stays indexed on purpose (queries match it with array-contains): at most 2 keys per distinct
    # entity, so 20,000 index entries at MAX_DISTINCT_ENTITIES, within Firestore's 40,000 per document.
    assert large == {"body", "entities", "entity_keys"} and large - {"entity_keys"} <= named
    assert "entity_keys" not in named
    indexed = {field["fieldPath"] for index in spec["indexes"] for field in index["fields"]}
    assert indexed == {"source", "ingested_at", "entity_keys", "sort_at"} and indexed <= set(stored)
    assert not indexed & named
    assert {index["collectionGroup"] for index in spec["indexes"]} == {articles.collection}

    assert {field for group, field in exempt if group == SHARDS_COLLECTION} == {COUNTS_FIELD}
    assert shards and all(set(shard) == {COUNTS_FIELD} for shard in shards)
    # the day buckets: their counts exempt too, and the two fields the roll-up's collection-group queries filter
    # on indexed for collection groups (Firestore indexes single fields for one collection only by default)
    assert days and all(set(shard) == {COUNTS_FIELD, "day", "updated_at"} for shard in days)
    assert rolled and all(set(document) >= {COUNTS_FIELD, "day", "through"} for document in rolled)
    for group in (DAY_SHARDS_COLLECTION, DAYS_COLLECTION):
        assert {field for name, field in exempt if name == group} == {COUNTS_FIELD}
    grouped = {(override["collectionGroup"], override["fieldPath"]) for override in spec["fieldOverrides"]
               if {"order": "ASCENDING", "queryScope": "COLLECTION_GROUP"} in override["indexes"]}
    assert grouped == {(DAY_SHARDS_COLLECTION, "updated_at"), (DAYS_COLLECTION, "day")}
    assert {group for group, _ in exempt} == {articles.collection, SHARDS_COLLECTION, DAY_SHARDS_COLLECTION,
                                              DAYS_COLLECTION}


def needed_index(query) -> tuple | None:
    """``(equality and array-contains fields, ordered fields)`` of the composite index Firestore needs for *query*,
    read from the request the client would send: the fields it filters by equality or array-contains (in any
    order), then those it orders by (``__name__`` last, left out when in the direction of the field before it, as
    index definitions leave it); None when a single field's automatic index serves it."""
    structured = query._to_protobuf()
    where = structured.where
    filters = ([f.field_filter for f in where.composite_filter.filters] if "composite_filter" in where
               else [where.field_filter] if "field_filter" in where else [])
    operator = StructuredQuery.FieldFilter.Operator
    prefix = frozenset((f.field.field_path, "CONTAINS" if f.op == operator.ARRAY_CONTAINS else "EQUAL")
                       for f in filters if f.op in (operator.EQUAL, operator.ARRAY_CONTAINS))
    orders = [(order.field.field_path, order.direction.name) for order in structured.order_by]
    if len(orders) > 1 and orders[-1][0] == "__name__" and orders[-1][1] == orders[-2][1]:
        orders = orders[:-1]
    if not prefix and len(orders) <= 1:
        return None
    return prefix, tuple(orders)


def serves(entry: dict, index: tuple) -> bool:
    """Does the ``firestore.indexes.json`` *entry* serve *index* (see :func:`needed_index`)?"""
    prefix, orders = index
    fields = entry["fields"]
    if len(fields) != len(prefix) + len(orders):
        return False
    head = {(f["fieldPath"], "CONTAINS" if f.get("arrayConfig") == "CONTAINS" else "EQUAL")
            for f in fields[:len(prefix)]}
    tail = tuple((f["fieldPath"], f.get("order")) for f in fields[len(prefix):])
    return head == prefix and tail == orders


def test_the_index_file_serves_every_query_the_store_can_send():
    """Every combination of the arguments of ``store.query`` builds the request ``queries.py`` sends; the index
    that request needs is shipped, and is the one a 'missing index' error names."""
    with open(INDEXES, encoding="utf-8") as stream:
        shipped = json.load(stream)["indexes"]
    collection = build_daemon(load_config(PROD, environ=dict(os.environ, INGEST_TOKEN="x"))).runtime.get(
        "store.articles").collection
    client = gcf.Client(project="p", credentials=AnonymousCredentials())
    needed = set()
    try:
        for key, source, since, until, after in itertools.product([False, True], repeat=5):
            arguments = ("apple|ORG" if key else "", "wire" if source else None,
                         "2017-01-01T00:00:00.000000Z" if since else None,
                         "2018-01-01T00:00:00.000000Z" if until else None, 20,
                         ("2017-06-01T00:00:00.000000Z", "a-1") if after else None)
            index = needed_index(queries.build(client, collection, *arguments))
            named = queries.index_for(collection, arguments[0], arguments[1])
            if index is None:
                assert named is None, arguments
                continue
            needed.add(index)
            assert named is not None and serves(named.as_json(), index), (arguments, named)
            assert [entry for entry in shipped if entry["collectionGroup"] == collection and serves(entry, index)], \
                f"no index in {INDEXES} serves {named.describe()}"
    finally:
        client.close()
    assert len(needed) == 3  # with an entity, a source, or both; every article of every source needs none
