"""The AMP child: one process, one spaCy pipeline, loaded once, fed batches of texts.

This is the only module of the daemon that imports spaCy. ampoule starts it in a fresh interpreter by its
dotted name (``pipedingest.ner.child.NERChild``) and passes the pool's ``ampChildArgs`` to the constructor: here
one JSON string of settings (see ``ChildSettings``), so the model never travels through environment variables.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ampoule.child import AMPChild

from pipedingest.ner.commands import DescribeModel, ExtractEntities
from pipedingest.ner.errors import ModelLoadFailed

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ChildSettings:
    """What a child needs to load its model; the pool writes it as JSON, the child reads it back.

    ``crash_marker_for_tests`` is a test hook and nothing else: when set, a batch containing a text with that
    marker makes the child ``os._exit`` at once, which is how tests put a crash at an exact moment (a poison
    article). It is empty in every real configuration.
    """

    model: str
    exclude: tuple[str, ...] = ()
    max_chars: int = 2_000_000
    crash_marker_for_tests: str = ""

    def to_json(self) -> str:
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
    """

    def __init__(self, settings: str):
        super().__init__()
        self.settings = ChildSettings.from_json(settings)
        self.nlp = None
        self.load_error = None
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
        nlp = self._loaded()
        marker = self.settings.crash_marker_for_tests
        if marker and any(marker in text for text in texts):
            os._exit(70)
        results = []
        # memory_zone frees the strings and docs a batch interned, so a child's memory does not creep up.
        with nlp.memory_zone():
            for doc in nlp.pipe(texts, batch_size=max(1, len(texts))):
                results.append({
                    "entities": [
                        {"text": ent.text, "label": ent.label_, "start": ent.start_char, "end": ent.end_char}
                        for ent in doc.ents
                    ],
                    "words": sum(1 for token in doc if not (token.is_space or token.is_punct)),
                })
        return {"results": results, "rss": resident_bytes()}
