"""What a request may carry: valid UTF-8 text, JSON of bounded shape, NDJSON line by line.

Every route's request passes through here before its pipeline runs (the site
calls it), so no processor ever sees bytes that do not decode, a string holding
a lone UTF-16 surrogate (``"\\ud800"`` is valid JSON text but not valid Unicode:
it cannot be encoded, stored or sent to a child), JSON nested deeper than
:data:`MAX_DEPTH` or holding more than :data:`MAX_VALUES` values, or
``NaN``/``Infinity``.  A problem is a :class:`BodyError` with the status to answer
(400, or 415 for a body of a type the route does not take): the request is
refused before anything is queued, extracted or stored.

NDJSON is split on ``\\n`` only (``\\r\\n`` allowed): a raw U+2028 or U+0085 inside a
JSON string is text, not a line break.  Each line is read on its own, so one bad
line is that line's own error and never the others'.
"""
from __future__ import annotations

import json
from typing import Any, Union

#: How deep arrays and objects may nest in a request body.
MAX_DEPTH = 32
#: How many JSON values (scalars, arrays, objects, keys not counted) one body or line may hold.
MAX_VALUES = 200_000

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


class BodyError(ValueError):
    """The request (or one NDJSON line) is unusable: answer *status* with *message*."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def is_json_type(content_type: str) -> bool:
    return content_type in JSON_TYPES or (content_type.startswith("application/") and content_type.endswith("+json"))


def is_ndjson_type(content_type: str) -> bool:
    return content_type in NDJSON_TYPES


def text(data: bytes, what: str = "request body") -> str:
    """*data* as text: strict UTF-8 (no overlong forms, no encoded surrogates), else a 400."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(400, f"{what} is not UTF-8 (byte {error.start})") from None


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(source: Union[str, bytes], what: str = "request body") -> Any:
    """The JSON value in *source*, checked as described above; a :class:`BodyError` otherwise."""
    if isinstance(source, bytes):
        source = text(source, what)
    try:
        value = json.loads(source, parse_constant=_no_constants)
    except RecursionError:
        raise BodyError(400, f"{what}: JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as error:
        raise BodyError(400, f"{what}: malformed JSON: {error}") from None
    check_shape(value, what, may_hold_surrogates="\\u" in source or "\\U" in source)
    return value


def check_shape(value: Any, what: str = "request body", may_hold_surrogates: bool = True) -> None:
    """Depth, size and Unicode of a decoded JSON *value* (without recursion, whatever its depth)."""
    stack = [(value, 1)]
    values = 0
    while stack:
        item, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise BodyError(400, f"{what}: more than {MAX_VALUES} JSON values")
        if isinstance(item, str):
            if may_hold_surrogates:
                _check_unicode(item, what)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH and item:
                raise BodyError(400, f"{what}: JSON nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                for key, member in item.items():
                    if may_hold_surrogates:
                        _check_unicode(key, what)
                    stack.append((member, depth + 1))
            else:
                stack.extend((member, depth + 1) for member in item)


def _check_unicode(string: str, what: str) -> None:
    try:
        string.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BodyError(400, f"{what}: a string holds a lone surrogate "
                             f"(U+{ord(string[error.start]):04X}), which is not Unicode text") from None


def parse_ndjson(data: bytes) -> list:
    """The values of an NDJSON body, one per non-blank line; a bad line is its own :class:`BodyError`."""
    values: list = []
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            values.append(parse_json(line, f"line {number}"))
        except BodyError as error:
            values.append(error)
    return values
