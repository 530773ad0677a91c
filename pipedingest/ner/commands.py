"""The AMP commands the NER pool sends to its children, and the argument types that carry big values.

AMP caps a single value at 65,535 bytes: a longer argument raises ``TooLong`` in the sender, and a longer reply
kills the child that sends it. Articles and their entity lists are far bigger, so the payloads here are
*chunked*: one logical value is split over the keys ``name``, ``name.1``, ``name.2``, ... of the same box and
joined again on the other side.

The encodings are chosen to keep the parent (the reactor process) lean: texts travel as their UTF-8 bytes
behind a line of byte lengths (no escaping; the pool encodes each text once, when it accepts it), results as
one compact JSON document that the child builds and the parent parses with the C decoder.
"""
from __future__ import annotations

import json

from twisted.protocols import amp

from pipedingest.ner.errors import ModelLoadFailed

#: the largest value AMP lets one key carry
CHUNK_BYTES = amp.MAX_VALUE_LENGTH


class Chunked(amp.Argument):
    """An argument whose encoded bytes may be of any length: split over ``name``, ``name.1``, ...

    Subclasses say how a value becomes bytes (``encode``) and back (``decode``); the splitting is done here,
    the same way in both directions, so requests and replies have no size limit.
    """

    def encode(self, value) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes):
        raise NotImplementedError

    def toBox(self, name, strings, objects, proto):
        # Twisted has no public way to turn an argument's wire name into its keyword name.
        data = self.encode(self.retrieve(objects, amp._wireNameToPythonIdentifier(name), proto))
        strings[name] = data[:CHUNK_BYTES]
        for index, offset in enumerate(range(CHUNK_BYTES, len(data), CHUNK_BYTES), start=1):
            strings[b"%s.%d" % (name, index)] = data[offset:offset + CHUNK_BYTES]

    def fromBox(self, name, strings, objects, proto):
        parts = [strings[name]]
        index = 1
        while (key := b"%s.%d" % (name, index)) in strings:
            parts.append(strings[key])
            index += 1
        objects[amp._wireNameToPythonIdentifier(name)] = self.decode(b"".join(parts))


class TextList(Chunked):
    """A list of texts: a first line of UTF-8 byte lengths, then the texts' bytes back to back.

    Cheaper than JSON for article bodies: nothing is escaped. The sender may give each text as its UTF-8
    ``bytes`` (the pool does: it encoded the text once, when it checked it) or as ``str``; the receiver always
    gets ``str``.
    """

    def encode(self, texts) -> bytes:
        encoded = [text if isinstance(text, bytes) else text.encode("utf-8") for text in texts]
        header = ",".join(str(len(data)) for data in encoded).encode("ascii")
        return b"\n".join([header, b"".join(encoded)])

    def decode(self, data: bytes) -> list[str]:
        header, _, body = data.partition(b"\n")
        texts, offset = [], 0
        for length in (int(field) for field in header.split(b",")) if header else ():
            texts.append(body[offset:offset + length].decode("utf-8"))
            offset += length
        return texts


class JSONValue(Chunked):
    """Any JSON-able value, as compact UTF-8 JSON."""

    def encode(self, value) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def decode(self, data: bytes):
        return json.loads(data)


_MODEL_ERRORS = {ModelLoadFailed: b"MODEL_LOAD_FAILED"}


class DescribeModel(amp.Command):
    """Ask a child which model it loaded; the pool sends it once to every new child at start-up.

    ``model`` is ``{"name", "version", "spacy", "pipeline"}``: ``name`` is the full package name
    (``lang_name`` from ``nlp.meta``), ``pipeline`` the components that actually run. A child whose model
    did not load answers ``ModelLoadFailed`` with its reason.
    """

    arguments = []
    response = [(b"model", JSONValue()), (b"pid", amp.Integer())]
    errors = _MODEL_ERRORS


class ExtractEntities(amp.Command):
    """Run one batch of texts through ``nlp.pipe`` in a child.

    ``results[i]`` belongs to ``texts[i]``: ``{"entities": [{"text", "label", "start", "end"}, ...]}`` with
    ``start``/``end`` character offsets into that text. No word count: the pool counts whitespace words itself
    when it accepts a text, and a per-token loop here would only cost the child time. ``rss`` is the child's
    resident memory in bytes after the batch, so the pool can recycle a child that grew too big.
    """

    arguments = [(b"texts", TextList())]
    response = [(b"results", JSONValue()), (b"rss", amp.Integer())]
    errors = _MODEL_ERRORS
