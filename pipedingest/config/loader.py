"""Loading YAML configuration safely, keeping the file and line of every value.

The loader composes YAML nodes with the safe loader (so no tag can build an
arbitrary object) and turns them into :class:`LocatedDict` / :class:`LocatedList`
containers.  Scalars stay plain Python values; their positions are kept by the
container holding them, which is all a validator needs to point at a line.

On top of plain YAML it does three things, in this order:

1. ``${NAME}`` / ``${NAME:-default}`` interpolation from the environment, in
   string values (``$${`` writes a literal ``${``);
2. ``includes:`` — paths relative to the including file, merged depth-first;
   the including file wins on conflicts; loops are errors;
3. ``-O key.path=value`` overrides, applied to the merged result.

Every problem is collected; :func:`load_config` raises one
:class:`~pipedingest.config.errors.ConfigErrors` holding all of them.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Optional

import yaml

from pipedingest.config.errors import ConfigError, ErrorCollector, Location

try:  # libyaml is much faster, and keeps marks just the same
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader


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
_INTERPOLATION = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class _NodeBuilder:
    """Turns composed YAML nodes into located containers, collecting errors."""

    def __init__(self, filename: str, errors: ErrorCollector, environ: Mapping[str, str]):
        self.filename = filename
        self.errors = errors
        self.environ = environ
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def where(self, node) -> Location:
        mark = node.start_mark
        return Location(self.filename, mark.line + 1, mark.column + 1)

    def build(self, node):
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
            self.errors.add(f"unsupported YAML tag {node.tag!r}", self.where(node),
                            "only plain YAML (mappings, lists, strings, numbers, booleans, null) is allowed")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node)
        if isinstance(node, yaml.SequenceNode):
            result = LocatedList(where=self.where(node))
            for item in node.value:
                result.append(self.build(item))
                result.item_locations.append(self.where(item))
            return result
        return self._scalar(node)

    def _mapping(self, node):
        result = LocatedDict(where=self.where(node))
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.errors.add("YAML merge keys ('<<') are not supported", self.where(key_node),
                                "use 'includes:' to share configuration between files")
                continue
            key = self.build(key_node)
            if isinstance(key, (LocatedDict, LocatedList)):
                self.errors.add("a mapping key must be a plain value", self.where(key_node))
                continue
            if key in result:
                self.errors.add(f"duplicate key {key!r}", self.where(key_node),
                                f"it was already given at line {result.where_of_key(key).line}")
                continue
            result.set_located(key, self.build(value_node), self.where(value_node), self.where(key_node))
            if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
                result.block_keys.add(key)
        return result

    def _scalar(self, node):
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.errors.add(f"unsupported YAML value: {exc.problem}", self.where(node),
                            "only plain YAML (mappings, lists, strings, numbers, booleans, null) is allowed")
            return None
        if isinstance(value, str) and "${" in value:
            value = self._interpolate(value, node)
        return value

    def _interpolate(self, text: str, node):
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
            self.errors.add(f"environment variable ${{{name}}} is not set", self.where(node),
                            f"set {name}, or give a default: ${{{name}:-value}}")
        whole = _INTERPOLATION.fullmatch(text)
        if whole and not whole.group(1) and not node.style:
            # An unquoted value that is one variable takes the variable's YAML type,
            # so that ``port: ${PORT:-8080}`` is a number.
            try:
                typed = yaml.safe_load(result)
            except yaml.YAMLError:
                return result
            if typed is None or isinstance(typed, (bool, int, float)):
                return typed
        return result


def _load_file(path: str, errors: ErrorCollector, environ: Mapping[str, str], display: str):
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        errors.add(f"cannot read configuration file: {exc.strerror}", Location(display))
        return None
    except UnicodeDecodeError as exc:
        errors.add(f"configuration file is not UTF-8 ({exc.reason})", Location(display))
        return None
    try:
        node = yaml.compose(text, Loader=_BaseLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
        errors.add(f"YAML syntax error: {exc.problem or exc.context}", where,
                   "check the indentation and quoting around this line")
        return None
    except yaml.YAMLError as exc:
        errors.add(f"YAML error: {exc}", Location(display))
        return None
    if node is None:
        return LocatedDict(where=Location(display, 1, 1))
    value = _NodeBuilder(display, errors, environ).build(node)
    if not isinstance(value, LocatedDict):
        errors.add("a configuration file must be a mapping of sections", Location(display, 1, 1),
                   "start with a section such as 'web:' or 'pipelines:'")
        return None
    return value


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


def _load_with_includes(path: str, errors: ErrorCollector, environ, stack: tuple[str, ...], display: str):
    real = os.path.realpath(path)
    config = _load_file(path, errors, environ, display)
    if config is None:
        return None
    includes = config.pop("includes", None)
    if includes is None:
        return config
    where = config.value_locations.get("includes", config.where)
    if not isinstance(includes, LocatedList):
        errors.add("'includes' must be a list of file paths", where,
                   "for example: includes: [base.yaml]")
        return config
    merged = LocatedDict(where=config.where)
    for index, item in enumerate(includes):
        item_where = includes.where_of(index)
        if not isinstance(item, str):
            errors.add("an include must be a file path", item_where)
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
        shown = os.path.normpath(os.path.join(os.path.dirname(display), item))
        included = _load_with_includes(target, errors, environ, (*stack, real), shown)
        if included is not None:
            merged = merge(merged, included)
    return merge(merged, config)


def parse_override(text: str) -> tuple[list[str], Any, Location]:
    """Split ``key.path=value`` into its path and YAML-parsed value."""
    where = Location(f"-O {text}")
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("an override must look like KEY.PATH=VALUE", "for example: -O web.site.port=8099",
                          where)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"the override's value is not valid YAML: {exc}", "", where) from None
    return key.strip().split("."), _locate(value, where), where


def _locate(value, where: Location):
    """Give a plain parsed value the located containers the validators expect."""
    if isinstance(value, dict):
        result = LocatedDict(where=where)
        for key, item in value.items():
            result.set_located(key, _locate(item, where), where)
        return result
    if isinstance(value, list):
        result = LocatedList((_locate(item, where) for item in value), where=where)
        result.item_locations = [where] * len(result)
        return result
    return value


def apply_override(config: LocatedDict, path: list[str], value, where: Location) -> None:
    node = config
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, LocatedList):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"no item {part!r} in the list at {'.'.join(path[:depth])}", "", where)
            node = node[int(part)]
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
    config = _load_with_includes(path, errors, environ, (), _display_name(path))
    if config is None:
        config = LocatedDict(where=Location(_display_name(path)))
    for text in overrides:
        try:
            keys, value, where = parse_override(text)
            apply_override(config, keys, value, where)
        except ConfigError as error:
            errors.extend([error])
    errors.raise_if_any()
    return config


def plain(value):
    """A copy of *value* made of ordinary dicts and lists (for runtime state)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
