"""The tutorial's TestRPCWithoutWorkers: with no answers from the workers, the reaper's fallback answers.

The tutorial stopped its ZeroMQ poller; here the server stops reading its two answer streams for the length
of the test, so whatever the workers send is not seen, and the request must be answered by the reaper, after
the two seconds it gives the workers.
"""
from __future__ import annotations

import time

from twisted.internet.defer import gatherResults
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.statustest.case import IStatusTest, StatusTestCase

ANSWER_STREAMS = ("redis.consumer.server_sum_in", "redis.consumer.server_square_in")


@provider(IPlugin, IStatusTest)
class TestRPCWithoutWorkers(StatusTestCase):
    def setUp(self):
        self.readers = [self.runtime.get(name) for name in ANSWER_STREAMS]
        return gatherResults([reader.stopService() for reader in self.readers])

    def tearDown(self):
        for reader in self.readers:
            reader.startService()

    async def statustest_single_number(self):
        started = time.time()
        result = await self.get_json("/", n=[42])
        finished = time.time()
        # the server should have given the workers two seconds to produce both partial responses:
        self.assertTrue(finished - started > 2, f"answered after {finished - started:.2f}s")
        # and our reap-baton pipeline should have provided us with a fallback response.
        self.assertEqual(result, {"success": False})
