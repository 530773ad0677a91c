"""The AMP child: one process, one spaCy pipeline, loaded once, fed batches of texts.

This is the only module of the daemon that imports spaCy. The pool starts it as
``python -m pipedingest.ner.child SETTINGS`` (see ``main``), SETTINGS being one JSON string (see
``ChildSettings``): the model never travels through environment variables, and ``ps`` shows what each child is.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass

from ampoule.child import AMPChild
from twisted import logger
from twisted.internet import defer

from pipedingest.ner.commands import DescribeModel, ExtractEntities
from pipedingest.ner.errors import ModelLoadFailed

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

#: a batch longer than this (characters) is never learned from: one huge or hostile article must not leave its
#: strings in a child for good
LEARN_MAX_CHARS = 50_000


@dataclass(frozen=True)
class ChildSettings:
    """What a child needs to load its model; the pool writes it as JSON, the child reads it back.

    ``learn_lexemes``: while the vocabulary holds fewer lexemes than this, a batch of at most ``LEARN_MAX_CHARS``
    runs outside spaCy's memory zone, so that its words stay in the vocabulary and the tokenizer's cache for good
    (0: never). About 0.9 KiB each: the default, 30,000, is reached after some 700 news articles, for ~27 MiB.

    ``crash_marker_for_tests`` is a test hook and nothing else: when set, a batch containing a text with that
    marker makes the child ``os._exit`` at once, which is how tests put a crash at an exact moment (a poison
    article). It is empty in every real configuration.
    """

    model: str
    exclude: tuple[str, ...] = ()
    max_chars: int = 2_000_000
    learn_lexemes: int = 30_000
    crash_marker_for_tests: str = ""

    def to_json(self) -> str:
        """ASCII-only JSON: it is the child's command-line argument, where a NUL (the tests' marker has some)
        could not go."""
        return json.dumps({**self.__dict__, "exclude": list(self.exclude)})

    @classmethod
    def from_json(cls, text: str) -> "ChildSettings":
        values = json.loads(text)
        return cls(**{**values, "exclude": tuple(values["exclude"])})


def resident_bytes() -> int:
    """The process's current resident set size (``/proc/self/statm``), unlike ``ru_maxrss`` which only grows."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


class NERChild(AMPChild):
    """Loads the model when the process starts and answers ``DescribeModel`` and ``ExtractEntities``.

    A model that fails to load does not kill the process (the pool would only start another that fails the
    same way): the error is kept and returned to every command, so the pool reports it at start-up.

    The pool may send a busy child its next batch before the current one is answered (``prefetch``), so that
    the child starts it the moment it is done, with no round trip through the parent in between. Batches are
    therefore queued here and run one at a time, in the order they came, each on a later turn of the reactor
    than the answer before it: that answer is written to the pipe before the next batch begins, not held
    behind it.
    """

    def __init__(self, settings: str, clock=None):
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.settings = ChildSettings.from_json(settings)
        self.nlp = None
        self.load_error = None
        self._batches = collections.deque()
        self._turn = None
        try:
            import spacy

            self.nlp = spacy.load(self.settings.model, exclude=list(self.settings.exclude))
            self.nlp.max_length = max(self.nlp.max_length, self.settings.max_chars)
        except Exception as error:  # any failure to load is reported, not raised: see the class docstring
            self.load_error = f"cannot load spaCy model {self.settings.model!r}: {type(error).__name__}: {error}"

    def _loaded(self):
        if self.nlp is None:
            raise ModelLoadFailed(self.load_error)
        return self.nlp

    @DescribeModel.responder
    def describe_model(self):
        import spacy

        meta = self._loaded().meta
        model = {
            "name": f"{meta['lang']}_{meta['name']}",
            "version": meta["version"],
            "spacy": spacy.__version__,
            "pipeline": list(self.nlp.pipe_names),
        }
        return {"model": model, "pid": os.getpid()}

    @ExtractEntities.responder
    def extract_entities(self, texts):
        answer = defer.Deferred()
        self._batches.append((texts, answer))
        if self._turn is None:
            self._turn = self.clock.callLater(0, self._next_batch)
        return answer

    def _next_batch(self):
        """Run the oldest batch; the next waits for a later turn, after this answer has been written."""
        self._turn = None
        texts, answer = self._batches.popleft()
        if self._batches:
            self._turn = self.clock.callLater(0, self._next_batch)
        try:
            result = self.extract(texts)
        except Exception:
            answer.errback()
        else:
            answer.callback(result)

    def extract(self, texts: list[str]) -> dict:
        """The entities of each text, and this process's resident memory after the batch."""
        nlp = self._loaded()
        marker = self.settings.crash_marker_for_tests
        if marker and any(marker in text for text in texts):
            os._exit(70)
        # memory_zone frees the strings, lexemes and tokenizer cache entries a batch added, so a child's memory
        # does not creep up. It also forgets every word, so each article would be tokenized from scratch: until
        # the vocabulary holds learn_lexemes, small batches run outside the zone and their words stay cached.
        learn = (len(nlp.vocab) < self.settings.learn_lexemes
                 and sum(len(text) for text in texts) <= LEARN_MAX_CHARS)
        with contextlib.nullcontext() if learn else nlp.memory_zone():
            results = [
                {"entities": [
                    {"text": ent.text, "label": ent.label_, "start": ent.start_char, "end": ent.end_char}
                    for ent in doc.ents
                ]}
                for doc in nlp.pipe(texts, batch_size=max(1, len(texts)))
            ]
        return {"results": results, "rss": resident_bytes()}


def main(argv=None) -> None:
    """Run one child: ``python -m pipedingest.ner.child SETTINGS``, what ampoule's bootstrap code does.

    The pool speaks AMP on file descriptors 3 (to the child) and 4 (from it), which leaves stdout and stderr to
    whatever a library prints; the pool logs those lines as warnings, so the child logs warnings and worse
    only. SIGINT is ignored: a Ctrl-C in the daemon's terminal reaches the whole process group, and it is the
    pool that stops its children, after their work is done (it would otherwise see them die and start new ones
    while shutting down). The model loads before AMP starts; commands sent meanwhile wait in the pipe.
    """
    (settings,) = (sys.argv if argv is None else argv)[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The platform's default reactor: importing ampoule (above) has installed it already.
    from twisted.internet import reactor, stdio

    quiet = logger.LogLevelFilterPredicate(defaultLogLevel=logger.LogLevel.warn)
    logger.globalLogBeginner.beginLoggingTo(
        [logger.FilteringLogObserver(logger.textFileLogObserver(sys.stderr), [quiet])]
    )
    stdio.StandardIO(NERChild(settings), stdin=3, stdout=4)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
