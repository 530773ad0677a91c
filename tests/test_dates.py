"""``published`` read as a moment when an article is accepted: the forms read, and what is kept otherwise."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from pipedingest.article import check_article
from pipedingest.dates import parse, published_at
from tests.conftest import DEV, url

READ = [
    ("2017-02-07", "2017-02-07T00:00:00.000000Z"),
    ("2017-02-07T10:00:00Z", "2017-02-07T10:00:00.000000Z"),
    ("2017-02-07T10:00:00+02:00", "2017-02-07T08:00:00.000000Z"),
    ("2017-02-07 10:00:00.5-05:00", "2017-02-07T15:00:00.500000Z"),
    ("20170207T100000Z", "2017-02-07T10:00:00.000000Z"),
    ("2017-02-07T10:00:00", "2017-02-07T10:00:00.000000Z"),                 # no offset: UTC
    ("Tue, 07 Feb 2017 10:00:00 +0100", "2017-02-07T09:00:00.000000Z"),     # RFC 2822
    ("07 Feb 2017 10:00 GMT", "2017-02-07T10:00:00.000000Z"),
    ("Tue, 07 Feb 2017 10:00:00 -0000", "2017-02-07T10:00:00.000000Z"),
    ("2017/2/7", "2017-02-07T00:00:00.000000Z"),                            # the news corpus
    ("2017/02/17", "2017-02-17T00:00:00.000000Z"),
    ("          2017/12/01 9:05", "2017-12-01T09:05:00.000000Z"),
]
NOT_DATES = ["yesterday", "", "   ", "2017/13/40", "32/01/2017", "0001-01-01", "2017", "1486461600",
             "Feb 7, 2017", "2017-02-30", "9999-01-01", "x" * 200, "2017/2/7 25:00"]


@pytest.mark.parametrize("text, expected", READ)
def test_each_form_is_read_as_utc(text, expected):
    assert published_at(text) == expected


@pytest.mark.parametrize("text", NOT_DATES)
def test_what_is_not_a_date_is_not_read(text):
    assert published_at(text) is None


def test_the_fixed_width_texts_sort_as_the_moments_do():
    pairs = [(published_at(text), parse(text)) for text, _ in READ]
    assert sorted(pairs, key=lambda pair: pair[0]) == sorted(pairs, key=lambda pair: pair[1])
    assert published_at("2017-02-07T10:00:00.000001Z") > published_at("2017-02-07T10:00:00Z")
    assert published_at("2017/2/7 9:30") < published_at("2017/2/7 10:00")  # 9:30 is not after 10:00


def test_an_accepted_article_carries_the_moment_beside_its_text():
    article = check_article({"body": "Oslo.", "published": "Tue, 07 Feb 2017 10:00:00 +0100"})
    assert article["published"] == "Tue, 07 Feb 2017 10:00:00 +0100"
    assert article["published_at"] == "2017-02-07T09:00:00.000000Z"
    assert "published_at" not in check_article({"body": "Oslo.", "published": "last Tuesday"})
    with pytest.raises(ValueError, match="unknown article field"):
        check_article({"body": "Oslo.", "published_at": "2017-02-07T09:00:00.000000Z"})  # derived, not sent


@pytest_twisted.ensureDeferred
async def test_dates_are_stored_and_an_unreadable_one_is_kept_with_a_warning(daemons):
    daemon = await daemons(path=DEV, overrides=["web.main.port=0", "ner.min_children=1", "status-tests=null"])
    headers = {"content-type": ["application/json"]}

    async def post(article):
        response = await treq.post(url(daemon, "/articles"), json.dumps(article).encode(), headers=headers)
        return response.code, json.loads(await response.content())

    async def stored(article_id):
        response = await treq.get(url(daemon, f"/articles/{article_id}"))
        return json.loads(await response.content())

    status, answer = await post({"id": "dated", "body": "Angela Merkel visited Oslo.", "published": "2017/2/7"})
    assert status == 201 and "warnings" not in answer
    document = await stored("dated")
    assert (document["published"], document["published_at"]) == ("2017/2/7", "2017-02-07T00:00:00.000000Z")

    status, answer = await post({"id": "undated", "body": "Angela Merkel visited Oslo.",
                                 "published": "the day before yesterday"})
    assert status == 201, answer
    assert len(answer["warnings"]) == 1 and "'the day before yesterday' is not a date" in answer["warnings"][0]
    document = await stored("undated")
    assert document["published"] == "the day before yesterday" and "published_at" not in document
    status, again = await post({"id": "undated", "body": "Angela Merkel visited Oslo.",
                                "published": "the day before yesterday"})
    assert (status, again) == (200, answer)  # answered from the store, with the same warning
