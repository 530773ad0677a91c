"""Declared options: the keys a processor or a section accepts, checked all at once."""
from __future__ import annotations

import datetime
import math
import re
from typing import Any, Optional

from pipedingest.config.errors import ConfigError, ErrorCollector, close_matches_hint

REQUIRED = object()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a mapping", list: "a list", type(None): "null"}
_PLURAL_NAMES = {str: "strings", int: "integers", float: "numbers", bool: "booleans", dict: "mappings",
                 list: "lists", type(None): "nulls"}


def type_name(value: Any) -> str:
    """What *value* is, as a message says it: "a mapping", "a string", "a date" ..."""
    for kind in (bool, int, float, str, dict, list, type(None)):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


def shown(value: Any, limit: int = 60) -> str:
    """*value* as a message quotes it: its repr, cut short when it is long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        return f"{'a negative' if value < 0 else 'an'} integer of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Option:
    """One key: its accepted types, default, meaning and, optionally, allowed values.

    The bounds are declared where the option is, so that a timeout of 0, a
    negative pool size or a misspelt choice is refused at its line instead of
    being checked again by every section that takes one:

    * ``minimum``/``maximum`` (inclusive) and ``above`` (exclusive) bound a number
      (and each number of a list); a number is always finite;
    * ``choices``: the allowed values (a misspelt one gets "did you mean");
    * ``pattern``: ``(regex, description)`` a string must match in full;
    * ``items``: the type(s) of a list's items (or of a mapping's values).
    """

    def __init__(self, types=str, default=REQUIRED, doc: str = "", choices: Optional[tuple] = None,
                 minimum: Optional[float] = None, above: Optional[float] = None,
                 maximum: Optional[float] = None, pattern: Optional[tuple[str, str]] = None, items=None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.default = default
        self.doc = doc
        self.choices = choices
        self.minimum = minimum
        self.above = above
        self.maximum = maximum
        self.pattern = (re.compile(pattern[0]), pattern[1]) if pattern else None
        self.items = items if isinstance(items, tuple) or items is None else (items,)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_type(self) -> str:
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)

    def problem(self, value: Any) -> Optional[tuple[str, str]]:
        """``(complaint, hint)`` about *value*, or None when it is acceptable."""
        if object not in self.types and not any(_is_instance(value, t) for t in self.types):
            return f"must be {self.describe_type()}, not {type_name(value)}", self.doc
        if self.choices is not None and value not in self.choices:
            return self._not_a_choice(value)
        complaint = self._bounds(value)
        if complaint:
            return complaint, self.doc
        if self.pattern is not None and isinstance(value, str) and not self.pattern[0].fullmatch(value):
            return f"must be {self.pattern[1]}, not {shown(value)}", self.doc
        if self.items is not None and isinstance(value, (list, dict)):
            entries = enumerate(value, 1) if isinstance(value, list) else value.items()
            for key, item in entries:
                which = f"item {key}" if isinstance(value, list) else f"the value of {shown(key)}"
                if not any(_is_instance(item, t) for t in self.items):
                    kinds = " or ".join(_PLURAL_NAMES.get(t, t.__name__) for t in self.items)
                    return (f"must be {'a list' if isinstance(value, list) else 'a mapping'} of {kinds}; "
                            f"{which} is {type_name(item)}"), self.doc
                complaint = self._bounds(item)
                if complaint:
                    return f"{which} {complaint}", self.doc
        return None

    def _not_a_choice(self, value) -> tuple[str, str]:
        allowed = [repr(c) for c in self.choices]
        listed = " or ".join(allowed) if len(allowed) <= 2 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
        hint = ""
        if isinstance(value, str) and all(isinstance(c, str) for c in self.choices):
            hint = close_matches_hint(value, self.choices)
            if not hint.startswith("did you mean"):
                hint = ""
        return f"must be {listed}, not {shown(value)}", hint or self.doc

    def _bounds(self, value) -> Optional[str]:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, not {value:g}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}, not {shown(value)}"
        if self.above is not None and value <= self.above:
            return f"must be greater than {self.above:g}, not {shown(value)}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}, not {shown(value)}"
        return None


def _is_instance(value, expected) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_options(declared: dict[str, Option], given: dict, owner: str) -> tuple[dict, list[ConfigError]]:
    """Fill in defaults and check *given*; each error names its key (``error.key``)."""
    errors: list[ConfigError] = []
    values: dict = {}
    for key in given:
        if key not in declared:
            hint = close_matches_hint(str(key), declared, f"options of {owner}")
            errors.append(ConfigError(f"unknown option {shown(key)} for {owner}", hint, key=key))
    for key, option in declared.items():
        if key in given:
            problem = option.problem(given[key])
            if problem:
                complaint, hint = problem
                errors.append(ConfigError(f"option {key!r} of {owner} {complaint}", hint, key=key))
            values[key] = given[key]
        elif option.required:
            errors.append(ConfigError(f"{owner} needs the option {key!r}", option.doc))
        else:
            default = option.default
            values[key] = default.copy() if isinstance(default, (dict, list)) else default
    return values, errors


def check_section(declared: dict[str, Option], given, owner: str, errors: ErrorCollector, where) -> Optional[dict]:
    """Check a mapping from the configuration, reporting each problem at its own line.

    Returns the values with defaults filled in, a bad optional value replaced by
    its default so that checking can go on; None when the mapping is unusable
    (not a mapping, or a required key missing or wrong).
    """
    if not isinstance(given, dict):
        errors.add(f"{owner} must be a mapping, not {type_name(given)}", where)
        return None
    values, problems = check_options(declared, given, owner)
    usable = True
    for problem in problems:
        location = given.where_of(problem.key) if problem.key is not None and hasattr(given, "where_of") \
            else getattr(given, "where", where)
        errors.add(problem.message, location or where, problem.hint)
        option = declared.get(problem.key) if problem.key is not None else None
        if problem.key is None or (option is not None and option.required):
            usable = False
        elif option is not None:
            values[problem.key] = option.default
    return values if usable else None
