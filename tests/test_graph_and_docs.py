"""``twistd ingest --graph`` and ``--version``, and what the README promises a newcomer.

--graph runs as a real twistd process on every shipped configuration; its output is
checked against the configuration as the daemon builds it, and rendered by Graphviz's
``dot`` when it is installed.  The README's curl lines, JSON examples, broken-config
example and environment-variable table are checked against the files and against
the real daemon's output.
"""
from __future__ import annotations

import functools
import glob
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest
import yaml

from pipedingest.article import check_article
from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import ROOT, write_config
from tests.test_config import SEVERAL_MISTAKES
from tests.twistd_process import TWISTD, twistd

README = os.path.join(ROOT, "README.md")
EULER = os.path.join(ROOT, "conf", "examples", "euler.yaml")
#: What the shipped configurations need from the environment; nothing connects to these.
ENVIRON = dict(os.environ, REDIS_URL="redis://127.0.0.1:9/0", GOOGLE_CLOUD_PROJECT="graph-test",
               INGEST_TOKEN="graph-test-token")
NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[(.*)\]$')
EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"')
NO_DOT = "Graphviz's dot is not installed (scripts/bootstrap installs it, as root): the dot text is checked, not rendered"


def shipped_yaml() -> list[str]:
    files = glob.glob(os.path.join(ROOT, "conf", "*.yaml"))
    files += glob.glob(os.path.join(ROOT, "conf", "examples", "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(path, ROOT) for path in files)


def is_top_level(path: str) -> bool:
    """A top-level configuration says how to run it: its comments hold ``-c <its own path>``."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as stream:
        return re.search(rf"-c {re.escape(path)}(\s|$)", stream.read()) is not None


TOP_LEVEL = [path for path in shipped_yaml() if is_top_level(path)]


def included_by(path: str) -> set[str]:
    """*path* and every file it includes, directly or not (relative to the repository)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as stream:
        includes = (yaml.safe_load(stream) or {}).get("includes") or []
    found = {path}
    for name in includes:
        found |= included_by(os.path.normpath(os.path.join(os.path.dirname(path), name)))
    return found


@functools.lru_cache(maxsize=None)
def graph_of(path: str) -> subprocess.CompletedProcess:
    return twistd("-c", path, "--graph", cwd=ROOT, env=ENVIRON)


def dot_statements(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The node statements (id → attributes) and the edges (tail, head) of dot text."""
    nodes, edges = {}, []
    for line in text.splitlines():
        edge = EDGE.match(line)
        if edge:
            edges.append((unquote(edge.group(1)), unquote(edge.group(2))))
            continue
        node = NODE.match(line)
        if node and unquote(node.group(1)) not in ("graph", "node", "edge"):
            nodes[unquote(node.group(1))] = node.group(2)
    return nodes, edges


def unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def label(attributes: str) -> list[str]:
    """The lines of the label among a node's attributes."""
    text = re.search(r'label="((?:[^"\\]|\\.)*)"', attributes).group(1)
    return [unquote(line) for line in text.split("\\n")]


def routes(tree):
    yield from tree.routes
    for child in tree.children.values():
        yield from routes(child)
    if tree.param is not None:
        yield from routes(tree.param[1])


# -- --graph ------------------------------------------------------------------------------------------------


def test_the_top_level_configurations_cover_every_shipped_file():
    assert {"conf/dev.yaml", "conf/prod.yaml", "conf/front.yaml", "conf/worker.yaml",
            "conf/examples/euler.yaml"} <= set(TOP_LEVEL)
    reached = set().union(*(included_by(path) for path in TOP_LEVEL))
    assert reached >= set(shipped_yaml()), "files no top-level configuration reaches: " + \
        ", ".join(sorted(set(shipped_yaml()) - reached))


@pytest.mark.parametrize("path", TOP_LEVEL)
def test_graph_shows_every_route_pipeline_and_service(path, monkeypatch):
    result = graph_of(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'digraph "{path}" {{')
    assert result.stdout.rstrip().endswith("}")
    assert "listening" not in result.stdout + result.stderr
    nodes, edges = dot_statements(result.stdout)
    assert {name for edge in edges for name in edge} <= set(nodes), "edges to undeclared nodes"

    for name in ("REDIS_URL", "GOOGLE_CLOUD_PROJECT", "INGEST_TOKEN"):
        monkeypatch.setenv(name, ENVIRON[name])  # some providers read their default from the environment
    daemon = build_daemon(load_config(os.path.join(ROOT, path)))
    pipelines = set(daemon.runtime.names("pipeline."))
    assert pipelines and pipelines <= set(nodes)
    assert set(daemon.graph.nodes) <= set(nodes)
    for name, node in daemon.graph.nodes.items():
        assert f"{node.stage} · starts " in nodes[name], nodes[name]
    for site in daemon.sites.values():
        for route in routes(site.resource.tree):
            drawn = [tail for tail, head in edges
                     if head == route.pipeline.name and tail.startswith(f"site.{site.site_name} ")
                     and label(nodes[tail])[0].split(" ")[-1] == route.pattern]
            assert drawn, f"no route {route.pattern} of {site.site_name} leads to {route.pipeline.name}"
    for ref in daemon.runtime.references:  # every "needs" is drawn, from whoever took it: a step, a route …
        by_step = ref.by in pipelines and ref is not daemon.runtime.get(ref.by).error_pipeline
        assert any(head == ref.name and (tail.startswith(ref.by + " ") or tail == ref.by and not by_step)
                   for tail, head in edges), f"{ref.by} → {ref.name} ({ref.where}) is not drawn"
    for pipeline in pipelines:
        steps = daemon.runtime.get(pipeline).steps
        chain = [pipeline]
        while len(chain) <= len(steps):
            following = [head for tail, head in edges if tail == chain[-1] and head.startswith(pipeline + " step ")]
            assert len(following) == 1, f"{pipeline}: after {chain[-1]}: {following}"
            chain.append(following[0])
        assert [label(nodes[step])[0] for step in chain[1:]] == [step.name for step in steps]


@pytest.mark.parametrize("path", TOP_LEVEL)
def test_graph_is_accepted_by_dot(path):
    if shutil.which("dot") is None:
        pytest.skip(NO_DOT)
    result = graph_of(path)
    assert result.returncode == 0, result.stderr
    rendered = subprocess.run(["dot", "-Tsvg"], input=result.stdout, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stderr == ""  # not even a warning
    nodes, _ = dot_statements(result.stdout)
    assert svg_node_titles(rendered.stdout) == set(nodes)


def svg_node_titles(svg: str) -> set[str]:
    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ElementTree.fromstring(svg)
    return {group.find("svg:title", ns).text for group in root.iter("{http://www.w3.org/2000/svg}g")
            if group.get("class") == "node"}


def test_the_readme_graph_of_dev_yaml_is_current():
    with open(os.path.join(ROOT, "docs", "graph-dev.svg"), encoding="utf-8") as stream:
        shipped = svg_node_titles(stream.read())
    nodes, _ = dot_statements(graph_of("conf/dev.yaml").stdout)
    assert shipped == set(nodes), "docs/graph-dev.svg is stale: regenerate it as the README says"
    with open(README, encoding="utf-8") as stream:
        assert "](docs/graph-dev.svg)" in stream.read()


def test_graph_of_a_broken_config_reports_its_errors_and_exits_2(tmp_path):
    write_config(tmp_path, SEVERAL_MISTAKES, "broken.yaml")
    result = twistd("-c", "broken.yaml", "--graph", cwd=tmp_path)
    assert result.returncode == 2
    assert "digraph" not in result.stdout
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("broken.yaml:")]) == 14
    assert "broken.yaml:3:11: option 'port' of web site 'site' must be an integer" in result.stderr
    assert lines[-1] == "14 configuration errors in broken.yaml; nothing was started"


def test_graph_starts_nothing_even_without_nodaemon(tmp_path):
    with socket.socket() as busy:  # the port it would listen on is taken: starting would fail
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([TWISTD, "ingest", "-c", EULER, "-O", f"web.site.port={port}", "--graph"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digraph") and f"127.0.0.1:{port}" in result.stdout
    assert os.listdir(tmp_path) == []  # no twistd.pid, no twistd.log: twistd never got to run anything


def test_the_modes_exclude_each_other():
    result = twistd("-c", os.path.join(ROOT, "conf", "dev.yaml"), "--check", "--graph")
    assert result.returncode == 1
    assert "--check and --graph cannot be combined" in result.stdout + result.stderr


# -- --version --------------------------------------------------------------------------------------------


def test_version_prints_pipedingests_version(tmp_path):
    result = subprocess.run([TWISTD, "ingest", "--version"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as stream:
        declared = re.search(r'version="([^"]+)"', stream.read()).group(1)
    assert importlib.metadata.version("pipedingest") == declared
    assert re.fullmatch(rf"pipedingest {re.escape(declared)} \(Twisted [\w.]+, Python [\w.]+\)\n", result.stdout), \
        result.stdout
    assert os.listdir(tmp_path) == []


# -- the README -------------------------------------------------------------------------------------------


def readme() -> str:
    with open(README, encoding="utf-8") as stream:
        return stream.read()


def code_blocks(text: str, languages=("sh", "")) -> list[str]:
    return [body for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
            if language in languages]


def curl_commands() -> list[list[str]]:
    commands = []
    for block in code_blocks(readme()):
        for command in block.replace("\\\n", " ").splitlines():
            if "curl " in command:
                words = shlex.split(command, comments=True)
                commands.append(words[words.index("curl"):])
    return commands


DATA_OPTIONS = ("-d", "--data", "--data-binary", "--data-raw", "--data-ascii", "--json")


def curl_bodies() -> list[str]:
    return [words[index + 1] for words in curl_commands() for index, word in enumerate(words[:-1])
            if word in DATA_OPTIONS]


def test_every_file_a_readme_curl_line_sends_exists_and_holds_articles():
    files = [body[1:] for body in curl_bodies() if body.startswith("@")]
    assert len(files) >= 2, curl_commands()
    for name in files:
        path = os.path.join(ROOT, name)
        assert os.path.isfile(path), f"the README's curl sends {name}, which does not exist"
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        if name.endswith(".jsonl"):
            articles = [json.loads(line) for line in text.splitlines() if line.strip()]
            assert articles
        else:
            articles = [json.loads(text)]
        for article in articles:
            check_article(article)


def test_the_readme_json_examples_parse():
    inline = [body for body in curl_bodies() if not body.startswith("@")]
    assert len(inline) >= 2
    for body in inline:
        check_article(json.loads(body))
    answers = [line[2:] for block in code_blocks(readme()) for line in block.splitlines()
               if re.match(r"# [{\[]", line)]
    complete = [answer for answer in answers if "…" not in answer]  # "…" marks an answer shown in part
    assert complete
    for answer in complete:
        json.loads(answer)
    for block in code_blocks(readme(), ("json",)):
        json.loads(block)


def test_the_readme_broken_config_example_is_the_real_output():
    blocks = [block for block in code_blocks(readme()) if "examples/broken.yaml --check" in block]
    assert len(blocks) == 1
    command, *shown = blocks[0].splitlines()
    assert command == "$ .venv/bin/twistd -n ingest -c examples/broken.yaml --check"
    result = twistd("-c", "examples/broken.yaml", "--check", cwd=ROOT)
    assert result.returncode == 2
    count = int(re.match(r"(\d+) configuration errors? in examples/broken.yaml", shown[-1]).group(1))
    assert count == len(shown) - 1, "the README's count is not the number of errors it shows"
    assert result.stderr.splitlines() == shown


def environment_table() -> dict[str, list[str]]:
    section = readme().split("### Environment variables\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([A-Z_][A-Z0-9_]*)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split("|")]
    return rows


def test_every_environment_variable_of_the_shipped_configs_is_documented():
    table = environment_table()
    seen = set()
    for path in shipped_yaml():
        with open(os.path.join(ROOT, path), encoding="utf-8") as stream:
            text = stream.read()
        for name, has_default, default in re.findall(
                r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", text):
            seen.add(name)
            assert name in table, f"{path} reads ${name}, which the README's table does not document"
            _, readers, shown_default, meaning = table[name]
            assert path in readers, f"the README does not say that {path} reads ${name}"
            if default:
                assert f"`{default}`" in shown_default, f"${name} defaults to {default} in {path}"
            elif has_default:
                assert "empty" in shown_default, f"${name} defaults to nothing in {path}"
            else:
                assert "required" in shown_default, f"${name} has no default in {path}"
            assert meaning
    readers = glob.glob(os.path.join(ROOT, "pipedingest", "providers", "*.py"))
    readers += glob.glob(os.path.join(ROOT, "pipedingest", "store", "*.py"))
    for path in readers:
        with open(path, encoding="utf-8") as stream:
            for name in re.findall(r"environ\.get\(\"([A-Z_]+)\"\)", stream.read()):
                seen.add(name)
                assert name in table, f"{os.path.relpath(path, ROOT)} reads ${name}, which the README does not document"
    assert {"INGEST_PORT", "INGEST_TOKEN", "REDIS_URL", "GOOGLE_CLOUD_PROJECT", "INGEST_NODE"} <= seen
