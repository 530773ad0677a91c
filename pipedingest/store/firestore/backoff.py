"""How long to wait before retrying a commit or a transaction after a transient failure.

Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED,
INTERNAL: :func:`~.client.is_transient`) are retried with exponential backoff and
jitter until ``retry_deadline`` seconds have passed since the first attempt.
"""
from __future__ import annotations

import random as _random


class Backoff:
    """Exponential backoff with jitter, bounded by a deadline from the first attempt.

    :param initial, maximum, deadline: the first delay, the largest, and the total time before giving up.
    :param clock: IReactorTime.
    :param random: a ``random.Random`` for the jitter.
    """

    def __init__(self, initial: float, maximum: float, deadline: float, clock, random: _random.Random):
        self.initial = initial
        self.maximum = maximum
        self.deadline = deadline
        self._clock = clock
        self._random = random

    def delay(self, failures: int, first_attempt: float) -> float | None:
        """Seconds to wait after the transient failure number *failures* (from 0): exponential, with
        jitter; None when retrying then would pass the deadline since *first_attempt*."""
        delay = min(self.maximum, self.initial * 2 ** failures)
        delay = delay / 2 + self._random.uniform(0, delay / 2)
        if self._clock.seconds() + delay - first_attempt > self.deadline:
            return None
        return delay
