"""Loading YAML configuration safely, keeping the file and line of every value.

The loader composes YAML nodes with the safe loader (so no tag can build an
arbitrary object) and turns them into :class:`LocatedDict` / :class:`LocatedList`
containers.  Scalars stay plain Python values; their positions are kept by the
container holding them, which is all a validator needs to point at a line.

Before a file is composed, one flat pass over its parser events measures it:
mappings and lists may nest at most :data:`MAX_DEPTH` deep, and a configuration
(with its includes) may hold at most :data:`MAX_VALUES` values once its aliases
are expanded, so that neither a deeply nested value nor an alias bomb ("billion
laughs") can exhaust the stack or the memory; the offending node or alias is
reported at its line.

On top of plain YAML it does three things, in this order:

1. ``${NAME}`` / ``${NAME:-default}`` interpolation from the environment, in
   string values (``$${`` writes a literal ``${``);
2. ``includes:`` — paths relative to the including file, merged depth-first;
   the including file wins on conflicts; loops are errors;
3. ``-O key.path=value`` overrides, applied to the merged result.

An unset variable is reported only if its value survives the merge and the
overrides: ``-O stores.articles.project=x`` makes an unset variable at that
path no error.  Every problem is collected; :func:`load_config` raises one
:class:`~pipedingest.config.errors.ConfigErrors` holding all of them.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Any, Iterable, Mapping, Optional

import yaml

from pipedingest.config.errors import ConfigError, ErrorCollector, Location

try:  # libyaml is much faster, and keeps marks just the same
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

#: How deep mappings and lists may nest: far beyond any real configuration, well within Python's stack.
MAX_DEPTH = 64
#: How many values (scalars, mappings, lists) a configuration and its includes may hold, aliases expanded.
MAX_VALUES = 100_000
#: The largest configuration file read.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: How many files one configuration may read, counting a file each time it is included.
MAX_FILES = 256

#: What YAML allows in a file (PyYAML's reader refuses the rest, without a line).
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


class LocatedDict(dict):
    """A mapping that remembers where it, each key and each value were written."""

    def __init__(self, *args, where: Location = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.where = where
        self.key_locations: dict[Any, Location] = {}
        self.value_locations: dict[Any, Location] = {}
        #: Block scalars (``|``/``>``) start on the line after their indicator.
        self.block_keys: set = set()

    def where_of(self, key) -> Location:
        """Where the value of *key* was written (or this mapping, if unknown)."""
        return self.value_locations.get(key) or self.key_locations.get(key) or self.where

    def where_of_key(self, key) -> Location:
        return self.key_locations.get(key) or self.where_of(key)

    def set_located(self, key, value, where: Location, key_where: Optional[Location] = None) -> None:
        self[key] = value
        self.value_locations[key] = where
        self.key_locations[key] = key_where or where

    def copy_entry(self, other: "LocatedDict", key) -> None:
        self[key] = other[key]
        self.value_locations[key] = other.where_of(key)
        self.key_locations[key] = other.where_of_key(key)
        if key in other.block_keys:
            self.block_keys.add(key)
        else:
            self.block_keys.discard(key)


class LocatedList(list):
    """A sequence that remembers where it and each item were written."""

    def __init__(self, *args, where: Location = None):
        super().__init__(*args)
        self.where = where
        self.item_locations: list[Location] = []

    def where_of(self, index: int) -> Location:
        if 0 <= index < len(self.item_locations):
            return self.item_locations[index]
        return self.where


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_TYPED_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
               "tag:yaml.org,2002:float")
_INTERPOLATION = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_PLAIN_ONLY = "only plain YAML (mappings, lists, strings, numbers, booleans, null) is allowed"


def _short_tag(tag: str) -> str:
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix):] if tag.startswith(prefix) else tag


class _Budget:
    """The values a configuration may still hold, shared by a file and its includes."""

    def __init__(self, values: int = MAX_VALUES, files: int = MAX_FILES):
        self.values = values
        self.files = files
        self.exhausted = False


class _UnsetVariable:
    """An unset ``${NAME}``: reported once the overrides are applied, if its value is still there."""

    __slots__ = ("path", "error")

    def __init__(self, path: tuple, error: ConfigError):
        self.path = path
        self.error = error


def _measure(text: str, where, errors: ErrorCollector, budget: _Budget) -> bool:
    """Check the nesting depth and the size (aliases expanded) of *text* in one flat pass over its events.

    *where* turns a parser mark into a Location.  Returns True when *text* may be composed;
    otherwise its first problem has been reported (a syntax error included).
    """
    sizes: dict[str, tuple[int, int]] = {}  # anchor → (values, nesting height) of its finished value
    open_anchors: set = set()
    anchor_lines: dict[str, int] = {}
    stack: list[list] = []  # one [anchor, values, height of the deepest child] per open mapping or list
    total = 0

    def finished(values: int, height: int) -> None:
        if stack:
            stack[-1][1] += values
            stack[-1][2] = max(stack[-1][2], height)

    events = yaml.parse(text, Loader=_BaseLoader)
    try:
        for event in events:
            anchor = getattr(event, "anchor", None)
            if anchor and not isinstance(event, yaml.AliasEvent):
                if anchor in anchor_lines:
                    errors.add(f"anchor &{anchor} is defined twice", where(event.start_mark),
                               f"it was first defined at line {anchor_lines[anchor]}; give each anchor its own name")
                    return False
                anchor_lines[anchor] = event.start_mark.line + 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                stack.append([anchor, 1, 0])
                if anchor:
                    open_anchors.add(anchor)
                total += 1
                if len(stack) > MAX_DEPTH:
                    errors.add(f"mappings and lists nest more than {MAX_DEPTH} deep here", where(event.start_mark),
                               "flatten this value: no configuration needs to nest so deep")
                    return False
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                started, values, height = stack.pop()
                if started:
                    open_anchors.discard(started)
                    sizes[started] = (values, height + 1)
                finished(values, height + 1)
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if anchor:
                    sizes[anchor] = (1, 0)
                finished(1, 0)
            elif isinstance(event, yaml.AliasEvent):
                if anchor in open_anchors:
                    errors.add(f"alias *{anchor} is inside the value it names, so it would never end",
                               where(event.start_mark), "an alias can only repeat a value that is complete before it")
                    return False
                if anchor not in sizes:
                    errors.add(f"alias *{anchor} names no anchor", where(event.start_mark),
                               f"write the value once with &{anchor} before repeating it with *{anchor}")
                    return False
                values, height = sizes[anchor]
                total += values
                if len(stack) + height > MAX_DEPTH:
                    errors.add(f"alias *{anchor} makes mappings and lists nest more than {MAX_DEPTH} deep",
                               where(event.start_mark), "flatten the value it names, or repeat less of it")
                    return False
                finished(values, height)
            else:
                continue
            if total > budget.values:
                budget.exhausted = True
                if isinstance(event, yaml.AliasEvent):
                    errors.add(f"alias *{anchor} makes the configuration too large: more than "
                               f"{MAX_VALUES:,} values once aliases are expanded", where(event.start_mark),
                               "an alias repeats its whole value; use fewer aliases, or alias smaller values")
                else:
                    errors.add(f"the configuration is too large: more than {MAX_VALUES:,} values",
                               where(event.start_mark), "split it, or leave out what it does not need")
                return False
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errors.add(f"YAML syntax error: {exc.problem or exc.context}", where(mark),
                   "check the indentation and quoting around this line")
        return False
    except yaml.YAMLError as exc:
        errors.add(f"YAML error: {exc}", where(None))
        return False
    finally:
        events.close()
    budget.values -= total
    return True


class _NodeBuilder:
    """Turns composed YAML nodes into located containers, collecting errors.

    *fixed* places every value at one location (an ``-O`` override has no lines);
    *environ* None leaves ``${...}`` alone (overrides are not interpolated).
    """

    def __init__(self, filename: str, errors: ErrorCollector, environ: Optional[Mapping[str, str]],
                 unset: Optional[list] = None, fixed: Optional[Location] = None):
        self.filename = filename
        self.errors = errors
        self.environ = environ
        self.unset = unset
        self.fixed = fixed
        self.constructor = yaml.SafeLoader("")  # only its resolver and scalar constructors are used

    def where(self, node) -> Location:
        return self.at(node.start_mark)

    def at(self, mark) -> Location:
        if self.fixed is not None:
            return self.fixed
        if mark is None:
            return Location(self.filename, 1, 1)
        return Location(self.filename, mark.line + 1, mark.column + 1)

    def build(self, node, path: Optional[tuple] = ()):
        """The value of *node*; *path* is its key path from the file's top (None: inside a mapping key)."""
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
            self.errors.add(f"unsupported YAML tag {_short_tag(node.tag)!r}", self.where(node), _PLAIN_ONLY)
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            result = LocatedList(where=self.where(node))
            for index, item in enumerate(node.value):
                result.append(self.build(item, None if path is None else (*path, index)))
                result.item_locations.append(self.where(item))
            return result
        return self._scalar(node, path)

    def _mapping(self, node, path):
        result = LocatedDict(where=self.where(node))
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.errors.add("YAML merge keys ('<<') are not supported", self.where(key_node),
                                "use 'includes:' to share configuration between files")
                continue
            key = self.build(key_node, None)
            if isinstance(key, (LocatedDict, LocatedList)):
                self.errors.add("a mapping key must be a plain value", self.where(key_node),
                                "write the key as a string, e.g. 'name:'")
                continue
            if key in result:
                self.errors.add(f"duplicate key {key!r}", self.where(key_node),
                                f"it was already given at line {result.where_of_key(key).line}")
                continue
            value = self.build(value_node, None if path is None else (*path, key))
            result.set_located(key, value, self.where(value_node), self.where(key_node))
            if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
                result.block_keys.add(key)
        return result

    def _scalar(self, node, path):
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.errors.add(f"unsupported YAML value: {exc.problem}", self.where(node), _PLAIN_ONLY)
            return None
        except Exception:  # the standard tags' constructors raise what their parsing raises (ValueError ...)
            self.errors.add(f"{_shown_text(node.value)} is not a valid {_short_tag(node.tag)}", self.where(node),
                            "write a valid value, or quote it (without a tag) to keep it as a string")
            return None
        if isinstance(value, str) and "${" in value and self.environ is not None:
            value = self._interpolate(value, node, path)
        return value

    def _interpolate(self, text: str, node, path):
        missing = []

        def replace(match):
            escaped, name, default = match.groups()
            if escaped:
                return match.group(0)[1:]
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _INTERPOLATION.sub(replace, text)
        for name in missing:
            error = ConfigError(f"environment variable ${{{name}}} is not set",
                                f"set {name}, or give a default: ${{{name}:-value}}", self.where(node))
            if path is None or self.unset is None:
                self.errors.extend([error])
            else:
                self.unset.append(_UnsetVariable(path, error))
        whole = _INTERPOLATION.fullmatch(text)
        if whole and not whole.group(1) and not node.style:
            # An unquoted value that is one variable takes the variable's YAML type,
            # so that ``port: ${PORT:-8080}`` is a number.
            return self._typed(result)
        return result

    def _typed(self, text: str):
        plain_text = text.strip()
        tag = self.constructor.resolve(yaml.ScalarNode, plain_text, (True, False))
        if tag not in _TYPED_TAGS:
            return text
        try:
            return self.constructor.construct_object(yaml.ScalarNode(tag, plain_text))
        except Exception:
            return text


def _shown_text(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:39] + "…")


def _line_and_column(text, offset: int) -> tuple[int, int]:
    """The 1-based line and column of *offset* in *text* (a str, or UTF-8 bytes)."""
    newline = b"\n" if isinstance(text, bytes) else "\n"
    line_start = text.rfind(newline, 0, offset) + 1
    before = text[line_start:offset]
    if isinstance(before, bytes):
        before = before.decode("utf-8", "replace")
    return text.count(newline, 0, offset) + 1, len(before) + 1


def _describe_character(char: str) -> str:
    code = ord(char)
    if code == 0:
        return "a NUL byte"
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"a control character (U+{code:04X})"
    return f"the character U+{code:04X}, which YAML does not allow"


def _read_text(path: str, naming: str, where: Location, errors: ErrorCollector) -> Optional[str]:
    """The text of the file at *path*, or None after reporting (at *where*) why it cannot be read.

    *naming* is how the message names the file: ``included file 'x.yaml'`` or ``the configuration file``.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        errors.add(f"cannot read {naming}: {getattr(exc, 'strerror', None) or exc}", where)
        return None
    if stat.S_ISDIR(info.st_mode):
        errors.add(f"{naming} is a directory", where, "name a YAML file")
        return None
    if not stat.S_ISREG(info.st_mode):
        errors.add(f"{naming} is not a regular file", where, "name a YAML file")
        return None
    if info.st_size > MAX_FILE_BYTES:
        errors.add(f"{naming} is too large: {info.st_size:,} bytes", where,
                   f"a configuration file holds at most {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        return None
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        errors.add(f"cannot read {naming}: {exc.strerror}", where)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(data, exc.start)
        errors.add(f"{naming} is not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column}", where,
                   "save it as UTF-8")
        return None
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        line, column = _line_and_column(text, bad.start())
        errors.add(f"{naming} contains {_describe_character(bad.group())} at line {line}, column {column}", where,
                   "remove it: a YAML file holds printable text only")
        return None
    return text


def _compose(text: str, builder: _NodeBuilder, errors: ErrorCollector, budget: _Budget):
    """The composed node of *text* (None for an empty document), or False after reporting why not."""
    if not _measure(text, builder.at, errors, budget):
        return False
    try:
        return yaml.compose(text, Loader=_BaseLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errors.add(f"YAML syntax error: {exc.problem or exc.context}", builder.at(mark),
                   "check the indentation and quoting around this line")
    except yaml.YAMLError as exc:
        errors.add(f"YAML error: {exc}", builder.at(None))
    return False


class _Loading:
    """The state of one :func:`load_config`: its errors, environment, size budget and unset variables."""

    def __init__(self, errors: ErrorCollector, environ: Mapping[str, str]):
        self.errors = errors
        self.environ = environ
        self.budget = _Budget()
        self.unset: list[_UnsetVariable] = []

    def load_file(self, path: str, display: str, naming: str, where: Location):
        text = _read_text(path, naming, where, self.errors)
        if text is None:
            return None
        builder = _NodeBuilder(display, self.errors, self.environ, self.unset)
        node = _compose(text, builder, self.errors, self.budget)
        if node is False:
            return None
        if node is None:
            return LocatedDict(where=Location(display, 1, 1))
        value = builder.build(node)
        if not isinstance(value, LocatedDict):
            self.errors.add("a configuration file must be a mapping of sections", Location(display, 1, 1),
                            "start with a section such as 'web:' or 'pipelines:'")
            return None
        return value

    def load_with_includes(self, path: str, stack: tuple[str, ...], display: str, naming: str, where: Location):
        real = os.path.realpath(path)
        config = self.load_file(path, display, naming, where)
        if config is None:
            return None
        includes = config.pop("includes", None)
        if includes is None:
            return config
        errors = self.errors
        includes_where = config.value_locations.get("includes", config.where)
        if not isinstance(includes, LocatedList):
            errors.add("'includes' must be a list of file paths", includes_where, "for example: includes: [base.yaml]")
            return config
        merged = LocatedDict(where=config.where)
        for index, item in enumerate(includes):
            if self.budget.exhausted:
                break
            item_where = includes.where_of(index)
            if not isinstance(item, str) or not item or "\0" in item:
                errors.add("an include must be a file path", item_where,
                           "for example: includes: [base.yaml]")
                continue
            target = os.path.join(os.path.dirname(path), item)
            target_real = os.path.realpath(target)
            if target_real in stack or target_real == real:
                chain = " → ".join(_display_name(p) for p in (*stack, real, target_real))
                errors.add(f"include loop: {chain}", item_where, "remove one of the includes")
                continue
            if not os.path.exists(target):
                errors.add(f"included file {item!r} does not exist", item_where,
                           f"paths are relative to the including file's folder, {os.path.dirname(display) or '.'}/")
                continue
            self.budget.files -= 1
            if self.budget.files < 0:
                self.budget.exhausted = True
                errors.add(f"the configuration reads more than {MAX_FILES} files", item_where,
                           "each include reads its file again: include a file once, not from every file that uses it")
                break
            shown = os.path.normpath(os.path.join(os.path.dirname(display), item))
            included = self.load_with_includes(target, (*stack, real), shown, f"included file {item!r}", item_where)
            if included is not None:
                merged = merge(merged, included)
        return merge(merged, config)

    def report_unset(self, config: LocatedDict) -> None:
        """Report each unset variable whose value is still in *config* (no include or override replaced it)."""
        for unset in self.unset:
            if unset.path[:1] == ("includes",) or _written_at(config, unset.path) == unset.error.where:
                self.errors.extend([unset.error])


def _written_at(config, path: tuple) -> Optional[Location]:
    """Where the value at *path* in *config* was written (None when there is no such value)."""
    node = config
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    last = path[-1]
    if isinstance(node, LocatedDict):
        return node.value_locations.get(last)
    if isinstance(node, LocatedList) and isinstance(last, int) and last < len(node.item_locations):
        return node.item_locations[last]
    return None


def merge(base: LocatedDict, top: LocatedDict) -> LocatedDict:
    """Deep-merge *top* over *base*; *top* wins wherever both give a value."""
    result = LocatedDict(where=top.where)
    for source in (base, top):
        for key in source:
            if key in result and isinstance(result[key], LocatedDict) and isinstance(source[key], LocatedDict):
                merged = merge(result[key], source[key])
                result.copy_entry(source, key)
                result[key] = merged
            else:
                result.copy_entry(source, key)
    return result


def _display_name(path: str) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path


def parse_override(text: str) -> tuple[list[str], Any, Location]:
    """Split ``key.path=value`` into its path and YAML-parsed value.

    The value is read as a file is (plain YAML only, depth and aliases capped), every part of it
    located at the override.
    """
    where = Location(f"-O {text}")
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("an override must look like KEY.PATH=VALUE", "for example: -O web.site.port=8099",
                          where)
    if not raw.strip():
        return key.strip().split("."), "", where
    errors = ErrorCollector()
    builder = _NodeBuilder(where.file, errors, None, fixed=where)
    bad = _NOT_PRINTABLE.search(raw)
    if bad:
        raise ConfigError(f"the override's value contains {_describe_character(bad.group())}", "remove it", where)
    node = _compose(raw, builder, errors, _Budget())
    value = builder.build(node) if node else None
    if errors:
        first = errors.errors[0]
        message = first.message
        for prefix in ("YAML syntax error: ", "YAML error: "):
            if message.startswith(prefix):
                message = "the override's value is not valid YAML: " + message[len(prefix):]
                break
        raise ConfigError(message, first.hint, where)
    return key.strip().split("."), value, where


def apply_override(config: LocatedDict, path: list[str], value, where: Location) -> None:
    node = config
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, LocatedList):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"no item {part!r} in the list at {'.'.join(path[:depth])}", "", where)
            child = node[int(part)]
            if not isinstance(child, (LocatedDict, LocatedList)):
                raise ConfigError(f"{'.'.join(path[:depth + 1])} is a value, not a section", "", where)
            node = child
            continue
        child = node.get(part)
        if not isinstance(child, (LocatedDict, LocatedList)):
            if child is not None:
                raise ConfigError(f"{'.'.join(path[:depth + 1])} is a value, not a section", "", where)
            child = LocatedDict(where=where)
            node.set_located(part, child, where)
        node = child
    last = path[-1]
    if isinstance(node, LocatedList):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"no item {last!r} in the list at {'.'.join(path[:-1])}", "", where)
        node[int(last)] = value
        node.item_locations[int(last)] = where
        return
    if isinstance(node.get(last), LocatedDict) and isinstance(value, LocatedDict):
        value = merge(node[last], value)
    node.set_located(last, value, where)


def load_config(path: str, overrides: Iterable[str] = (), environ: Optional[Mapping[str, str]] = None) -> LocatedDict:
    """Load *path* with its includes, environment variables and overrides.

    :raises ConfigErrors: with every problem found.
    """
    errors = ErrorCollector()
    environ = os.environ if environ is None else environ
    if not os.path.exists(path):
        errors.add("configuration file does not exist", Location(path), "pass an existing file with -c")
        errors.raise_if_any()
    loading = _Loading(errors, environ)
    display = _display_name(path)
    config = loading.load_with_includes(path, (), display, "the configuration file", Location(display, 1, 1))
    if config is None:
        config = LocatedDict(where=Location(display, 1, 1))
    for text in overrides:
        try:
            keys, value, where = parse_override(text)
            apply_override(config, keys, value, where)
        except ConfigError as error:
            errors.extend([error])
    loading.report_unset(config)
    errors.raise_if_any()
    return config


def plain(value):
    """A copy of *value* made of ordinary dicts and lists (for runtime state)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
