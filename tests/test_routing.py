"""``route``: a value chooses the pipeline, through a daemon built from YAML and real HTTP."""
import json

import pytest
import pytest_twisted
import treq

from pipedingest.config.loader import load_config
from pipedingest.dot import render
from pipedingest.service import build_daemon
from tests.conftest import config_errors, url, write_config

DESKS = """\
web:
  site:
    port: 0
    routing:
      by-source:
        __config__: {processor: pipeline.web.by-source, methods: [POST]}
      by-length:
        __config__: {processor: pipeline.web.by-length, methods: [POST]}
pipelines:
  web:
    by-source:
      - eval-lambda: {input_path: request, output_path: item, lambda: "r: r.json"}
      - route:
          input_path: item.source
          routes: {reuters: .wire, afp: .wire, blog: .blogs}
          default: .other
      - eval-lambda:                    # runs on the baton the chosen pipeline returned
          output_path: content
          lambda: "baton: dict(desk=baton['desk'], source=baton['item'].get('source'))"
      - write-web-response
    wire:
      - set-value: {path: desk, value: wire}
    blogs:
      - set-value: {path: desk, value: blogs}
    other:
      - set-value: {path: desk, value: other}

    by-length:
      - eval-lambda: {input_path: request, output_path: item, lambda: "r: r.json"}
      - eval-lambda:
          input_path: item.body
          output_path: bucket
          lambda: "body: len(body.split()) // 10"      # a number: 0 (under 10 words), 1 (under 20) ...
      - route:
          input_path: bucket
          routes: {"0": ..lengths.short, "1": pipeline.lengths.medium}
          default: null
      - write-web-response
  lengths:
    short:
      - set-value: {path: content, value: {length: short}}
    medium:
      - set-value: {path: content, value: {length: medium}}
"""


async def post(daemon, path, value):
    response = await treq.post(url(daemon, path), json.dumps(value).encode(),
                               headers={"content-type": "application/json"})
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_the_source_chooses_the_pipeline_and_the_rest_runs_on_its_result(daemons):
    daemon = await daemons(DESKS)
    assert await post(daemon, "/by-source", {"source": "reuters"}) == (200, {"desk": "wire", "source": "reuters"})
    assert await post(daemon, "/by-source", {"source": "afp"}) == (200, {"desk": "wire", "source": "afp"})
    assert await post(daemon, "/by-source", {"source": "blog"}) == (200, {"desk": "blogs", "source": "blog"})


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("item", [{"source": "nyt"}, {}, {"source": None}, {"source": ["reuters"]},
                                  {"source": "Reuters"}])
async def test_a_value_without_a_route_or_no_value_takes_the_default(daemons, item):
    daemon = await daemons(DESKS)
    code, content = await post(daemon, "/by-source", item)
    assert (code, content["desk"]) == (200, "other")


@pytest_twisted.ensureDeferred
async def test_a_number_is_compared_as_text(daemons):
    daemon = await daemons(DESKS)
    assert await post(daemon, "/by-length", {"body": "five words in this body"}) == (200, {"length": "short"})
    assert await post(daemon, "/by-length", {"body": "word " * 15}) == (200, {"length": "medium"})


@pytest_twisted.ensureDeferred
async def test_without_a_default_a_value_without_a_route_is_422_with_the_supported_values(daemons):
    daemon = await daemons(DESKS)
    code, content = await post(daemon, "/by-length", {"body": "word " * 25})
    assert code == 422
    assert content["error"].pop("request_id")
    assert content["error"] == {"status": 422, "message": "bucket '2' has no route; supported: 0, 1",
                                "value": "2", "supported": ["0", "1"]}


@pytest_twisted.ensureDeferred
async def test_without_a_default_no_value_at_all_is_422_too(daemons):
    daemon = await daemons(DESKS.replace("input_path: bucket", "input_path: nowhere"))
    code, content = await post(daemon, "/by-length", {"body": "short"})
    assert code == 422
    assert content["error"].pop("request_id")
    assert content["error"] == {"status": 422, "message": "no value at nowhere to route on; supported: 0, 1",
                                "supported": ["0", "1"]}


def test_every_route_is_an_edge_of_the_graph(tmp_path):
    daemon = build_daemon(load_config(write_config(tmp_path, DESKS)))
    dot = render(daemon.runtime, daemon.graph, "desks")
    step = '"pipeline.web.by-source step 2"'
    for target in ("web.wire", "web.blogs", "web.other"):
        assert f'{step} -> "pipeline.{target}"' in dot
    step = '"pipeline.web.by-length step 3"'
    for target in ("lengths.short", "lengths.medium"):
        assert f'{step} -> "pipeline.{target}"' in dot
    assert dot.count(f'{step} -> "pipeline.lengths.short"') == 1


ROUTE = """\
pipelines:
  english: [write-web-response]
  french: [write-web-response]
  choose:
    - route:
        input_path: article.language
{options}
"""


def route_errors(tmp_path, options: str) -> list[str]:
    """The errors of a route step with these options (at line 7 on), files named as an operator sees them."""
    indented = "\n".join("        " + line for line in options.strip("\n").splitlines())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        return config_errors(tmp_path, ROUTE.format(options=indented))


@pytest.mark.parametrize("options, expected", [
    ("routes: {en: .english, fr: .frnch}\ndefault: .english",
     ["conf.yaml:7:36: unknown pipeline 'pipeline.frnch' — did you mean 'pipeline.french'?"]),
    ("routes:\n  en: english\n  de: .german\n  fr: french\ndefault: .englsh",
     ["conf.yaml:9:15: unknown pipeline 'pipeline.german' — known pipelines: choose, english, french",
      "conf.yaml:11:18: unknown pipeline 'pipeline.englsh' — did you mean 'pipeline.english'?"]),
    ("routes:\n  no: .english\n  1: .french\n  en: .english\ndefault: null",
     ["conf.yaml:8:11: a route's value must be text, not true or false (False) — quote it: 'false': ... "
      "(YAML reads no, yes, on, off, true, false and numbers as other types)",
      "conf.yaml:9:11: a route's value must be text, not an integer (1) — quote it: '1': ... "
      "(YAML reads no, yes, on, off, true, false and numbers as other types)"]),
    ("routes: {}\ndefault: .english",
     ["conf.yaml:7:17: route needs at least one route — map each value to a pipeline, e.g. "
      "routes: {en: .english, fr: .french}"]),
    ("routes: [en, fr]\ndefault: .english",
     ["conf.yaml:7:17: option 'routes' of processor 'route' must be a mapping, not a list — "
      "value → pipeline to run, e.g. {en: .english, fr: .french}"]),
    ("routes: {en: [.english]}\ndefault: .english",
     ["conf.yaml:7:17: option 'routes' of processor 'route' must be a mapping of strings; the value of 'en' is "
      "a list — value → pipeline to run, e.g. {en: .english, fr: .french}"]),
    ("routes: {en: ''}\ndefault: .english",
     ["conf.yaml:7:22: route 'en' names no pipeline — write a pipeline name, absolute or .relative"]),
    ("routes: {en: ...english}\ndefault: .english",
     ["conf.yaml:7:22: relative pipeline name '...english' climbs above the top of 'pipelines' — "
      "use fewer leading dots or an absolute name"]),
    ("routes: {en: .english}",
     ["conf.yaml:5:7: processor 'route' needs the option 'default' — "
      "the pipeline for any other value (null: answer 422)"]),
])
def test_a_bad_route_is_reported_at_its_line(tmp_path, options, expected):
    assert route_errors(tmp_path, options) == expected


def test_a_good_route_has_no_errors(tmp_path):
    assert route_errors(tmp_path, "routes: {en: .english, 'no': pipeline.french}\ndefault: null") == []
