"""The access log: one line for every response a site gives, however it was given.

Twisted's access log sees only the requests its ``Request.finish`` ends.  A
site also answers without that: 413 as soon as ``Content-Length`` is too large,
408 for a request too slow to arrive, 400 for malformed framing (all written
straight to the connection), and a request's client may go away before its
answer.  Each of those is a line here too; the last with status 499 (nginx's
"client closed request"), since no response was sent.

A line's text is the combined log format followed by the request id::

    "127.0.0.1" - - [01/May/2026:12:00:00 +0000] "POST /articles HTTP/1.1" 201 312 "-" "curl/8.5" "3f2a…"

and its fields (what the JSON log format shows) are ``request_id``, ``site``,
``client``, ``method``, ``target`` (the path and query as sent), ``protocol``,
``status``, ``bytes``, ``referer``, ``user_agent`` and ``duration_ms`` (from the
request's first line to its answer).  What the client sent is escaped in the
text, so a request cannot forge a log line.
"""
from __future__ import annotations

import json
from typing import Optional

from twisted.logger import Logger
from twisted.web.http import datetimeToLogString

log = Logger()

#: The status logged for a request whose client went away before it was answered.
CLIENT_CLOSED = 499


def _quoted(value: str) -> str:
    """*value* between double quotes, with quotes, backslashes, controls and non-ASCII escaped."""
    return json.dumps(value, ensure_ascii=True)


def _format_literal(text: str) -> str:
    """*text* as a Twisted log format that formats to itself."""
    return text.replace("{", "{{").replace("}", "}}")


def log_response(request_id: str, client: Optional[str], method: str, target: str, protocol: str, status: int,
                 length: int, *, site: Optional[str] = None, referer: str = "", user_agent: str = "",
                 when: Optional[float] = None, duration: Optional[float] = None) -> None:
    """Write one access-log line (*when*: seconds since the epoch; *duration*: seconds)."""
    line = " ".join([
        _quoted(client or "-"), "-", "-", datetimeToLogString(when),
        _quoted(f"{method} {target} {protocol}"), str(status), str(length or "-"),
        _quoted(referer or "-"), _quoted(user_agent or "-"), _quoted(request_id),
    ])
    log.info(_format_literal(line), request_id=request_id, site=site, client=client, method=method, target=target,
             protocol=protocol, status=status, bytes=length, referer=referer or None, user_agent=user_agent or None,
             duration_ms=round(duration * 1000, 3) if duration is not None else None)
