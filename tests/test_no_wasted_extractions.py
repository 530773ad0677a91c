"""No wasted extractions: an article whose id is already stored is answered from the store, not by NER."""
from __future__ import annotations

import json

import pytest_twisted
import treq

from tests.conftest import DEV, url
from tests.corpus import corpus_path
from pipedingest.load import read_articles

JSON = {"content-type": ["application/json"]}
OVERRIDES = ["web.main.port=0", "ner.min_children=1", "status-tests=null"]


async def post(daemon, path: str, body) -> tuple[int, object]:
    response = await treq.post(url(daemon, path), json.dumps(body).encode(), headers=JSON)
    return response.code, json.loads(await response.content())


def extracted(daemon) -> int:
    """Articles the NER pool has extracted so far."""
    return daemon.runtime.get("ner.pool").state()["articles"]


@pytest_twisted.ensureDeferred
async def test_a_stored_article_is_answered_from_the_store_without_extraction(daemons):
    daemon = await daemons(path=DEV, overrides=OVERRIDES)
    articles = [{"id": f"again-{n}", "source": "wire", "body": a["body"]}
                for n, a in enumerate(a for a in read_articles(corpus_path(), 12) if a["body"].strip())][:8]
    first = [await post(daemon, "/articles", article) for article in articles]
    assert [status for status, _ in first] == [201] * len(articles)
    done = extracted(daemon)
    assert done == len(articles)

    again = [await post(daemon, "/articles", article) for article in articles]
    assert [status for status, _ in again] == [200] * len(articles)
    assert [answer for _, answer in again] == [answer for _, answer in first]  # the same entities, counts, words
    code, batch = await post(daemon, "/articles/batch", articles)
    assert code == 200 and [item["status"] for item in batch["results"]] == [200] * len(articles)
    assert [{k: v for k, v in item.items() if k != "status"} for item in batch["results"]] == \
        [answer for _, answer in first]
    assert extracted(daemon) == done, "an article already stored was extracted again"

    # Only the id decides: the article stored first wins, as store-article has always answered.
    code, answer = await post(daemon, "/articles", dict(articles[0], body="Another body, in Oslo."))
    assert code == 200 and answer == first[0][1] and extracted(daemon) == done
    code, answer = await post(daemon, "/articles", {"id": "new-one", "body": "Angela Merkel visited Oslo."})
    assert code == 201 and extracted(daemon) == done + 1
