"""Pipelines: a list of processor steps run over a baton, with an error pipeline.

A pipeline is written in YAML either as a plain list of steps, or as a mapping
with the steps and the steps to run when one of them fails::

    compute:                      # a list of steps
      - eval-lambda: {...}
    robust:
      chained_consumers: [...]    # or: steps
      chained_error_consumers: [...]   # or: on_error (steps, or a pipeline name)

When a step fails, the error steps run on the same baton, with ``error`` (a
JSON-able description) and ``failure`` (the :class:`~twisted.python.failure.Failure`)
added; if they finish, the pipeline has handled the failure.  A cancelled
pipeline (its client went away) is never handled: cancellation propagates.
"""
from __future__ import annotations

import uuid
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.python.failure import Failure

from pipedingest.config.errors import ConfigError, Location
from pipedingest.config.loader import LocatedDict, LocatedList
from pipedingest.engine.processor import STOP, Processor, check_processor_options
from pipedingest.engine.runtime import Reference, Runtime, StepContext

STEP_KEYS = ("chained_consumers", "steps")
ERROR_KEYS = ("chained_error_consumers", "on_error")


class Step:
    """One configured processor in a pipeline, with its place in the YAML."""

    __slots__ = ("processor", "name", "where")

    def __init__(self, processor: Processor, name: str, where: Location):
        self.processor = processor
        self.name = name
        self.where = where

    def __repr__(self) -> str:
        return f"{self.name} at {self.where}"


class Pipeline:
    """A named list of steps; calling it runs them and returns a Deferred of the baton."""

    def __init__(self, name: str, where: Location):
        self.name = name
        self.where = where
        self.steps: list[Step] = []
        self.error_steps: Optional[list[Step]] = None
        self.error_pipeline: Optional[Reference] = None

    def __repr__(self) -> str:
        return f"<Pipeline {self.name}>"

    def __call__(self, baton: Any) -> Deferred:
        return self._run(baton)

    @inlineCallbacks
    def _run(self, baton: Any):
        try:
            baton = yield from self._steps(self.steps, baton)
        except CancelledError:
            raise
        except Exception as exc:
            failure = Failure()
            if self.error_steps is None and self.error_pipeline is None:
                raise
            error_baton = _error_baton(baton, failure, exc)
            if self.error_pipeline is not None:
                baton = yield self.error_pipeline.value(error_baton)
            else:
                baton = yield from self._steps(self.error_steps, error_baton)
        return baton

    def _steps(self, steps: list[Step], baton: Any):
        for step in steps:
            try:
                result = step.processor.process(baton)
                if isinstance(result, Deferred):
                    result = yield result
            except CancelledError:
                raise
            except Exception as exc:
                if not getattr(exc, "pipedingest_step", None):
                    exc.pipedingest_step = f"{self.name}: {step}"
                    exc.add_note(f"in pipeline {self.name!r}, step {step}")
                raise
            if result is STOP:
                break
            baton = result
        return baton


def _error_baton(baton: Any, failure: Failure, exc: Exception) -> Any:
    if not isinstance(baton, dict):
        baton = {"baton": baton}
    baton["failure"] = failure
    baton["error"] = {
        "id": uuid.uuid4().hex[:12],
        "type": type(exc).__name__,
        "message": str(exc),
        "step": getattr(exc, "pipedingest_step", ""),
    }
    return baton


def build_pipelines(section: LocatedDict, runtime: Runtime) -> dict[str, Pipeline]:
    """Register a :class:`Pipeline` as ``pipeline.<dotted name>`` for each leaf of *section*.

    Processors come from ``runtime.processors``; every resource a pipeline's steps
    name becomes a dependency of that pipeline.
    """
    built: dict[str, Pipeline] = {}
    _walk(section, "", runtime, built)
    return built


def _is_pipeline_mapping(value) -> bool:
    return isinstance(value, dict) and any(key in value for key in STEP_KEYS)


def _walk(node: LocatedDict, prefix: str, runtime: Runtime, built: dict) -> None:
    for key in node:
        where = node.where_of(key)
        if not isinstance(key, str) or not key or "." in key:
            runtime.errors.add(f"pipeline name {key!r} must be a non-empty string without dots",
                               node.where_of_key(key), "nest mappings to make dotted names")
            continue
        name = f"{prefix}.{key}" if prefix else key
        value = node[key]
        if isinstance(value, LocatedList):
            pipeline = Pipeline(name, where)
            with runtime.building("pipeline." + name):
                pipeline.steps = build_steps(value, name, runtime)
        elif _is_pipeline_mapping(value):
            with runtime.building("pipeline." + name):
                pipeline = _pipeline_from_mapping(value, name, where, runtime)
        elif isinstance(value, LocatedDict):
            _walk(value, name, runtime, built)
            continue
        else:
            runtime.errors.add(f"pipeline {name!r} must be a list of steps or a mapping of pipelines", where,
                               "write steps as '- processor-name' or '- processor-name: {options}'")
            continue
        built[name] = pipeline
        runtime.register("pipeline." + name, pipeline, where)


def _pipeline_from_mapping(value: LocatedDict, name, where, runtime) -> Pipeline:
    pipeline = Pipeline(name, where)
    step_keys = [k for k in STEP_KEYS if k in value]
    error_keys = [k for k in ERROR_KEYS if k in value]
    for key in value:
        if key not in STEP_KEYS + ERROR_KEYS:
            runtime.errors.add(f"unknown key {key!r} in pipeline {name!r}", value.where_of_key(key),
                               "a pipeline mapping has 'chained_consumers' (or 'steps') and optionally "
                               "'chained_error_consumers' (or 'on_error')")
    if len(step_keys) > 1 or len(error_keys) > 1:
        runtime.errors.add(f"pipeline {name!r} gives its steps twice", where,
                           "use either the Piped names or 'steps'/'on_error', not both")
    steps = value[step_keys[0]]
    if isinstance(steps, LocatedList):
        pipeline.steps = build_steps(steps, name, runtime)
    else:
        runtime.errors.add(f"the steps of pipeline {name!r} must be a list", value.where_of(step_keys[0]))
    if error_keys:
        errors = value[error_keys[0]]
        error_where = value.where_of(error_keys[0])
        if isinstance(errors, str):
            context = StepContext(runtime, name, error_where, {})
            pipeline.error_pipeline = context.pipeline_reference(errors)
        elif isinstance(errors, LocatedList):
            pipeline.error_steps = build_steps(errors, name, runtime)
        else:
            runtime.errors.add(f"the error steps of pipeline {name!r} must be a list or a pipeline name",
                               error_where)
    return pipeline


def build_steps(items: LocatedList, pipeline_name: str, runtime: Runtime) -> list[Step]:
    steps = []
    for index, item in enumerate(items):
        step = build_step(item, items.where_of(index), pipeline_name, runtime)
        if step is not None:
            steps.append(step)
    return steps


def build_step(item, where: Location, pipeline_name: str, runtime: Runtime):
    """Check one ``- name: {options}`` item and construct its processor."""
    if isinstance(item, str):
        name, options = item, LocatedDict(where=where)
    elif isinstance(item, dict) and len(item) == 1:
        name = next(iter(item))
        options = item[name]
        if options is None:
            options = LocatedDict(where=item.where_of(name))
        if not isinstance(options, dict):
            runtime.errors.add(f"the options of {name!r} must be a mapping", item.where_of(name),
                               f"write '- {name}: {{key: value}}', or '- {name}' with no options")
            return None
    else:
        runtime.errors.add("a step must be a processor name, or one processor name with its options", where,
                           "write '- name' or '- name: {options}'")
        return None
    try:
        cls = runtime.processors.lookup(name)
    except ConfigError as error:
        runtime.errors.add(error.message, where, error.hint)
        return None
    values, problems = check_processor_options(cls, options)
    locations = {key: _option_location(options, key) for key in options} if isinstance(options, LocatedDict) else {}
    for problem in problems:
        runtime.errors.add(problem.message, locations.get(problem.key, where), problem.hint)
    if problems:
        return None
    context = StepContext(runtime, pipeline_name, where, locations)
    try:
        processor = cls(values, context)
    except ConfigError as error:
        location = error.where or locations.get(error.key, where)
        runtime.errors.add(error.message, location, error.hint)
        return None
    return Step(processor, name, where)


def _option_location(options: LocatedDict, key) -> Location:
    where = options.where_of(key)
    if key in options.block_keys:
        # The text of a block scalar starts on the line after its '|' indicator.
        return Location(where.file, where.line + 1, 1)
    return where
