"""Two small pieces of Twisted's HTTP client that it leaves to its users.

Shared by the in-daemon status tests and by ``ingest-load`` (which imports
nothing else of the daemon).
"""
from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    """A request body held in memory."""

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


class _Collect(Protocol):
    def __init__(self, done: Deferred):
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response) -> Deferred:
    """The whole response body (``readBody`` warns about transports without abortConnection)."""
    done: Deferred = Deferred()
    response.deliverBody(_Collect(done))
    return done
