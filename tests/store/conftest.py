"""Fixtures for the stores: a real Firestore emulator per session, stores that stop after each test."""
from __future__ import annotations


import pytest
import pytest_twisted
from twisted.internet import reactor, task



@pytest_twisted.async_yield_fixture
async def firestore_stores(firestore):
    """``firestore_stores(**kwargs)``: a started FirestoreStore; every one is stopped after the test."""
    from pipedingest.store.firestore import FirestoreStore

    started = []

    def make(**kwargs):
        kwargs.setdefault("project", firestore.project)
        store = FirestoreStore(**kwargs)
        store.startService()
        started.append(store)
        return store

    yield make
    for store in reversed(started):
        if store.running:
            await store.stopService()


@pytest_twisted.async_yield_fixture
async def sqlite_stores(tmp_path):
    """``sqlite_stores(**kwargs)``: a started SQLiteStore (default: a file in tmp_path), stopped after."""
    from pipedingest.store.sqlite import SQLiteStore

    started = []

    def make(**kwargs):
        kwargs.setdefault("path", str(tmp_path / "articles.sqlite"))
        store = SQLiteStore(**kwargs)
        store.startService()
        started.append(store)
        return store

    yield make
    for store in reversed(started):
        if store.running:
            await store.stopService()


@pytest.fixture
def make_article():
    """``make_article(n, **overrides)``: a processed article as the NER step hands it to the store."""

    def make(n, source="wire", body=None, entities=None, **overrides):
        body = body if body is not None else f"Ada Lovelace met Charles Babbage in London ({n})."
        if entities is None:
            entities = [
                {"text": "Ada Lovelace", "label": "PERSON", "start": 0, "end": 12},
                {"text": "Charles Babbage", "label": "PERSON", "start": 17, "end": 32},
                {"text": "London", "label": "GPE", "start": 36, "end": 42},
            ]
        counts: dict[str, int] = {}
        for entity in entities:
            counts[entity["label"]] = counts.get(entity["label"], 0) + 1
        article = {
            "id": f"article-{n}", "title": f"Title {n}", "source": source,
            "url": f"https://example.com/{n}", "published": "2025-01-31T12:00:00Z",
            "body": body, "entities": entities, "entity_counts": counts,
            "words": len(body.split()), "model": {"name": "en_core_web_sm", "version": "3.8.0"},
        }
        article.update(overrides)
        return article

    return make


@pytest.fixture
def wait_until():
    """``await wait_until(predicate, what=...)``: poll on the reactor; fail after a timeout (a hang guard)."""

    async def wait(predicate, timeout=30.0, what="the condition"):
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    return wait
