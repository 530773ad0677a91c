"""A long HTTP fuzz of conf/dev.yaml: ``make fuzz`` (10,000 requests) or ``.venv/bin/python bench/http_fuzz.py -n N``.

The same generated requests and checks as tests/test_http_fuzz.py (see tests/http_fuzz.py), many more of them,
against one real ``twistd ingest`` process. Prints: requests, crashes (the daemon died), unexpected 5xx, hangs,
answers that are not JSON, articles stored without a 2xx, the statuses seen and the slowest answer; exits 1 if
any of the first five is not 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from tests.http_fuzz import OVERRIDES, Tally, requests, send, stored_ids  # noqa: E402
from tests.twistd_process import Daemon  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    options = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="pipedingest-fuzz-")
    daemon = Daemon(os.path.join(ROOT, "conf", "dev.yaml"), *OVERRIDES, cwd=folder,
                    env=dict(os.environ, INGEST_DATA=os.path.join(folder, "data")))
    tally = Tally()
    crashed = False
    started = time.monotonic()
    try:
        daemon.wait_ready()

        @settings(max_examples=options.requests, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def one(request):
            nonlocal crashed
            if crashed:
                return
            kind, wire = request
            tally.add(send(daemon.port, wire, kind))
            if tally.sent % 1000 == 0:
                print(f"  {tally.sent} requests, problems {dict(tally.problems)}", flush=True)
            if daemon.process.poll() is not None:
                crashed = True

        one()
        stored = stored_ids(os.path.join(folder, "data", "articles.sqlite"))
    finally:
        daemon.terminate()
        exit_code = daemon.wait(120)
        daemon.kill()
    seconds = time.monotonic() - started
    unacknowledged = stored - tally.acknowledged
    figures = {
        "requests": tally.sent,
        "crashes": int(crashed),
        "unexpected 5xx": tally.problems["5xx"],
        "hangs": tally.problems["hang"],
        "not JSON": tally.problems["not-json"] + tally.problems["no-answer"],
        "stored without a 2xx": len(unacknowledged),
    }
    for name, value in figures.items():
        print(f"{name:>22}: {value}")
    print(f"{'stored (all 2xx)':>22}: {len(stored)}")
    print(f"{'statuses':>22}: {dict(sorted(tally.statuses.items()))}")
    print(f"{'slowest answer':>22}: {tally.slowest:.2f} s")
    print(f"{'duration':>22}: {seconds:.0f} s; daemon exit status after SIGTERM: {exit_code}")
    for problem, example in tally.examples.items():
        print(f"first {problem}: {example}")
    return 1 if any(value for name, value in figures.items() if name != "requests") or exit_code else 0


if __name__ == "__main__":
    sys.exit(main())
