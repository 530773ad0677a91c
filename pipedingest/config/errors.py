"""Configuration errors, collected rather than raised one at a time.

An operator who edits a pipeline wants every mistake at once, each pointing at
the file and line to fix, before the daemon binds a single port.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, or an ``-O`` override."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file

    def shifted(self, lines: int, column: int = 0) -> "Location":
        """A position inside a multi-line value (such as a code block)."""
        return Location(self.file, self.line + lines, column or self.column)


UNKNOWN = Location("<unknown>")


class ConfigError(Exception):
    """One problem in the configuration: what is wrong, and what to do about it."""

    def __init__(self, message: str, hint: str = "", where: Optional[Location] = None, key: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where
        #: The option (within the processor or section being checked) the problem is about,
        #: so that whoever collects the error can point at that key's line.
        self.key = key

    def render(self) -> str:
        text = f"{self.where or UNKNOWN}: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text

    def __str__(self) -> str:
        return self.render()


class ConfigErrors(Exception):
    """All the problems found in one configuration."""

    def __init__(self, errors: Iterable[ConfigError]):
        unique = {error.render(): error for error in errors}  # a value reached through aliases is checked twice
        self.errors = sorted(unique.values(), key=_sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(error.render() for error in self.errors)


def _sort_key(error: ConfigError):
    where = error.where or UNKNOWN
    return (where.file, where.line, where.column, error.message)


class ErrorCollector:
    """Accumulates :class:`ConfigError` instances while a configuration is checked."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, message: str, where: Optional[Location], hint: str = "") -> None:
        self.errors.append(ConfigError(message, hint, where))

    def extend(self, errors: Iterable[ConfigError]) -> None:
        self.errors.extend(errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors)


def close_matches_hint(word: str, candidates: Iterable[str], what: str = "") -> str:
    """A hint naming the candidates closest to a misspelt *word*."""
    candidates = sorted({str(candidate) for candidate in candidates})
    matches = difflib.get_close_matches(str(word), candidates, n=3, cutoff=0.6)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    if candidates and len(candidates) <= 12:
        label = f"known {what}: " if what else "expected one of: "
        return label + ", ".join(candidates)
    return ""
