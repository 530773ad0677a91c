"""Loading configuration: includes, ${ENV}, -O overrides, and every error with file:line."""
import os

import pytest

from pipedingest.config.errors import ConfigErrors
from pipedingest.config.loader import LocatedDict, load_config
from tests.conftest import ROOT, config_errors, write_config

@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run in the test's folder, so that errors name files as an operator would see them."""
    monkeypatch.chdir(tmp_path)


EULER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf", "examples", "euler.yaml")

MINIMAL = """\
web:
  site:
    port: 0
    routing:
      __config__: {processor: pipeline.echo}
pipelines:
  echo:
    - write-web-response:
        fallback_content: hello
"""


def test_minimal_configuration_is_clean(tmp_path):
    assert config_errors(tmp_path, MINIMAL) == []


def test_values_remember_file_and_line(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    config = load_config(path)
    site = config["web"]["site"]
    assert isinstance(site, LocatedDict)
    assert site.where_of("port").line == 3
    assert site.where_of("port").file.endswith("conf.yaml")


def test_includes_merge_and_the_including_file_wins(tmp_path):
    write_config(tmp_path, """\
        contexts: {shared: {a: 1, b: 1}}
        web: {site: {port: 1234, interface: 0.0.0.0}}
        """, "base.yaml")
    os.mkdir(tmp_path / "sub")
    write_config(tmp_path / "sub", "contexts: {other: []}\n", "more.yaml")
    path = write_config(tmp_path, """\
        includes: [base.yaml, sub/more.yaml]
        contexts: {shared: {b: 2}}
        web: {site: {port: 99}}
        """)
    config = load_config(path)
    assert config["contexts"]["shared"] == {"a": 1, "b": 2}
    assert config["contexts"]["other"] == []
    assert config["web"]["site"] == {"port": 99, "interface": "0.0.0.0"}
    assert config["web"]["site"].where_of("interface").file.endswith("base.yaml")
    assert "includes" not in config


def test_include_loop_is_an_error_at_the_include_line(tmp_path):
    write_config(tmp_path, "includes:\n  - a.yaml\n", "b.yaml")
    path = write_config(tmp_path, "contexts: {}\nincludes:\n  - b.yaml\n", "a.yaml")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    (error,) = caught.value.errors
    assert "include loop" in error.message
    assert str(error.where) == "b.yaml:2:5"


def test_missing_include_is_reported(tmp_path):
    path = write_config(tmp_path, "includes: [nowhere.yaml]\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert "'nowhere.yaml' does not exist" in caught.value.render()
    assert "conf.yaml:1:12" in caught.value.render()


def test_environment_interpolation_with_defaults_and_types(tmp_path):
    path = write_config(tmp_path, """\
        a: ${PORT}
        b: ${MISSING:-8099}
        c: "${PORT}"
        d: http://${HOST:-localhost}:${PORT}/x
        e: $${PORT}
        """)
    config = load_config(path, environ={"PORT": "1234"})
    assert config == {"a": 1234, "b": 8099, "c": "1234", "d": "http://localhost:1234/x", "e": "${PORT}"}


def test_unset_variable_without_default_is_an_error(tmp_path):
    path = write_config(tmp_path, "a: 1\nb: ${NOPE_NOT_SET}\nc: ${ALSO_NOT_SET}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, environ={})
    rendered = caught.value.render().splitlines()
    assert rendered[0].startswith("conf.yaml:2:4: environment variable ${NOPE_NOT_SET} is not set")
    assert rendered[1].startswith("conf.yaml:3:4: environment variable ${ALSO_NOT_SET} is not set")


def test_overrides_set_nested_values_parsed_as_yaml(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    config = load_config(path, ["web.site.port=8099", "web.site.extra={a: [1, 2]}", "new.key=yes"])
    assert config["web"]["site"]["port"] == 8099
    assert config["web"]["site"]["extra"] == {"a": [1, 2]}
    assert config["new"]["key"] is True
    assert str(config["web"]["site"].where_of("port")) == "-O web.site.port=8099"


def test_override_reaches_into_lists(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    config = load_config(path, ["pipelines.echo.0.write-web-response.status=201"])
    assert config["pipelines"]["echo"][0]["write-web-response"]["status"] == 201


@pytest.mark.parametrize("override, message", [
    ("no-equals-sign", "must look like KEY.PATH=VALUE"),
    ("web.site.port=[unclosed", "not valid YAML"),
    ("web.site.port.deeper=1", "is a value, not a section"),
])
def test_bad_overrides_are_errors(tmp_path, override, message):
    path = write_config(tmp_path, MINIMAL)
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, [override])
    assert message in caught.value.render()


def test_syntax_error_has_file_and_line(tmp_path):
    path = write_config(tmp_path, "web:\n  site:\n    port: 1\n   bad indentation: [\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert caught.value.render().startswith("conf.yaml:4:")
    assert "YAML syntax error" in caught.value.render()


def test_arbitrary_tags_are_refused(tmp_path):
    path = write_config(tmp_path, "a: !!python/object/apply:os.system ['true']\nb: !!python/name:os.system\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    lines = caught.value.render().splitlines()
    assert len(lines) == 2
    assert all("unsupported YAML" in line for line in lines)
    assert lines[0].startswith("conf.yaml:1:4")


def test_duplicate_keys_are_errors(tmp_path):
    path = write_config(tmp_path, "a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert "conf.yaml:3:1: duplicate key 'a' — it was already given at line 1" in caught.value.render()


SEVERAL_MISTAKES = """\
web:
  site:
    port: eighty
    routing:
      __config__: {processor: pipeline.web.compute}
      other:
        __config__: {processor: pipeline.web.nowhere, methods: [FETCH]}
pipelines:
  web:
    compute:
      - eval-lambda:
          input_path: request
          lamda: "request: 1"
      - eval-lamda:
          lambda: "x: x"
      - encode-json:
          indent: wide
      - run-pipeline:
          pipeline: .write-respnse
      - exec-code:
          code: |
            value = 1
            return value +* 2
      - fetch-context
    write-response:
      - eval-lambda:
          lambda: "x: (x"
ticks:
  interval:
    reaper: {interval: 1, processor: pipeline.reap}
system-events:
  startup:
    warm: pipeline.web.warm-up
contexs: {}
"""


def test_every_mistake_is_reported_at_once_with_its_line(tmp_path):
    errors = config_errors(tmp_path, SEVERAL_MISTAKES)
    expected = [
        "conf.yaml:3:11: option 'port' of web site 'site' must be an integer, not a string",
        "conf.yaml:7:33: unknown pipeline 'pipeline.web.nowhere'",
        "conf.yaml:7:64: unknown HTTP method(s) FETCH",
        "conf.yaml:11:9: processor 'eval-lambda' needs the option 'lambda'",
        "conf.yaml:13:18: unknown option 'lamda' for processor 'eval-lambda' — did you mean 'lambda'?",
        "conf.yaml:14:9: unknown processor 'eval-lamda' — did you mean 'eval-lambda'?",
        "conf.yaml:17:19: option 'indent' of processor 'encode-json' must be an integer or null, not a string",
        "conf.yaml:19:21: unknown pipeline 'pipeline.web.write-respnse' — did you mean 'pipeline.web.write-response'?",
        "conf.yaml:23:1: 'code' does not compile: invalid syntax",
        "conf.yaml:24:9: processor 'fetch-context' needs the option 'context'",
        "conf.yaml:27:19: 'lambda' does not compile",
        "conf.yaml:30:38: unknown pipeline 'pipeline.reap'",
        "conf.yaml:33:11: unknown pipeline 'pipeline.web.warm-up'",
        "conf.yaml:34:1: unknown section 'contexs' — did you mean 'contexts'?",
    ]
    assert len(errors) == len(expected), "\n".join(errors)
    for line, want in zip(errors, expected):
        assert line.startswith(want), f"{line!r} does not start with {want!r}"


def test_unknown_pipeline_in_route_is_reported(tmp_path):
    errors = config_errors(tmp_path, MINIMAL.replace("pipeline.echo}", "pipeline.ecoh}"))
    assert errors == ["conf.yaml:5:31: unknown pipeline 'pipeline.ecoh' — did you mean 'pipeline.echo'?"]


def test_duplicate_processor_name_from_a_bundle_is_an_error(tmp_path):
    errors = config_errors(tmp_path, MINIMAL + "plugins:\n  bundles:\n    mine: [bundle_clash]\n")
    assert len(errors) == 1
    assert errors[0].startswith("conf.yaml:12:12: two processors are named 'eval-lambda'")


def test_missing_bundle_package_is_an_error(tmp_path):
    errors = config_errors(tmp_path, MINIMAL + "plugins:\n  bundles:\n    mine: [no_such_package_here]\n")
    assert errors[0].startswith("conf.yaml:12:12: cannot import plugin package 'no_such_package_here'")


@pytest.mark.parametrize("config, environ, services", [
    (EULER, {}, {"site.site"}),
    (os.path.join(ROOT, "conf", "dev.yaml"), {},
     {"site.main", "ner.pool", "pending.ner", "store.articles", "store.statustests"}),
    (os.path.join(ROOT, "conf", "prod.yaml"), {"GOOGLE_CLOUD_PROJECT": "a-project", "INGEST_TOKEN": "a-token"},
     {"site.main", "ner.pool", "pending.ner", "store.articles", "store.statustests"}),
])
def test_the_shipped_configurations_are_clean(config, environ, services):
    from pipedingest.service import build_daemon

    daemon = build_daemon(load_config(config, environ=dict(os.environ, **environ)))
    assert set(daemon.graph.nodes) == services
    assert daemon.status_tests.count >= 3
