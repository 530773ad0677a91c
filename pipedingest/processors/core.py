"""The core processors: Python expressions, values, contexts, JSON and logging.

``eval-lambda`` and ``exec-code`` run Python written by whoever writes the
configuration, which is trusted like code; it is compiled when the
configuration loads, so a syntax error is reported with its file and line.
Request data is only ever passed to that code as values, never evaluated.
"""
from __future__ import annotations

import copy
import json
import textwrap

from twisted.logger import Logger, LogLevel
from twisted.python.reflect import namedAny
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.config.errors import ConfigError
from pipedingest.engine.baton import get_path, set_path
from pipedingest.engine.errors import InvalidInput
from pipedingest.engine.processor import (
    SAME_AS_INPUT,
    STOP,
    InputOutputProcessor,
    IProcessor,
    Option,
    Processor,
)

NAMESPACE = Option(dict, {}, "names available to the code: a dotted Python name (imported at load) or a value")


def build_namespace(spec: dict, step) -> dict:
    """Resolve ``namespace:`` entries; strings are dotted names of Python objects."""
    namespace = {}
    for name, target in spec.items():
        if not isinstance(target, str):
            namespace[name] = target
            continue
        try:
            namespace[name] = namedAny(target)
        except Exception as exc:
            where = step.where_of("namespace")
            inner = getattr(spec, "where_of", None)
            raise ConfigError(f"namespace entry {name!r}: cannot import {target!r} ({exc.__class__.__name__})",
                              "give a dotted name such as time.time", inner(name) if inner else where) from None
    return namespace


def compile_code(source: str, filename: str, mode: str, step, key: str, line_offset: int = 0):
    """Compile configuration code, turning a SyntaxError (or code too big to compile) into a located ConfigError."""
    try:
        return compile(source, filename, mode)
    except SyntaxError as exc:
        where = step.where_of(key)
        lineno = (exc.lineno or 1) - 1 - line_offset
        raise ConfigError(f"{key!r} does not compile: {exc.msg}",
                          f"near {(exc.text or '').strip()!r}", where.shifted(max(lineno, 0))) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ConfigError(f"{key!r} does not compile: {type(exc).__name__}", "simplify the expression",
                          step.where_of(key)) from None


def compile_lambda(config: dict, step, key: str):
    """The function a ``"name: expression"`` option describes, compiled with its namespace.

    Building the function evaluates its default arguments; should that fail, it is
    reported at the option's line like any other mistake in the code.
    """
    source = config[key].strip()
    if not source.startswith("lambda"):
        source = "lambda " + source
    code = compile_code(source, f"<{key} {step.where}>", "eval", step, key)
    namespace = build_namespace(config["namespace"], step)
    try:
        return eval(code, namespace)  # noqa: S307 - trusted config
    except Exception as exc:  # any failure of the configuration's own code, at load
        raise ConfigError(f"{key!r} fails when the configuration loads: {type(exc).__name__}: {exc}",
                          "default arguments are evaluated once, at load", step.where_of(key)) from None


@provider(IPlugin, IProcessor)
class EvalLambda(InputOutputProcessor):
    """Apply a one-argument lambda, written ``"name: expression"``, to the input."""

    name = "eval-lambda"
    options = {"lambda": Option(str, doc='a lambda such as "numbers: sum(numbers)"'), "namespace": NAMESPACE}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.function = compile_lambda(config, step, "lambda")

    def process_input(self, value, baton):
        return self.function(value)


@provider(IPlugin, IProcessor)
class ExecCode(InputOutputProcessor):
    """Run a block of Python as a function body; ``input`` and ``baton`` are in scope; return the output."""

    name = "exec-code"
    options = {"code": Option(str, doc="a function body; 'return' gives the output"), "namespace": NAMESPACE}

    def __init__(self, config, step):
        super().__init__(config, step)
        body = textwrap.indent(textwrap.dedent(config["code"]), "    ") or "    pass"
        source = f"def __exec_code__(input, baton):\n{body}\n"
        code = compile_code(source, f"<exec-code {step.where}>", "exec", step, "code", line_offset=1)
        namespace = build_namespace(config["namespace"], step)
        exec(code, namespace)  # noqa: S102 - trusted config
        self.function = namespace["__exec_code__"]

    def process_input(self, value, baton):
        return self.function(value, baton)


@provider(IPlugin, IProcessor)
class SetValue(Processor):
    """Put a fixed value (copied each time) at a path."""

    name = "set-value"
    options = {"path": Option(str, doc="where to put the value"), "value": Option(object, None, "the value")}

    def process(self, baton):
        return set_path(baton, self.config["path"], copy.deepcopy(self.config["value"]))


@provider(IPlugin, IProcessor)
class Remap(Processor):
    """Copy values between paths: ``mapping: {from.path: to.path}``; absent sources are skipped."""

    name = "remap"
    options = {"mapping": Option(dict, doc="source path → destination path", items=str)}
    _absent = object()

    def process(self, baton):
        for source, destination in self.config["mapping"].items():
            value = get_path(baton, source, self._absent)
            if value is not self._absent:
                baton = set_path(baton, destination, value)
        return baton


@provider(IPlugin, IProcessor)
class Stop(InputOutputProcessor):
    """End the pipeline here (successfully), always or when ``decider`` says so."""

    name = "stop"
    options = {"decider": Option((str, type(None)), None, 'a lambda such as "baton: not baton.get(\'ok\')"'),
               "namespace": NAMESPACE}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.decider = compile_lambda(config, step, "decider") if config["decider"] else None

    def process(self, baton):
        if self.decider is None or self.decider(get_path(baton, self.input_path)):
            return STOP
        return baton


@provider(IPlugin, IProcessor)
class FetchContext(Processor):
    """Put a shared context (declared under ``contexts:``) into the baton."""

    name = "fetch-context"
    options = {"context": Option(str, doc="the context's name"),
               "output_path": Option(str, SAME_AS_INPUT, "where to put it (defaults to the context's name)")}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.reference = step.context_reference(config["context"])
        output = config["output_path"]
        self.output_path = config["context"] if output is SAME_AS_INPUT else output

    def process(self, baton):
        return set_path(baton, self.output_path, self.reference.value)


@provider(IPlugin, IProcessor)
class EncodeJSON(InputOutputProcessor):
    """Encode the input as JSON text."""

    name = "encode-json"
    options = {"indent": Option((int, type(None)), None, "indent for pretty output", minimum=0),
               "sort_keys": Option(bool, False, "sort mapping keys")}

    def process_input(self, value, baton):
        separators = None if self.config["indent"] else (",", ":")
        return json.dumps(value, indent=self.config["indent"], sort_keys=self.config["sort_keys"],
                          separators=separators, ensure_ascii=False)


@provider(IPlugin, IProcessor)
class DecodeJSON(InputOutputProcessor):
    """Decode JSON text (str or UTF-8 bytes); invalid JSON is invalid input."""

    name = "decode-json"

    def process_input(self, value, baton):
        try:
            return json.loads(value)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"not valid JSON: {exc}") from None


_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


@provider(IPlugin, IProcessor)
class Log(InputOutputProcessor):
    """Log a message, with the input value when ``input_path`` is given."""

    name = "log"
    options = {"message": Option(str, "", "the text to log"),
               "level": Option(str, "info", "debug, info, warn or error", choices=tuple(_LEVELS))}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.log = Logger(namespace=f"pipedingest.pipeline.{step.pipeline}")
        self.level = _LEVELS[config["level"]]
        self.output_path = None

    def process_input(self, value, baton):
        if self.input_path:
            self.log.emit(self.level, "{message} {path}={value!r}", message=self.config["message"],
                          path=self.input_path, value=value)
        else:
            self.log.emit(self.level, "{message}", message=self.config["message"])
        return None
