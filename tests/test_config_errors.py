"""Configuration mistakes found by fuzzing, each reported as ``file:line:col: message — hint``, never a traceback."""
import os
import shutil
import time

import pytest

from tests.conftest import ROOT, config_errors, write_config
from tests.twistd_process import twistd


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run in the test's folder, so that errors name files as an operator would see them."""
    monkeypatch.chdir(tmp_path)


SITE = """\
web:
  site:
    port: 0
    routing: {__config__: {processor: pipeline.echo}}
pipelines:
  echo: [write-web-response]
"""

# -- values of the wrong shape -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("stores: {articles: {kind: {a: 1}}}\n",
     "conf.yaml:1:27: option 'kind' of store 'articles' must be a string, not a mapping — sqlite or firestore"),
    ("stores: {articles: [kind, sqlite]}\n",
     "conf.yaml:1:20: store 'articles' must be a mapping, not a list — "
     "for example: stores: {articles: {kind: sqlite, path: var/articles.sqlite}}"),
    ("ner: {exclude: [[tagger]]}\n",
     "conf.yaml:1:16: option 'exclude' of 'ner' must be a list of strings; item 1 is a list — "
     "components NER does not need"),
    ("status-tests: {packages: [{a: 1}]}\n",
     "conf.yaml:1:26: option 'packages' of 'status-tests' must be a list of strings; item 1 is a mapping — "
     "plugin packages holding StatusTestCase classes"),
    ("contexts: {[1]: 2}\n",
     "conf.yaml:1:12: a mapping key must be a plain value — write the key as a string, e.g. 'name:'"),
    ("pipelines:\n  x:\n    - 5: {}\n",
     "conf.yaml:3:7: unknown processor 5"),
    ("pipelines:\n  x:\n    - write-web-response: {headers: {x-count: 1}}\n",
     "conf.yaml:3:37: option 'headers' of processor 'write-web-response' must be a mapping of strings; "
     "the value of 'x-count' is an integer — extra response headers"),
    ("ner: {max_queued: -" + "9" * 400 + "}\n",
     "conf.yaml:1:19: option 'max_queued' of 'ner' must be at least 1, not a negative integer of 400 digits — "
     "articles waiting at most; beyond: 503"),
])
def test_a_value_of_the_wrong_shape_is_reported_not_raised(tmp_path, text, expected):
    assert config_errors(tmp_path, text) == [expected]


@pytest.mark.parametrize("text, expected", [
    ("ner: {max_wait: !!float x}\n",
     "conf.yaml:1:17: 'x' is not a valid !!float — write a valid value, or quote it (without a tag) to keep it as "
     "a string"),
    ("contexts: {a: !!bool maybe}\n",
     "conf.yaml:1:15: 'maybe' is not a valid !!bool — write a valid value, or quote it (without a tag) to keep it "
     "as a string"),
    ("contexts: {a: 2024-13-45}\n",
     "conf.yaml:1:15: '2024-13-45' is not a valid !!timestamp — write a valid value, or quote it (without a tag) "
     "to keep it as a string"),
])
def test_a_standard_tag_whose_value_does_not_parse_is_reported(tmp_path, text, expected):
    assert config_errors(tmp_path, text) == [expected]


@pytest.mark.parametrize("text, expected", [
    ("a: " + "[" * 5000 + "\n",
     "conf.yaml:1:67: mappings and lists nest more than 64 deep here — "
     "flatten this value: no configuration needs to nest so deep"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n",
     "conf.yaml:1:67: mappings and lists nest more than 64 deep here — "
     "flatten this value: no configuration needs to nest so deep"),
    ("a: &deep " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*deep" + "]" * 30 + "\n",
     "conf.yaml:2:34: alias *deep makes mappings and lists nest more than 64 deep — "
     "flatten the value it names, or repeat less of it"),
])
def test_deep_nesting_is_reported_at_the_node_that_goes_too_deep(tmp_path, text, expected):
    assert config_errors(tmp_path, text) == [expected]


def test_an_override_that_contains_itself_is_reported(tmp_path):
    errors = config_errors(tmp_path, SITE, ["web.site.port=&a [*a]"])
    assert errors == ["-O web.site.port=&a [*a]: alias *a is inside the value it names, so it would never end — "
                      "an alias can only repeat a value that is complete before it"]


def test_an_override_with_a_bad_tag_is_reported(tmp_path):
    errors = config_errors(tmp_path, SITE, ["web.site.port=!!float x"])
    assert errors == ["-O web.site.port=!!float x: 'x' is not a valid !!float — write a valid value, or quote it "
                      "(without a tag) to keep it as a string"]


def test_an_override_below_a_list_item_that_is_a_value_is_reported(tmp_path):
    errors = config_errors(tmp_path, SITE, ["pipelines.echo.0.status=201"])
    assert errors == ["-O pipelines.echo.0.status=201: pipelines.echo.0 is a value, not a section"]


# -- aliases: allowed, within caps ------------------------------------------------------------------------------

BOMB = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]\n" for level in range(1, 9))


def test_an_alias_bomb_is_refused_at_once_at_the_alias_that_makes_it_too_large(tmp_path):
    began = time.monotonic()
    errors = config_errors(tmp_path, BOMB)
    assert time.monotonic() - began < 2
    assert errors == ["conf.yaml:6:10: alias *a4 makes the configuration too large: more than 100,000 values once "
                      "aliases are expanded — an alias repeats its whole value; use fewer aliases, or alias smaller "
                      "values"]


def test_a_bomb_of_includes_is_refused_too(tmp_path):
    for level in range(20):
        write_config(tmp_path, f"includes: [i{level + 1}.yaml, i{level + 1}.yaml]\n", f"i{level}.yaml")
    write_config(tmp_path, "contexts: {}\n", "i20.yaml")
    began = time.monotonic()
    errors = config_errors(tmp_path, "includes: [i0.yaml]\n")
    assert time.monotonic() - began < 2
    assert errors == ["i19.yaml:1:12: the configuration reads more than 256 files — each include reads its file "
                      "again: include a file once, not from every file that uses it"]


def test_aliases_within_the_caps_are_allowed(tmp_path):
    path = write_config(tmp_path, SITE + "contexts:\n  a: &shared {b: [1, 2]}\n  c: *shared\n")
    from pipedingest.config.loader import load_config

    config = load_config(path)
    assert config["contexts"]["c"] == {"b": [1, 2]}
    assert config_errors(tmp_path, SITE + "contexts:\n  a: &shared {b: [1, 2]}\n  c: *shared\n") == []


@pytest.mark.parametrize("text, expected", [
    ("contexts: {a: &x [1, *x]}\n",
     "conf.yaml:1:22: alias *x is inside the value it names, so it would never end — "
     "an alias can only repeat a value that is complete before it"),
    ("contexts: {a: *nowhere}\n",
     "conf.yaml:1:15: alias *nowhere names no anchor — "
     "write the value once with &nowhere before repeating it with *nowhere"),
    ("contexts:\n  a: &x 1\n  b: &x 2\n",
     "conf.yaml:3:6: anchor &x is defined twice — it was first defined at line 2; give each anchor its own name"),
])
def test_alias_mistakes_are_reported_at_the_alias(tmp_path, text, expected):
    assert config_errors(tmp_path, text) == [expected]


# -- files that cannot be read ----------------------------------------------------------------------------------


def test_includes_that_cannot_be_read_are_reported_at_their_includes_entry(tmp_path):
    os.mkdir(tmp_path / "adir")
    (tmp_path / "latin1.yaml").write_bytes(b'contexts:\n  a: "caf\xe9"\n')
    (tmp_path / "nul.yaml").write_bytes(b'contexts:\n  a: "x\x00y"\n')
    (tmp_path / "bell.yaml").write_bytes(b'contexts: {a: "\x07"}\n')
    errors = config_errors(tmp_path, "includes:\n  - adir\n  - latin1.yaml\n  - nul.yaml\n  - bell.yaml\n"
                                     "  - /dev/null\n")
    assert errors == [
        "conf.yaml:2:5: included file 'adir' is a directory — name a YAML file",
        "conf.yaml:3:5: included file 'latin1.yaml' is not UTF-8: byte 0xe9 at line 2, column 10 — save it as UTF-8",
        "conf.yaml:4:5: included file 'nul.yaml' contains a NUL byte at line 2, column 8 — "
        "remove it: a YAML file holds printable text only",
        "conf.yaml:5:5: included file 'bell.yaml' contains a control character (U+0007) at line 1, column 16 — "
        "remove it: a YAML file holds printable text only",
        "conf.yaml:6:5: included file '/dev/null' is not a regular file — name a YAML file",
    ]


@pytest.mark.parametrize("data, expected", [
    (b"contexts: {}\n# caf\xe9\n",
     "conf.yaml:1:1: the configuration file is not UTF-8: byte 0xe9 at line 2, column 6 — save it as UTF-8"),
    (b"contexts: {a: 1}\x00\n",
     "conf.yaml:1:1: the configuration file contains a NUL byte at line 1, column 17 — "
     "remove it: a YAML file holds printable text only"),
])
def test_the_top_file_that_cannot_be_read_is_reported_at_its_first_line(tmp_path, data, expected):
    (tmp_path / "conf.yaml").write_bytes(data)
    from pipedingest.config.errors import ConfigErrors
    from pipedingest.config.loader import load_config

    with pytest.raises(ConfigErrors) as caught:
        load_config("conf.yaml")
    assert caught.value.render() == expected


def test_a_directory_given_with_c_is_reported(tmp_path):
    os.mkdir(tmp_path / "conf.d")
    result = twistd("-c", "conf.d", "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "conf.d:1:1: the configuration file is a directory — name a YAML file"
    assert "Traceback" not in result.stderr


# -- close matches, and the root cause alone ---------------------------------------------------------------------


def test_a_misspelt_store_kind_in_the_shipped_config_is_one_error_with_a_close_match(tmp_path):
    shutil.copy(os.path.join(ROOT, "conf", "articles.yaml"), tmp_path)
    with open(os.path.join(ROOT, "conf", "dev.yaml"), encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    number = next(index for index, line in enumerate(lines) if "kind: sqlite" in line)
    lines[number] = lines[number].replace("sqlite", "sqllite")
    (tmp_path / "dev.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    column = lines[number].index("sqllite") + 1
    result = twistd("-c", "dev.yaml", "--check", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"dev.yaml:{number + 1}:{column}: option 'kind' of store 'articles' must be 'sqlite' or 'firestore', "
        "not 'sqllite' — did you mean 'sqlite'?",
        "1 configuration error in dev.yaml; nothing was started",
    ]


@pytest.mark.parametrize("text, expected", [
    ("pipelines:\n  x:\n    - log: {level: warning}\n",
     "conf.yaml:3:20: option 'level' of processor 'log' must be 'debug', 'info', 'warn' or 'error', not 'warning' — "
     "did you mean 'warn'?"),
    ("stores: {a: {kind: firestor, project: p}}\n",
     "conf.yaml:1:20: option 'kind' of store 'a' must be 'sqlite' or 'firestore', not 'firestor' — "
     "did you mean 'firestore'?"),
])
def test_a_misspelt_choice_gets_a_close_match(tmp_path, text, expected):
    assert config_errors(tmp_path, text) == [expected]


STORE_USERS = """\
pipelines:
  get:
    - fetch-article: {store: articles}
  list:
    - list-articles: {store: articles}
"""


@pytest.mark.parametrize("definition, expected", [
    ("stores:\n  articles: {kind: sqllite, path: var/a.sqlite}\n",
     "conf.yaml:7:20: option 'kind' of store 'articles' must be 'sqlite' or 'firestore', not 'sqllite' — "
     "did you mean 'sqlite'?"),
    ("stores:\n  articles: {kind: sqlite, path: var/a.sqlite, table: a b}\n",
     "conf.yaml:7:55: option 'table' of store 'articles' must be a plain SQL identifier (letters, digits, _), "
     "not 'a b' — the articles table"),
    ("stores:\n  articles: {kind: sqlite}\n",
     "conf.yaml:7:13: store 'articles' needs the option 'path' — the database file"),
    ("stores: [articles]\n",
     "conf.yaml:6:9: 'stores' must map store names to their settings — "
     "for example: stores: {articles: {kind: sqlite, path: var/articles.sqlite}}"),
])
def test_references_to_a_store_whose_definition_failed_are_not_reported_again(tmp_path, definition, expected):
    assert config_errors(tmp_path, STORE_USERS + definition) == [expected]


def test_references_to_a_pipeline_or_pool_whose_definition_failed_are_not_reported_again(tmp_path):
    errors = config_errors(tmp_path, f"""\
        ner: {{model: {tmp_path}}}
        pipelines:
          broken: 5
          web:
            go:
              - run-pipeline: {{pipeline: broken}}
              - extract-entities
            also:
              - extract-entities
        ticks:
          interval:
            t: {{interval: 1, processor: pipeline.broken}}
        """)
    assert errors == [
        f"conf.yaml:1:14: '{tmp_path}' is not a spaCy model: {tmp_path} has neither meta.json nor config.cfg — "
        "name an installed model package, or a directory made by `nlp.to_disk()`",
        "conf.yaml:3:11: pipeline 'broken' must be a list of steps or a mapping of pipelines — "
        "write steps as '- processor-name' or '- processor-name: {options}'",
    ]


def test_a_reference_to_a_name_never_written_is_still_reported(tmp_path):
    errors = config_errors(tmp_path, STORE_USERS + "stores:\n  article: {kind: sqlite, path: var/a.sqlite}\n")
    assert errors == [
        "conf.yaml:3:30: unknown store 'store.articles' — did you mean 'store.article'?",
        "conf.yaml:5:30: unknown store 'store.articles' — did you mean 'store.article'?",
    ]


# -- overrides fill unset variables ------------------------------------------------------------------------------

FIRESTORES = """\
stores:
  articles:
    kind: firestore
    project: ${FUZZ_UNSET_PROJECT}
  other:
    kind: firestore
    project: ${FUZZ_UNSET_PROJECT}
"""
UNSET = "environment variable ${FUZZ_UNSET_PROJECT} is not set — set FUZZ_UNSET_PROJECT, or give a default: " \
        "${FUZZ_UNSET_PROJECT:-value}"


def test_an_override_replaces_an_unset_variable_which_is_then_no_error(tmp_path):
    assert config_errors(tmp_path, FIRESTORES, environ={}) == [f"conf.yaml:4:14: {UNSET}", f"conf.yaml:7:14: {UNSET}"]
    assert config_errors(tmp_path, FIRESTORES, ["stores.articles.project=x"], environ={}) == [
        f"conf.yaml:7:14: {UNSET}"]
    assert config_errors(tmp_path, FIRESTORES, ["stores.articles.project=x", "stores.other.project=y"],
                         environ={}) == []


def test_the_including_file_replaces_an_unset_variable_of_an_included_one(tmp_path):
    write_config(tmp_path, FIRESTORES, "base.yaml")
    errors = config_errors(tmp_path, "includes: [base.yaml]\nstores:\n  articles:\n    project: x\n", environ={})
    assert errors == [f"base.yaml:7:14: {UNSET}"]


def test_an_unset_variable_in_an_include_path_is_reported(tmp_path):
    errors = config_errors(tmp_path, "includes:\n  - ${FUZZ_UNSET_DIR}/base.yaml\n", environ={})
    assert errors[0] == ("conf.yaml:2:5: environment variable ${FUZZ_UNSET_DIR} is not set — set FUZZ_UNSET_DIR, "
                         "or give a default: ${FUZZ_UNSET_DIR:-value}")


# -- nonsense values -------------------------------------------------------------------------------------------------


def test_nonsense_numbers_and_words_are_refused_where_they_are_written(tmp_path):
    errors = config_errors(tmp_path, """\
        ner: {recycle_rss_mb: -1, max_wait: .inf, min_children: 2, max_children: 1}
        web:
          site:
            port: 0
            response_timeout: 0
            max_body_bytes: 0
            routing: {__config__: {processor: pipeline.batch}}
        pipelines:
          batch:
            - validate-articles: {max_articles: -1, max_chars: 0}
            - for-each: {pipeline: .one, concurrency: 0}
            - encode-json: {indent: -1}
            - write-web-response: {status: 99}
          one:
            - log: {level: loud}
        stores:
          a: {kind: sqlite, path: ""}
          f: {kind: firestore, project: p, collection: a/b, max_batch_writes: 501, retry_initial: 0}
        pending:
          ner: {timeout: 0, reap_interval: -1}
        ticks:
          interval:
            t: {interval: 0, processor: pipeline.one}
        status-tests: {timeout: 0}
        daemon: {shutdown_timeout: .nan}
        """)
    assert errors == [
        "conf.yaml:1:23: option 'recycle_rss_mb' of 'ner' must be greater than 0, not -1 — "
        "replace a child whose memory grows past this",
        "conf.yaml:1:37: option 'max_wait' of 'ner' must be a finite number, not inf — "
        "seconds to hold articles for a fuller batch",
        "conf.yaml:1:74: max_children (1) is less than min_children (2) — raise max_children, or lower min_children",
        "conf.yaml:5:23: option 'response_timeout' of web site 'site' must be greater than 0, not 0 — "
        "seconds a request may take: its deadline; 504 after it",
        "conf.yaml:6:21: option 'max_body_bytes' of web site 'site' must be at least 1, not 0 — "
        "larger request bodies are answered with 413",
        "conf.yaml:10:41: option 'max_articles' of processor 'validate-articles' must be at least 1, not -1 — "
        "the most articles one request may carry",
        "conf.yaml:10:56: option 'max_chars' of processor 'validate-articles' must be at least 1, not 0 — "
        "the longest body accepted (413 beyond); null: only the body limit",
        "conf.yaml:11:47: option 'concurrency' of processor 'for-each' must be at least 1, not 0 — "
        "how many items run at once",
        "conf.yaml:12:29: option 'indent' of processor 'encode-json' must be at least 0, not -1 — "
        "indent for pretty output",
        "conf.yaml:13:36: option 'status' of processor 'write-web-response' must be at least 100, not 99 — "
        "the HTTP status",
        "conf.yaml:15:20: option 'level' of processor 'log' must be 'debug', 'info', 'warn' or 'error', not 'loud' — "
        "debug, info, warn or error",
        "conf.yaml:17:27: option 'path' of store 'a' must be a file path, not '' — the database file",
        "conf.yaml:18:48: option 'collection' of store 'f' must be a collection id (no '/', not '.', '..' or __x__), "
        "not 'a/b' — the articles collection",
        "conf.yaml:18:71: option 'max_batch_writes' of store 'f' must be at most 500, not 501 — "
        "writes per commit (at most 500)",
        "conf.yaml:18:91: option 'retry_initial' of store 'f' must be greater than 0, not 0 — "
        "first backoff delay (seconds)",
        "conf.yaml:20:18: option 'timeout' of pending table 'ner' must be greater than 0, not 0 — "
        "seconds an entry may wait when its request sets no deadline",
        "conf.yaml:20:36: option 'reap_interval' of pending table 'ner' must be greater than 0, not -1 — "
        "seconds between the reaper's looks",
        "conf.yaml:23:19: option 'interval' of tick 't' must be greater than 0, not 0 — seconds between runs",
        "conf.yaml:24:25: option 'timeout' of 'status-tests' must be greater than 0, not 0 — "
        "seconds each test may take",
        "conf.yaml:25:28: option 'shutdown_timeout' of 'daemon' must be a finite number, not nan — "
        "seconds a graceful stop may take before what is open is cut short",
    ]


def test_a_directory_that_is_not_a_spacy_model_is_refused(tmp_path):
    os.mkdir(tmp_path / "not-a-model")
    errors = config_errors(tmp_path, "ner: {model: not-a-model}\n")
    assert errors == ["conf.yaml:1:14: 'not-a-model' is not a spaCy model: not-a-model has neither meta.json nor "
                      "config.cfg — name an installed model package, or a directory made by `nlp.to_disk()`"]
