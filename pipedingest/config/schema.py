"""Declared options: the keys a processor or a section accepts, checked all at once."""
from __future__ import annotations

from typing import Any, Optional

from pipedingest.config.errors import ConfigError, ErrorCollector, close_matches_hint

REQUIRED = object()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a mapping", list: "a list", type(None): "null"}


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Option:
    """One key: its accepted types, default, meaning and, optionally, allowed values.

    ``minimum`` (inclusive) and ``above`` (exclusive) bound a number, so that a
    timeout of 0 or a negative pool size is refused where it is written instead of
    being checked again by every section that takes one.
    """

    def __init__(self, types=str, default=REQUIRED, doc: str = "", choices: Optional[tuple] = None,
                 minimum: Optional[float] = None, above: Optional[float] = None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.default = default
        self.doc = doc
        self.choices = choices
        self.minimum = minimum
        self.above = above

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_type(self) -> str:
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)

    def check(self, value: Any) -> Optional[str]:
        """A complaint about *value*, or None when it is acceptable."""
        if object not in self.types and not any(_is_instance(value, t) for t in self.types):
            return f"must be {self.describe_type()}, not {type_name(value)}"
        if self.choices is not None and value not in self.choices:
            return "must be one of " + ", ".join(repr(c) for c in self.choices)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum:g}, not {value:g}"
            if self.above is not None and value <= self.above:
                return f"must be greater than {self.above:g}, not {value:g}"
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
            errors.append(ConfigError(f"unknown option {key!r} for {owner}", hint, key=key))
    for key, option in declared.items():
        if key in given:
            complaint = option.check(given[key])
            if complaint:
                errors.append(ConfigError(f"option {key!r} of {owner} {complaint}", option.doc, key=key))
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
