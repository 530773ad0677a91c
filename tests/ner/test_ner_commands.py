"""The chunked AMP arguments: values far beyond AMP's 65,535-byte limit survive a real AMP connection."""
from __future__ import annotations

from twisted.protocols import amp
from twisted.test import iosim

from pipedingest.ner.commands import CHUNK_BYTES, JSONValue, TextList


class Echo(amp.Command):
    arguments = [(b"texts", TextList())]
    response = [(b"texts", TextList()), (b"lengths", JSONValue())]


class EchoServer(amp.AMP):
    @Echo.responder
    def echo(self, texts):
        return {"texts": texts, "lengths": [{"chars": len(text)} for text in texts]}


def test_big_values_pass_both_ways():
    big = ("naïve café — 東京 " * 80_000)[: 1 << 20]  # 1 Mi characters, multi-byte UTF-8 across chunk edges
    texts = ["", "short", big, "x" * (CHUNK_BYTES + 1)]
    client, server, pump = iosim.connectedServerAndClient(ServerClass=EchoServer, ClientClass=amp.AMP)
    answers = []
    client.callRemote(Echo, texts=texts).addBoth(answers.append)
    pump.flush()
    assert answers == [{"texts": texts, "lengths": [{"chars": len(text)} for text in texts]}]


def test_each_chunk_fits_in_one_amp_value():
    strings = amp.AmpBox()
    data = "é" * 100_000  # 200,000 bytes
    TextList().toBox(b"texts", strings, {"texts": [data]}, None)
    assert len(strings) > 1
    assert all(len(value) <= CHUNK_BYTES for value in strings.values())
    strings.serialize()  # raises TooLong if any value were too big
    objects = {}
    TextList().fromBox(b"texts", strings, objects, None)
    assert objects == {"texts": [data]}


def test_empty_list_round_trips():
    strings = amp.AmpBox()
    TextList().toBox(b"texts", strings, {"texts": []}, None)
    objects = {}
    TextList().fromBox(b"texts", strings, objects, None)
    assert objects == {"texts": []}
