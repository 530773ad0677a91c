"""How queued articles are cut into batches (no children needed)."""
from __future__ import annotations

from twisted.internet import defer

from pipedingest.ner.queue import Article, ArticleQueue


def article(words: int, alone: bool = False) -> Article:
    return Article(data=b"w " * words, words=words, queued_at=0.0, deadline=1.0, result=defer.Deferred(),
                   alone=alone)


def test_batch_stops_at_max_docs_and_max_words():
    queue = ArticleQueue(max_batch_docs=3, max_batch_words=100)
    items = [article(10) for _ in range(5)]
    for item in items:
        queue.append(item)
    assert queue.next_batch() == items[:3]
    assert len(queue) == 2 and queue.words == 20

    queue = ArticleQueue(max_batch_docs=10, max_batch_words=100)
    items = [article(40), article(40), article(40)]
    for item in items:
        queue.append(item)
    assert queue.next_batch() == items[:2]
    assert queue.next_batch() == items[2:]
    assert queue.words == 0


def test_an_article_bigger_than_max_words_still_goes_alone():
    queue = ArticleQueue(max_batch_docs=10, max_batch_words=100)
    big, small = article(500), article(5)
    queue.append(big)
    queue.append(small)
    assert queue.next_batch() == [big]
    assert queue.next_batch() == [small]


def test_small_queue_is_shared_between_idle_children():
    queue = ArticleQueue(max_batch_docs=16, max_batch_words=10_000)
    items = [article(10) for _ in range(8)]
    for item in items:
        queue.append(item)
    assert queue.next_batch(share=2) == items[:4]
    assert queue.next_batch(share=1) == items[4:]


def test_retried_article_goes_first_and_alone():
    queue = ArticleQueue(max_batch_docs=16, max_batch_words=10_000)
    waiting = [article(10) for _ in range(3)]
    for item in waiting:
        queue.append(item)
    retried = article(10, alone=True)
    queue.retry_first(retried)
    assert queue.full
    assert queue.next_batch() == [retried]
    assert queue.next_batch() == waiting


def test_full_when_a_batch_could_be_filled():
    queue = ArticleQueue(max_batch_docs=2, max_batch_words=100)
    assert not queue.full
    queue.append(article(10))
    assert not queue.full
    queue.append(article(10))
    assert queue.full
    queue = ArticleQueue(max_batch_docs=10, max_batch_words=100)
    queue.append(article(120))
    assert queue.full


def test_remove_keeps_word_count():
    queue = ArticleQueue(max_batch_docs=10, max_batch_words=100)
    first, second = article(7), article(11)
    queue.append(first)
    queue.append(second)
    assert queue.remove(first) and not queue.remove(first)
    assert len(queue) == 1 and queue.words == 11


def test_batches_needed_counts_full_batches_and_a_partial_one():
    queue = ArticleQueue(max_batch_docs=4, max_batch_words=1000)
    assert queue.batches_needed() == 0
    for _ in range(5):
        queue.append(article(1))
    assert queue.batches_needed() == 2
