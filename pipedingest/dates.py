"""When an article was published: its ``published`` text read as a moment, so that articles sort by it.

Clients send ``published`` as text, in whatever form their feed has it. It is read, when the article is
accepted, in these forms, tried in order:

* **ISO 8601** as :meth:`datetime.fromisoformat` reads it: ``2017-02-07``, ``2017-02-07T10:00:00Z``,
  ``2017-02-07 10:00:00.5+01:00``, ``20170207T100000Z``;
* **RFC 2822** (RSS, e-mail): ``Tue, 07 Feb 2017 10:00:00 +0100``, ``07 Feb 2017 10:00 GMT``;
* **the news corpus' own**: ``2017/2/7`` and ``2017/02/07 9:30`` (year first, slashes; surrounding blanks are
  ignored).

A moment without an offset (``2017-02-07``, ``2017/2/7 9:30``, RFC 2822's ``-0000``) is taken as UTC. The
result is an ISO 8601 UTC text of fixed width (``2017-02-07T09:30:00.000000Z``, :func:`iso_utc`), which sorts
as text in SQLite and Firestore alike. A text in none of these forms, or a year outside 1800-2200, is not a
date: the article keeps its text, is answered with a warning, and sorts by when it was ingested.

Stdlib only, like :mod:`pipedingest.article`, so that clients (``ingest-load``) may use it too.
"""
from __future__ import annotations

import email.utils
import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Optional

#: The years a publication date may have; outside them a value is taken for a mistake, not a date.
EARLIEST_YEAR, LATEST_YEAR = 1800, 2200
#: The news corpus' form: year/month/day, an optional hour:minute[:second].
_SLASHED = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
#: What the warning says the service reads.
FORMS = "ISO 8601 (2017-02-07T10:00:00Z), RFC 2822 (Tue, 07 Feb 2017 10:00:00 +0100) or 2017/2/7 [9:30]"


def published_at(text: str) -> Optional[str]:
    """The moment *text* names, as fixed-width ISO 8601 UTC text; None when it names none (see the module)."""
    moment = parse(text)
    return iso_utc(moment) if moment is not None else None


def parse(text: str) -> Optional[datetime]:
    """The moment *text* names, in UTC; None when it is in none of the forms read (see the module)."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    if not value or len(value) > 64:
        return None
    moment = _iso(value) or _rfc2822(value) or _slashed(value)
    if moment is None or not EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """``2017-02-07T09:30:00.000000Z``: fixed width, so that texts sort as the moments do."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def day_of(moment: str) -> str:
    """The UTC day (``2017-02-07``) of a fixed-width moment text (:func:`iso_utc`): the day an article is
    counted under, from its sort time (``published_at``, else ``ingested_at``)."""
    return moment[:10]


def day_floor(moment: datetime) -> date:
    """The UTC day *moment* falls in: a window starting at *moment* counts that whole day."""
    return moment.astimezone(timezone.utc).date()


def day_ceiling(moment: datetime) -> date:
    """The first UTC day starting at or after *moment*: a window ending (exclusive) at *moment* counts the day
    it falls in, unless *moment* is that day's midnight."""
    moment = moment.astimezone(timezone.utc)
    day = moment.date()
    return day if moment == datetime.combine(day, time(), timezone.utc) else day + timedelta(days=1)


def days_between(since: date, until: date) -> list[str]:
    """Every day from *since* (inclusive) to *until* (exclusive), as ``YYYY-MM-DD``."""
    return [(since + timedelta(days=n)).isoformat() for n in range((until - since).days)]


def warning(text: str) -> str:
    """What an article whose ``published`` is not a date is answered with."""
    return (f"published {text[:60]!r} is not a date this service reads ({FORMS}); it is kept as text and the "
            f"article sorts by when it was ingested")


def _iso(value: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _rfc2822(value: str) -> Optional[datetime]:
    if not any(character.isalpha() for character in value):
        return None  # parsedate reads some bare digit runs as dates
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _slashed(value: str) -> Optional[datetime]:
    match = _SLASHED.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) if part else 0 for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
