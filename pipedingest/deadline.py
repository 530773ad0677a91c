"""One deadline per request, from which every timer of that request derives.

A site gives each request it accepts a :class:`Deadline`: the moment by which it
must be answered, on the daemon's clock.  The baton carries it (``deadline``),
and whatever waits on slow work for that request takes its time from it: the NER
pool fails an article still unanswered at that moment (and kills a child that
overran it), the pending table's reaper answers an entry past it with its
fallback, and the site's backstop answers 504 a moment later if nobody else has.
A processor that knows a request needs longer (a long article) may extend it
before the work starts; nobody shortens it.
"""
from __future__ import annotations


class Deadline:
    """An absolute time on *clock* (``clock.seconds()`` scale)."""

    __slots__ = ("clock", "at")

    def __init__(self, clock, at: float):
        self.clock = clock
        self.at = at

    @classmethod
    def after(cls, clock, seconds: float) -> "Deadline":
        return cls(clock, clock.seconds() + seconds)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock.seconds()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0

    def extend_to(self, at: float) -> None:
        """Move the deadline later (never earlier)."""
        self.at = max(self.at, at)

    def __repr__(self) -> str:
        return f"<Deadline in {self.remaining():.3f}s>"
