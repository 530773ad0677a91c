"""A long configuration fuzz: mutations of the shipped configurations, each checked as ``--check`` does.

    .venv/bin/python bench/config_fuzz.py [--count 2000] [--seed 1] [--show 3]

Prints how many mutations were tried, how many built clean, how many were refused
with located errors, how many crashed (any exception but ConfigErrors) and how many
were refused with an error that names no ``file:line:col``, and the slowest check.
Exits 1 when anything crashed or an error had no line.  The mutations are those of
``tests/test_config_fuzz.py``, which runs a few hundred of them in the test suite.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_config_fuzz import BASES, check, mutated  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="mutations to try")
    parser.add_argument("--seed", type=int, default=None, help="the first seed (default: random)")
    parser.add_argument("--show", type=int, default=3, help="crashes and unlocated errors to print in full")
    args = parser.parse_args()
    first = args.seed if args.seed is not None else random.randrange(1_000_000_000)
    counts = collections.Counter()
    slowest = (0.0, "")
    shown = 0
    began = time.monotonic()
    for number in range(args.count):
        seed = first + number
        base = sorted(BASES)[seed % len(BASES)]
        with tempfile.TemporaryDirectory() as directory:
            _, done = mutated(base, random.Random(seed), directory)
            outcome = check(directory, BASES[base][0])
        counts[outcome.kind] += 1
        if outcome.seconds > slowest[0]:
            slowest = (outcome.seconds, f"seed {seed}, {base}: {', '.join(done)}")
        if outcome.kind in ("crash", "unlocated") and shown < args.show:
            shown += 1
            print(f"--- {outcome.kind}: seed {seed}, {base}: {', '.join(done)}\n{outcome.detail}", file=sys.stderr)
    print(f"seeds {first}..{first + args.count - 1} in {time.monotonic() - began:.1f} s")
    print(f"tried: {args.count}")
    print(f"clean: {counts['clean']}")
    print(f"rejected with errors: {counts['rejected']}")
    print(f"crashes (tracebacks): {counts['crash']}")
    print(f"errors without a line: {counts['unlocated']}")
    print(f"slowest check: {slowest[0]:.3f} s ({slowest[1]})")
    return 1 if counts["crash"] or counts["unlocated"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
