"""Status tests declared in YAML: an HTTP request and what its answer must contain.

::

    status-tests:
      cases:
        - name: ten numbers
          method: GET                 # default GET
          path: /
          query: {n: [1, 2, 3]}
          json: {...}                 # a JSON request body (or body: raw text)
          expect:
            status: 200               # or a list: [200, 201]
            json: {sum: 14}           # a subset: these keys (recursively) must match
            contains: "text"          # the body must contain this text
"""
from __future__ import annotations

from typing import Any

from pipedingest.config.schema import Option

CASE_OPTIONS = {
    "name": Option(str, doc="what the test checks"),
    "method": Option(str, "GET", "the HTTP method"),
    "path": Option(str, doc="the path on the site, starting with /"),
    "query": Option(dict, {}, "query arguments (lists give repeated arguments)"),
    "json": Option(object, None, "a JSON request body"),
    "body": Option((str, type(None)), None, "a raw request body"),
    "headers": Option(dict, {}, "request headers"),
    "expect": Option(dict, doc="status, json (a subset) and/or contains"),
}
EXPECT_OPTIONS = {
    "status": Option((int, list), 200, "the expected status, or a list of acceptable ones"),
    "json": Option(object, None, "a JSON subset the body must contain"),
    "contains": Option((str, type(None)), None, "text the body must contain"),
}


def json_subset_mismatch(expected: Any, actual: Any, path: str = "") -> str | None:
    """Where *actual* fails to contain *expected*, or None.

    Mappings match when every expected key matches; lists match item by item
    and must have the same length; anything else must be equal.
    """
    here = path or "the body"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{here}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            if key not in actual:
                return f"{here}: missing key {key!r}"
            problem = json_subset_mismatch(value, actual[key], f"{path}.{key}" if path else str(key))
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{here}: expected {expected!r}, got {actual!r}"
        for index, (want, got) in enumerate(zip(expected, actual)):
            problem = json_subset_mismatch(want, got, f"{path}[{index}]")
            if problem:
                return problem
        return None
    if expected != actual:
        return f"{here}: expected {expected!r}, got {actual!r}"
    return None


class DeclaredCase:
    """One YAML case; ``run(client)`` returns a Deferred that fails with AssertionError on mismatch."""

    def __init__(self, settings: dict, expect: dict, where):
        self.name = settings["name"]
        self.settings = settings
        self.expect = expect
        self.where = where

    def run(self, client):
        s = self.settings
        body = s["body"].encode("utf-8") if s["body"] is not None else None
        sent = client.request(s["method"].upper(), s["path"], s["query"] or None, s["json"], body, s["headers"])
        return sent.addCallback(self.check)

    def check(self, response) -> None:
        expect = self.expect
        wanted = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
        if response.status not in wanted:
            raise AssertionError(f"expected status {' or '.join(map(str, wanted))}, got {response.status}: "
                                 f"{response.body[:300]!r}")
        if expect["contains"] is not None and expect["contains"].encode("utf-8") not in response.body:
            raise AssertionError(f"the body does not contain {expect['contains']!r}: {response.body[:300]!r}")
        if expect["json"] is not None:
            try:
                actual = response.json()
            except ValueError:
                raise AssertionError(f"the body is not JSON: {response.body[:300]!r}") from None
            problem = json_subset_mismatch(expect["json"], actual)
            if problem:
                raise AssertionError(problem)
