"""What a store reports to /metrics (``metrics()``): writes by outcome, commits, failures, commit durations.

The same puts go to SQLite and to Google's Firestore emulator; each store's figures must say what happened.
"""
import pytest
import pytest_twisted

from pipedingest.store.base import DocumentTooLarge


def figures(store) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in store.metrics() for sample in family.samples}


def value(found: dict, name: str, **labels) -> float:
    matches = [v for (sample, given), v in found.items() if sample == name and set(labels.items()) <= set(given)]
    assert len(matches) == 1, f"{len(matches)} samples {name} {labels}"
    return matches[0]


@pytest_twisted.ensureDeferred
async def test_sqlite_reports_its_writes_commits_failures_and_commit_times(sqlite_stores, make_article):
    await reports_what_happened(sqlite_stores(entity_counters=True), "sqlite", make_article)


@pytest_twisted.ensureDeferred
async def test_firestore_reports_its_writes_commits_failures_and_commit_times(firestore_stores, make_article):
    await reports_what_happened(firestore_stores(entity_counters=True), "firestore", make_article)


async def reports_what_happened(store, kind: str, make_article):
    store.setName("store.articles")
    for n in range(3):
        assert await store.put(make_article(n)) is True
    assert await store.put(make_article(0)) is False
    with pytest.raises(DocumentTooLarge):
        await store.put(make_article(9, body="x" * 1_100_000))
    found = figures(store)
    labels = {"store": "articles", "kind": kind}
    assert value(found, "pipedingest_store_writes_total", outcome="created", **labels) == 3
    assert value(found, "pipedingest_store_writes_total", outcome="existing", **labels) == 1
    assert value(found, "pipedingest_store_failures_total", **labels) == 1
    commits = value(found, "pipedingest_store_commits_total", **labels)
    timed = value(found, "pipedingest_store_commit_seconds_count", **labels)
    assert 1 <= commits <= timed  # a commit that only found its ids stored is timed, not counted
    assert value(found, "pipedingest_store_commit_seconds_bucket", le="+Inf", **labels) == timed
    assert value(found, "pipedingest_store_queued", **labels) == 0
    assert value(found, "pipedingest_store_retries_total", **labels) == 0
