"""``top-entities`` and ``entity-timeline``: which entities a source mentions most, and how an entity's mentions
go day by day, read from the stores' day buckets (``IArticleStore.top_entities`` and ``timeline``).

``GET /sources/{source}/entities?since=&until=&label=&limit=`` answers
``{"source", "since", "until", "label", "count", "entities": [{"key", "text", "label", "count"}], "as_of"}``;
``GET /entities/{key}/timeline?source=&since=&until=&label=&bucket=day`` answers
``{"key", "source", "since", "until", "bucket", "days": [{"day", "count"}], "total", "as_of"}``, every day of the
window listed, zeros included.

A count is a number of articles: an article that names an entity counts once, on the UTC day it sorts by
(``published_at``, else ``ingested_at``), however often it names it. Windows are whole UTC days: ``since``
(inclusive) is taken back to its day's midnight and ``until`` (exclusive) on to the next midnight, unless it is
one; both take the forms ``published`` does (:mod:`pipedingest.dates`). Without them the window is the
``default_days`` ending with today. A window longer than ``max_days`` is refused: on Firestore every day of it is
a document read. ``as_of`` is the moment up to which the counts are complete (null: exact).

Every bad query is a 400 saying what is wrong: a bad date, an empty or too long window, a limit out of range, a
label the named pools' models do not have, a blank or overlong key, a bucket other than ``day``.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.article import entity_key, split_key
from pipedingest.config.errors import ConfigError
from pipedingest.dates import FORMS, day_ceiling, day_floor, days_between, parse
from pipedingest.engine.baton import get_path
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option
from pipedingest.processors.queries import MAX_ENTITY_CHARS, POOLS, KnownLabels
from pipedingest.processors.store import STORE, checked_limit, store_failed, store_reference
from pipedingest.web.errors import WebError

#: The buckets a timeline may be counted in.
BUCKETS = ("day",)
DEFAULT_DAYS = Option(int, 30, "the days a window spans when the query gives no since (ending with today when it "
                      "gives no until either)", minimum=1)
MAX_DAYS = Option(int, 92, "the most days a window may span (on Firestore each day is a document read)", minimum=1)


class DayWindow:
    """The whole UTC days a query asks for (``since``, ``until``), for a processor with ``default_days`` and
    ``max_days``; *clock* says which day is today."""

    def __init__(self, config: dict, clock):
        if config["default_days"] > config["max_days"]:
            raise ConfigError(f"default_days ({config['default_days']}) is more than max_days "
                              f"({config['max_days']})", "a query without since would be refused; lower "
                              "default_days or raise max_days", key="default_days")
        self.default_days = config["default_days"]
        self.max_days = config["max_days"]
        self.clock = clock

    def days(self, one: dict) -> tuple[date, date]:
        """``(since, until)``, *until* exclusive, from the query's last values *one*; WebError 400 if unusable."""
        moments = {name: _moment(one, name) for name in ("since", "until")}
        if moments["since"] is not None and moments["until"] is not None and moments["since"] >= moments["until"]:
            raise WebError(400, f"since ({one['since'][:40]}) must be before until ({one['until'][:40]})")
        if moments["until"] is not None:
            until = day_ceiling(moments["until"])
        else:
            until = datetime.fromtimestamp(self.clock.seconds(), timezone.utc).date() + timedelta(days=1)
        since = day_floor(moments["since"]) if moments["since"] is not None else until - timedelta(days=self.default_days)
        if since >= until:
            raise WebError(400, f"since ({since}) must be before until ({until}, today's end when not given)")
        if (until - since).days > self.max_days:
            raise WebError(400, f"the window from {since} to {until} spans {(until - since).days} days; the most "
                                f"is {self.max_days}", max_days=self.max_days)
        return since, until


def _moment(one: dict, name: str) -> datetime | None:
    if name not in one:
        return None
    moment = parse(one[name])
    if moment is None:
        raise WebError(400, f"{name} {one[name][:40]!r} is not a date ({FORMS})")
    return moment


def last_values(args: dict) -> dict:
    """Each query argument's last value (``?limit=1&limit=2`` asks for 2), as ``query-articles`` reads them."""
    return {name: values[-1] for name, values in args.items() if values}


def path_value(baton, path: str, what: str) -> str:
    """The text at *path* (a route's path parameter: a route without it is the configuration's fault, and a 500);
    WebError 400 when it is blank."""
    value = get_path(baton, path)
    if not isinstance(value, str) or not value.strip():
        raise WebError(400, f"{what} must not be blank")
    return value


@provider(IPlugin, IProcessor)
class TopEntities(InputOutputProcessor):
    """The entities (text and label) a source's articles mention most over a window of days, with the number of
    articles mentioning each."""

    name = "top-entities"
    options = {"store": STORE,
               "input_path": Option(str, "request.args", "the query arguments"),
               "output_path": Option(str, "content", "where to put {source, since, until, label, count, entities, "
                                                     "as_of}"),
               "source_path": Option(str, "request.path_params.source", "where the source is (the route's "
                                                                        "{source})"),
               "pools": POOLS,
               "default_limit": Option(int, 20, "the limit when none is asked for", minimum=1, maximum=1000),
               "max_limit": Option(int, 1000, "the largest limit a client may ask for", minimum=1, maximum=1000),
               "default_days": DEFAULT_DAYS,
               "max_days": MAX_DAYS}

    def __init__(self, config, step):
        super().__init__(config, step)
        if config["default_limit"] > config["max_limit"]:
            raise ConfigError(f"default_limit ({config['default_limit']}) is more than max_limit "
                              f"({config['max_limit']})", "lower default_limit or raise max_limit",
                              key="default_limit")
        self.store = store_reference(step, config["store"])
        self.labels = KnownLabels(step, config["pools"])
        self.window = DayWindow(config, step.clock)

    def process_input(self, args, baton):
        source = path_value(baton, self.config["source_path"], "the source")
        one = last_values(args)
        since, until = self.window.days(one)
        label = self.labels.check(one["label"]) if "label" in one else None
        limit = checked_limit(one.get("limit", str(self.config["default_limit"])), self.config["max_limit"])
        top = self.store.value.top_entities(source, since.isoformat(), until.isoformat(), label=label, limit=limit)
        return top.addCallbacks(self._answer, store_failed, callbackArgs=(source, since, until, label))

    @staticmethod
    def _answer(top, source, since, until, label):
        entities = []
        for counted in top["entities"]:
            text, key_label = split_key(counted["key"])
            entities.append({"key": counted["key"], "text": text, "label": key_label, "count": counted["count"]})
        return {"source": source, "since": since.isoformat(), "until": until.isoformat(), "label": label,
                "count": len(entities), "entities": entities, "as_of": top["as_of"]}


@provider(IPlugin, IProcessor)
class EntityTimeline(InputOutputProcessor):
    """How many articles mention an entity, day by day over a window, of one source or of all."""

    name = "entity-timeline"
    options = {"store": STORE,
               "input_path": Option(str, "request.args", "the query arguments"),
               "output_path": Option(str, "content", "where to put {key, source, since, until, bucket, days, "
                                                     "total, as_of}"),
               "key_path": Option(str, "request.path_params.key", "where the entity is (the route's {key}: "
                                                                  "Apple, or Apple|ORG)"),
               "pools": POOLS,
               "default_days": DEFAULT_DAYS,
               "max_days": MAX_DAYS}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.store = store_reference(step, config["store"])
        self.labels = KnownLabels(step, config["pools"])
        self.window = DayWindow(config, step.clock)

    def process_input(self, args, baton):
        one = last_values(args)
        key = self.key(path_value(baton, self.config["key_path"], "the entity"), one)
        source = one.get("source")
        if source is not None and not source.strip():
            raise WebError(400, "source must not be blank (leave it out for every source)")
        bucket = one.get("bucket", "day")
        if bucket not in BUCKETS:
            raise WebError(400, f"bucket {bucket[:40]!r} is not supported", supported=list(BUCKETS))
        since, until = self.window.days(one)
        found = self.store.value.timeline(key, source=source, since=since.isoformat(), until=until.isoformat())
        return found.addCallbacks(self._answer, store_failed, callbackArgs=(key, source, since, until))

    def key(self, named: str, one: dict) -> str:
        """The entity key the path names (``Apple``, ``Apple|ORG``), narrowed by ``label``; WebError 400."""
        text, label = split_key(named)
        asked = one.get("label")
        if asked is not None and label is not None and asked != label:
            raise WebError(400, f"the entity names label {label!r} and label= asks for {asked[:40]!r}: give one")
        label = label if asked is None else asked
        if not text.strip() or len(text) > MAX_ENTITY_CHARS:
            raise WebError(400, f"the entity must be 1 to {MAX_ENTITY_CHARS} characters, not blank")
        if label is not None:
            self.labels.check(label)
        return entity_key(text, label)

    @staticmethod
    def _answer(found, key, source, since, until):
        counts = found["days"]
        days = [{"day": day, "count": counts.get(day, 0)} for day in days_between(since, until)]
        return {"key": key, "source": source, "since": since.isoformat(), "until": until.isoformat(),
                "bucket": "day", "days": days, "total": sum(day["count"] for day in days), "as_of": found["as_of"]}
