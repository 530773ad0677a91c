"""The daemon's log: twistd's text for people, or JSON lines for log collectors.

``text`` (the default) is twistd's own format,
``2026-05-01T12:00:00+0000 [pipedingest.service#info] ready``.  ``json`` writes each
event as one JSON object on one line, so that Loki, Cloud Logging or
Elasticsearch take it without a parser to maintain::

    {"time":"2026-05-01T12:00:00.123Z","level":"info","namespace":"pipedingest.web.accesslog",
     "message":"\\"127.0.0.1\\" - - [...] \\"POST /articles HTTP/1.1\\" 201 ...","request_id":"3f2a...",
     "status":201,...}

* ``time``: when it happened, UTC, ISO 8601 with milliseconds and ``Z``; ``level``:
  ``debug``, ``info``, ``warn``, ``error`` or ``critical``; ``namespace``: the logger's
  (the module that logged); ``message``: the event as text, as the text format says it.
* Then the event's own fields: as they are when JSON holds them (text, numbers,
  booleans, null, and lists and mappings of those), otherwise as their ``repr``;
  a failure as ``traceback``.  Twisted's bookkeeping (``log_*`` keys, and the
  keys of old-style ``twisted.python.log`` events) is left out.  A field named
  like one of the five keys above is written as ``field_<name>``.
* ASCII only (other characters escaped), so a line survives any stream encoding
  and can be split on ``\\n``.

Twisted's ``jsonFileLogObserver`` writes Twisted's own event dictionaries
(``log_format``, ``log_namespace``, ``log_time`` as a float ...), made for
Twisted to read back rather than for a log collector, hence this observer.

**One observer for the whole process.**  The format applies to everything the
process logs: twistd's own messages, Twisted's, the daemon's, and whatever is
written to stdout or stderr (twistd turns those into events).  twistd picks its
observer before the daemon is built, from its ``--logger`` option: the dotted
name of a factory it calls once the service is made.  ``twistd ingest`` names
:func:`twistd_observer` there (unless ``--logger`` was given), and tells its
:class:`TwistdLogging` the format once it knows it (``--log-format``, else
``daemon.log_format``).  For ``json`` it writes
where twistd would have (stdout when run with ``-n``, else ``--logfile`` or
``twistd.log``); for ``text`` it returns nothing, and twistd makes its usual
observer (stdout, ``--logfile`` or ``--syslog``).
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any, Optional

from twisted.logger import FileLogObserver, formatEvent, textFileLogObserver
from twisted.python.logfile import LogFile
from twisted.python.reflect import safe_repr

LOG_FORMATS = ("text", "json")
#: The keys every JSON line starts with (``traceback`` when the event carries a failure).
RECORD_KEYS = ("time", "level", "namespace", "message", "traceback")
#: Keys of old-style events (``twisted.python.log.msg``/``err``) that the record already says otherwise.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "why", "failure", "printed"})
#: How deeply nested a field may be and still be written as JSON (deeper: its repr).
MAX_FIELD_DEPTH = 16


def utc_timestamp(seconds: Optional[float]) -> str:
    """``2026-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(seconds, timezone.utc) if seconds is not None else datetime.now(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(value: Any, depth: int = 0) -> bool:
    """Whether JSON holds *value* as it is (finite numbers, text, lists and str-keyed mappings of those)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_FIELD_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(json_safe(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and json_safe(item, depth + 1) for key, item in value.items())
    return False


def event_record(event: dict) -> dict:
    """The JSON object written for one event (see the module's docstring)."""
    record = {
        "time": utc_timestamp(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace") or "-",
        "message": formatEvent(event),
    }
    legacy = "isError" in event or isinstance(event.get("message"), tuple)
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        record[f"field_{key}" if key in RECORD_KEYS else key] = value if json_safe(value) else safe_repr(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = safe_repr(failure)
    return record


def event_as_json(event: dict) -> str:
    """One line of JSON for *event*; never raises (an event that cannot be written says so instead)."""
    try:
        text = json.dumps(event_record(event), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except Exception as error:
        text = json.dumps({"time": utc_timestamp(None), "level": "error", "namespace": __name__,
                           "message": f"an event could not be written as JSON: {safe_repr(error)}",
                           "event": safe_repr(event)}, ensure_ascii=True, separators=(",", ":"))
    return text + "\n"


def json_lines_observer(stream: IO[Any]) -> FileLogObserver:
    """An observer writing each event to *stream* as one JSON line (flushed at once)."""
    return FileLogObserver(stream, event_as_json)


def observer_for(log_format: str, stream: IO[Any]) -> FileLogObserver:
    """An observer writing to *stream* in *log_format* (``text``: twistd's format)."""
    return json_lines_observer(stream) if log_format == "json" else textFileLogObserver(stream)


class TwistdLogging:
    """What ``twistd ingest`` logs with: the observer of the format chosen, made when twistd asks for it.

    twistd reads ``--logger`` before the daemon is built, and calls the factory
    after, which is when the format is known (it may come from the
    configuration).  Returning ``None`` lets twistd make its own observer.
    """

    def __init__(self, server_options):
        self.server_options = server_options
        #: Set by ``makeService``: the command line's ``--log-format``, else ``daemon.log_format``.
        self.format = "text"

    @classmethod
    def install(cls, server_options, log_format: Optional[str]) -> Optional["TwistdLogging"]:
        """Become twistd's ``--logger`` (no twistd: nothing); a ``ValueError`` for a combination that cannot work."""
        if server_options is None:
            return None
        if server_options.get("logger"):
            if log_format:
                raise ValueError("--log-format cannot be combined with twistd's --logger")
            return None  # twistd's --logger decides
        if log_format == "json" and server_options.get("syslog"):
            raise ValueError("--log-format json cannot be combined with twistd's --syslog")
        global _installed
        _installed = cls(server_options)
        # A dotted name: twistd resolves it after this (a callable in its place would not do).
        server_options["logger"] = f"{__name__}.{twistd_observer.__name__}"
        return _installed

    def observer(self) -> Optional[FileLogObserver]:
        """JSON lines where twistd would write its log; None (twistd's own observer) for text."""
        if self.format != "json":
            return None
        stream = self._stream()
        return json_lines_observer(stream) if stream is not None else None

    def _stream(self) -> Optional[IO[Any]]:
        options = self.server_options
        path = options.get("logfile") or ""
        if options.get("syslog"):
            return None  # the configuration asked for json, the command line for syslog: the command line wins
        if path == "-" or not path and options.get("nodaemon"):
            # sys.stdout is still the real one: twistd redirects it to the log only after this.
            return sys.stdout if options.get("nodaemon") else None  # None: twistd refuses, with its own message
        return LogFile.fromFullPath(path or "twistd.log")


#: The process's :class:`TwistdLogging`, once ``twistd ingest`` installed it (twistd names a module-level factory).
_installed: Optional[TwistdLogging] = None


def twistd_observer() -> Optional[FileLogObserver]:
    """twistd's ``--logger`` factory for ``twistd ingest`` (see :class:`TwistdLogging`)."""
    return _installed.observer() if _installed is not None else None
