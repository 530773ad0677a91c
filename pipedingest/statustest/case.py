"""Python status tests: test-case classes that run inside the daemon.

Write a subclass of :class:`StatusTestCase` in a plugin package, mark it with
``@provider(IStatusTest)``, and name the package under ``status-tests:
packages:``.  Each ``statustest_*`` method is one test; it may return a
Deferred or be a coroutine.  ``self.client`` talks HTTP to the daemon's own
site, ``self.runtime`` reaches its named resources (``pipeline.x``,
``context.y``), and the usual ``assert*`` methods are available.
"""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface


class IStatusTest(Interface):
    """A StatusTestCase subclass to run at startup."""


class StatusTestCase(SynchronousTestCase):
    """Base class for in-daemon status tests."""

    prefix = "statustest_"

    def __init__(self, method_name: str, client, runtime):
        super().__init__(method_name)
        self.client = client
        self.runtime = runtime

    @classmethod
    def test_names(cls) -> list[str]:
        return sorted(name for name in dir(cls) if name.startswith(cls.prefix) and callable(getattr(cls, name)))

    def setUp(self):
        """Override to prepare; may return a Deferred."""

    def tearDown(self):
        """Override to clean up; may return a Deferred."""

    def get_json(self, path: str, **query):
        """GET *path* and return the decoded JSON body (asserting a 2xx status)."""

        def decode(response):
            self.assertTrue(200 <= response.status < 300, f"GET {path} answered {response.status}: "
                                                           f"{response.body[:200]!r}")
            return response.json()

        return self.client.request("GET", path, query or None).addCallback(decode)
