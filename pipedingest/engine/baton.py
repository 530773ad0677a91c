"""Dotted paths into a baton.

A baton is the dict a pipeline passes from step to step.  Processors read their
input from ``input_path`` and write their output to ``output_path``; both are
dotted paths such as ``request.args`` or ``pending_baton.sum``.  The empty path
means the baton itself, so writing to it replaces the baton.
"""
from __future__ import annotations

from typing import Any

_MISSING = object()


class PathError(LookupError):
    """A path does not lead to a value."""


def _parts(path: str) -> list[str]:
    return path.split(".") if path else []


def get_path(baton: Any, path: str, default: Any = _MISSING) -> Any:
    """The value at *path*; *default* (or :class:`PathError`) when absent."""
    value = baton
    for part in _parts(path):
        try:
            if isinstance(value, (list, tuple)):
                value = value[int(part)]
            elif isinstance(value, dict):
                value = value[part]
            else:
                value = getattr(value, part)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            if default is _MISSING:
                raise PathError(f"no value at {path!r} (missing {part!r})") from None
            return default
    return value


def set_path(baton: Any, path: str, value: Any) -> Any:
    """Store *value* at *path*, creating intermediate dicts; return the (new) baton."""
    parts = _parts(path)
    if not parts:
        return value
    target = baton
    for part in parts[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(part, {})
        elif isinstance(target, list):
            target = target[int(part)]
        else:
            target = getattr(target, part)
    last = parts[-1]
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        setattr(target, last, value)
    return baton

