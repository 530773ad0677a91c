"""Fuzzing the configuration check: a mutated shipped configuration builds, or is refused with located errors.

Each example takes a shipped configuration (``conf/dev.yaml`` with ``conf/articles.yaml``,
``conf/prod.yaml`` with it, ``conf/examples/euler.yaml``), applies a few mutations an
operator's editor could make (lines deleted, duplicated or swapped, values retyped,
scalars swapped for mappings and lists, tags, aliases, deep nesting, truncation, bad
bytes, includes that point at the wrong thing), and checks it as ``--check`` does.  The
only acceptable outcomes are a clean build, or :class:`ConfigErrors` whose every line
reads ``file:line:col: message``: never another exception.

``bench/config_fuzz.py`` runs the same mutations for longer and prints the figures.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pipedingest.config.errors import ConfigErrors
from pipedingest.config.loader import load_config
from pipedingest.service import build_daemon
from tests.conftest import ROOT
from tests.twistd_process import twistd

CONF = os.path.join(ROOT, "conf")
#: Each shipped configuration: its top file, and every file of it by the name it is written under.
BASES = {
    "dev": ("dev.yaml", {"dev.yaml": os.path.join(CONF, "dev.yaml"),
                         "articles.yaml": os.path.join(CONF, "articles.yaml")}),
    "prod": ("prod.yaml", {"prod.yaml": os.path.join(CONF, "prod.yaml"),
                           "articles.yaml": os.path.join(CONF, "articles.yaml")}),
    "euler": ("euler.yaml", {"euler.yaml": os.path.join(CONF, "examples", "euler.yaml")}),
}
#: What the shipped configurations need from the environment to be clean.
ENVIRON = dict(os.environ, GOOGLE_CLOUD_PROJECT="fuzz-project", INGEST_TOKEN="fuzz-token")
ENVIRON.pop("FUZZ_UNSET", None)

#: Values a mutation writes in place of another: wrong types, bounds, tags, aliases, interpolation, oddities.
VALUES = [
    "-1", "0", "1.5", "-0.5", ".nan", ".inf", "-.inf", "99999999999999999999999999999999", "yes", "null", "~",
    "''", '"x"', "sqllite", "[]", "{}", "[1, 2]", "{a: 1}", "[{a: [b]}]", "{[1]: 2}", "!!float x", "!!int 1.5",
    "!!bool maybe", "!!binary '@@'", "!!timestamp nope", "!!str 5", "2024-13-45", "2024-01-01", "0x_", "1_0",
    "!!python/object/apply:os.system [true]", "!!set {a, b}", "!!omap [a: 1]", "!custom x", "*nowhere",
    "${FUZZ_UNSET}", "'${FUZZ_UNSET}'", "${FUZZ_UNSET:-7}", "$${X}", '"\\0"', '"\\x07 bell"', '"tab\\there"',
    "é ünïcode ✓", "'" + "x" * 300 + "'", "pipeline.nowhere", "pipeline.", ".", "..", "/etc", "/dev/null",
    "{<<: {a: 1}}", "[*nowhere]", "{? [a] : b}", "&a [*a]", "!!float", "- item", ": x", "a: b: c",
]
#: Sections the shipped configurations lack, added by a mutation so that their providers are fuzzed too.
SECTIONS = [
    "ticks:\n  interval:\n    reaper: {interval: 1, processor: pipeline.web.index, run_at_start: false}",
    "system-events:\n  startup:\n    warm: pipeline.web.index\n  shutdown:\n    bye: pipeline.web.compute",
    "contexts:\n  shared: {a: 1, b: [1, 2]}\n  other: []",
    "plugins:\n  bundles:\n    mine: [no_such_fuzz_package]",
    "daemon:\n  shutdown_timeout: 5",
    "pending:\n  extra:\n    timeout: 1\n    reap_interval: 0.1\n    fallback: pipeline.web.index",
    "status-tests:\n  site: main\n  timeout: 5\n  packages: []",
    "pipelines:\n  fuzz:\n    steps:\n      - fetch-context: {context: shared}\n      - stop: {decider: 'x: True'}\n"
    "      - exec-code:\n          code: |\n            return input\n    on_error: .other",
]
BAD_BYTES = [b"\xff", b"\x00", b"\xc3", b"\xe2\x82", b"\t", b"\r", b"\x1b", b"\x7f", b"\xef\xbb\xbf", b"\xfe\xff"]
_KEY_VALUE = re.compile(r"^(\s*(?:- )?)([^\s#:][^:#]*?):(\s+)(\S.*?)(\s+#.*)?$")
_KEY_ONLY = re.compile(r"^(\s*(?:- )?)([^\s#:][^:#]*?):\s*(#.*)?$")
_ITEM = re.compile(r"^(\s*)- (\S.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int) -> int:
    """The index after the lines nested under lines[start] (more indented, or blank)."""
    depth = _indent(lines[start])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > depth):
        end += 1
    return end


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word + "x"
    index = rng.randrange(len(word))
    action = rng.choice(("drop", "double", "swap", "change"))
    if action == "drop":
        return word[:index] + word[index + 1:]
    if action == "double":
        return word[:index] + word[index] + word[index:]
    if action == "swap" and index + 1 < len(word):
        return word[:index] + word[index + 1] + word[index] + word[index + 2:]
    return word[:index] + rng.choice("aeiouxz_-.") + word[index + 1:]


class Mutator:
    """Mutations of YAML text, chosen by *rng* (a ``random.Random``: seeded, or drawn by hypothesis)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def value(self, original: str = "") -> str:
        if original and self.rng.random() < 0.25:
            return _typo(original, self.rng)
        if self.rng.random() < 0.08:
            depth = self.rng.choice((10, 63, 65, 300, 5000))
            return "[" * depth + "]" * depth
        return self.rng.choice(VALUES)

    def _pick(self, lines: list[str], pattern) -> int | None:
        found = [index for index, line in enumerate(lines) if pattern.match(line)]
        return self.rng.choice(found) if found else None

    # -- the mutations: each takes and returns the lines of one file ------------------------------------

    def delete_line(self, lines):
        if lines:
            del lines[self.rng.randrange(len(lines))]
        return lines

    def delete_block(self, lines):
        index = self._pick(lines, _KEY_ONLY)
        if index is not None:
            del lines[index:_block_end(lines, index)]
        return lines

    def duplicate_block(self, lines):
        index = self._pick(lines, re.compile(r"^\s*\S"))
        if index is not None:
            end = _block_end(lines, index)
            lines[end:end] = lines[index:end]
        return lines

    def swap_lines(self, lines):
        if len(lines) > 1:
            index = self.rng.randrange(len(lines) - 1)
            lines[index], lines[index + 1] = lines[index + 1], lines[index]
        return lines

    def retype_value(self, lines):
        index = self._pick(lines, _KEY_VALUE)
        if index is not None:
            prefix, key, space, value, comment = _KEY_VALUE.match(lines[index]).groups()
            lines[index] = f"{prefix}{key}:{space}{self.value(value)}{comment or ''}"
        return lines

    def wrap_value(self, lines):
        """A scalar becomes a mapping or a list holding it (or the reverse: a flow collection's insides)."""
        index = self._pick(lines, _KEY_VALUE)
        if index is not None:
            prefix, key, space, value, comment = _KEY_VALUE.match(lines[index]).groups()
            if value[:1] in "[{" and value[-1:] in "]}" and self.rng.random() < 0.5:
                wrapped = value[1:-1]
            else:
                wrapped = self.rng.choice((f"{{fuzz: {value}}}", f"[{value}]", f"[[{value}]]", f"{{{value}: 1}}"))
            lines[index] = f"{prefix}{key}:{space}{wrapped}"
        return lines

    def block_to_scalar(self, lines):
        index = self._pick(lines, _KEY_ONLY)
        if index is not None:
            prefix, key, _ = _KEY_ONLY.match(lines[index]).groups()
            lines[index + 1:_block_end(lines, index)] = []
            lines[index] = f"{prefix}{key}: {self.value()}"
        return lines

    def retype_item(self, lines):
        index = self._pick(lines, _ITEM)
        if index is not None:
            indent, item = _ITEM.match(lines[index]).groups()
            lines[index] = f"{indent}- {self.rng.choice((self.value(item), '{' + item + ': {x: 1}}', '[' + item + ']'))}"
        return lines

    def rename_key(self, lines):
        index = self._pick(lines, re.compile(r"^\s*(?:- )?[A-Za-z_][\w-]*:"))
        if index is not None:
            line = lines[index]
            match = re.match(r"^(\s*(?:- )?)([A-Za-z_][\w-]*)(:.*)$", line)
            if match:
                lines[index] = match.group(1) + _typo(match.group(2), self.rng) + match.group(3)
        return lines

    def anchor_and_alias(self, lines):
        """Anchor one value and repeat it elsewhere (or inside itself)."""
        sources = [i for i, line in enumerate(lines) if _KEY_VALUE.match(line) or _KEY_ONLY.match(line)]
        if len(sources) < 2:
            return lines
        first, second = sorted(self.rng.sample(sources, 2))
        match = _KEY_VALUE.match(lines[first])
        if match:
            prefix, key, space, value, comment = match.groups()
            lines[first] = f"{prefix}{key}:{space}&fz {value}"
        else:
            prefix, key, _ = _KEY_ONLY.match(lines[first]).groups()
            lines[first] = f"{prefix}{key}: &fz"
        if self.rng.random() < 0.2:  # often inside the anchored value itself
            second = min(i for i in sources if i > first)
        match = _KEY_VALUE.match(lines[second]) or _KEY_ONLY.match(lines[second])
        prefix, key = match.group(1), match.group(2)
        if _KEY_ONLY.match(lines[second]):
            lines[second + 1:_block_end(lines, second)] = []
        lines[second] = f"{prefix}{key}: *fz"
        return lines

    def alias_bomb(self, lines):
        levels = self.rng.choice((3, 5, 9))
        bomb = ["fz0: &fz0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb += [f"fz{n}: &fz{n} [{', '.join([f'*fz{n - 1}'] * 9)}]" for n in range(1, levels)]
        at = self.rng.randrange(len(lines) + 1)
        lines[at:at] = bomb if self.rng.random() < 0.5 else [f"fuzz: [{', '.join(['*fz0'] * 3)}]"] + bomb
        return lines

    def indent_shift(self, lines):
        index = self._pick(lines, re.compile(r"^\s*\S"))
        if index is not None:
            shift = self.rng.choice((-2, -1, 1, 2))
            lines[index] = lines[index][-shift:] if shift < 0 and _indent(lines[index]) >= -shift \
                else " " * max(shift, 0) + lines[index]
            if self.rng.random() < 0.2:
                lines[index] = "\t" + lines[index].lstrip(" ")
        return lines

    def insert_junk(self, lines):
        at = self.rng.randrange(len(lines) + 1)
        lines.insert(at, self.rng.choice(("{", "]", ": :", "- - -", "? x", "---", "...", "%YAML 1.1", "&", "*",
                                          "!", "|", "key: 'unclosed", 'key: "\\q"', "includes: [dev.yaml]")))
        return lines

    def includes(self, lines):
        index = next((i for i, line in enumerate(lines) if line.startswith("includes:")), None)
        target = self.rng.choice((".", "..", "nowhere.yaml", "/dev/null", "dev.yaml", "prod.yaml", "euler.yaml",
                                  "articles.yaml", "''", "[a]", "{a: b}", "5", "bad-bytes.yaml", "/etc/passwd"))
        if index is None:
            lines[0:0] = ["includes:", f"  - {target}"]
        elif self.rng.random() < 0.5:
            lines.insert(index + 1, f"  - {target}")
        else:
            lines[index] = f"includes: {self.value()}"
        return lines

    def add_section(self, lines):
        lines += self.rng.choice(SECTIONS).splitlines()
        return lines

    LINE_MUTATIONS = ("delete_line", "delete_block", "duplicate_block", "swap_lines", "retype_value", "retype_value",
                      "wrap_value", "block_to_scalar", "retype_item", "rename_key", "anchor_and_alias", "alias_bomb",
                      "indent_shift", "insert_junk", "includes", "add_section", "add_section")

    def mutate_bytes(self, data: bytes) -> bytes:
        if self.rng.random() < 0.5:
            return data[:self.rng.randrange(len(data) + 1)]
        at = self.rng.randrange(len(data) + 1)
        return data[:at] + self.rng.choice(BAD_BYTES) + data[at:]

    def mutate(self, files: dict[str, str]) -> tuple[dict[str, bytes], list[str]]:
        """Mutated copies of *files*, and what was done to them."""
        texts = {name: text.splitlines() for name, text in files.items()}
        done = []
        for _ in range(self.rng.choice((1, 1, 2, 3, 4))):
            name = self.rng.choice(sorted(texts))
            mutation = self.rng.choice(self.LINE_MUTATIONS)
            texts[name] = getattr(self, mutation)(list(texts[name]))
            done.append(f"{mutation} in {name}")
        result = {name: ("\n".join(lines) + "\n").encode("utf-8") for name, lines in texts.items()}
        if self.rng.random() < 0.12:
            name = self.rng.choice(sorted(result))
            result[name] = self.mutate_bytes(result[name])
            done.append(f"bytes of {name}")
        return result, done


def base_files(base: str) -> tuple[str, dict[str, str]]:
    top, paths = BASES[base]
    files = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8") as stream:
            files[name] = stream.read()
    return top, files


def write_files(directory: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as stream:
            stream.write(data)
    with open(os.path.join(directory, "bad-bytes.yaml"), "wb") as stream:
        stream.write(b"contexts: {a: \"\xff\"}\n")


@dataclass
class Outcome:
    """What checking one configuration gave: ``clean``, ``rejected``, ``crash`` or ``unlocated``."""

    kind: str
    seconds: float
    lines: list[str] = field(default_factory=list)
    detail: str = ""


def located(line: str, directory: str) -> bool:
    """Whether *line* reads ``file:line:col: message``, naming a file that exists (seen from *directory*)."""
    match = re.match(r"^(?P<file>[^:\n]+):\d+:\d+: \S", line)
    return bool(match) and os.path.isfile(os.path.join(directory, match.group("file")))


def check(directory: str, top: str) -> Outcome:
    """Load and build *top* in *directory* as ``--check`` does, timing it."""
    here = os.getcwd()
    os.chdir(directory)
    began = time.perf_counter()
    try:
        build_daemon(load_config(top, environ=ENVIRON))
        return Outcome("clean", time.perf_counter() - began)
    except ConfigErrors as errors:
        took = time.perf_counter() - began
        lines = [error.render() for error in errors.errors]
        unlocated = [line for line in lines if not located(line, directory)]
        if unlocated:
            return Outcome("unlocated", took, lines, "\n".join(unlocated))
        return Outcome("rejected", took, lines)
    except Exception:  # noqa: BLE001 - what the fuzz is looking for
        return Outcome("crash", time.perf_counter() - began, detail=traceback.format_exc())
    finally:
        os.chdir(here)


def mutated(base: str, rng: random.Random, directory: str) -> tuple[str, list[str]]:
    """Write a mutation of *base* into *directory*; its top file and what was done."""
    top, files = base_files(base)
    changed, done = Mutator(rng).mutate(files)
    write_files(directory, changed)
    return top, done


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)), rng=st.randoms(use_true_random=False))
def test_a_mutated_config_builds_or_is_refused_with_located_errors(base, rng):
    with tempfile.TemporaryDirectory() as directory:
        top, done = mutated(base, rng, directory)
        note(f"{base}: {', '.join(done)}")
        outcome = check(directory, top)
        if outcome.kind in ("crash", "unlocated"):
            for name in sorted(os.listdir(directory)):
                with open(os.path.join(directory, name), "rb") as stream:
                    note(f"--- {name}\n{stream.read().decode('utf-8', 'replace')}")
        assert outcome.kind in ("clean", "rejected"), f"{outcome.kind}: {', '.join(done)}\n{outcome.detail}"
        assert outcome.seconds < 5, f"checking took {outcome.seconds:.1f} s: {', '.join(done)}"


def test_twistd_check_on_mutated_configs_exits_0_or_2_without_a_traceback(tmp_path):
    """The real ``twistd ingest --check`` on 20 mutations: a clean exit, or located errors and status 2."""
    for number in range(20):
        base = sorted(BASES)[number % len(BASES)]
        directory = tmp_path / f"m{number}"
        directory.mkdir()
        top, done = mutated(base, random.Random(number), str(directory))
        result = twistd("-c", top, "--check", cwd=directory, env=ENVIRON, timeout=60)
        output = result.stdout + result.stderr
        what = f"mutation {number} of {base} ({', '.join(done)}):\n{output}"
        assert result.returncode in (0, 2), what
        assert "Traceback" not in output, what
        if result.returncode == 2:
            *errors, summary = result.stderr.splitlines()
            assert re.fullmatch(r"\d+ configuration errors? in .+; nothing was started", summary), what
            assert errors and all(located(line, str(directory)) for line in errors), what
