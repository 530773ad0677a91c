"""Processors that run other pipelines: ``run-pipeline``, ``for-each`` and ``route``."""
from __future__ import annotations

from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.config.errors import ConfigError
from pipedingest.config.schema import shown, type_name
from pipedingest.engine.baton import get_path
from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option, Processor
from pipedingest.engine.runtime import StepContext
from pipedingest.web.errors import WebError

log = Logger()


@provider(IPlugin, IProcessor)
class RunPipeline(InputOutputProcessor):
    """Run another pipeline on the input; its final baton is the output.

    ``pipeline`` is an absolute name (``web.write-response``) or a relative one:
    ``.write-response`` is a sibling of the current pipeline, ``..x`` climbs one
    level more.
    """

    name = "run-pipeline"
    options = {"pipeline": Option(str, doc="the pipeline to run, absolute or .relative")}

    def __init__(self, config, step):
        super().__init__(config, step)
        self.pipeline = step.pipeline_reference(config["pipeline"])

    def process_input(self, value, baton):
        return self.pipeline.value(value)


@provider(IPlugin, IProcessor)
class ForEach(InputOutputProcessor):
    """Run a pipeline once for each item of the input list; the output is the list of results.

    With ``fail_on_error: false`` (the default) a failed item is logged and its
    result is null, so one bad item does not lose the others.
    """

    name = "for-each"
    options = {
        "pipeline": Option(str, doc="the pipeline to run for each item"),
        "fail_on_error": Option(bool, False, "fail the whole step when one item fails"),
        "concurrency": Option(int, 1, "how many items run at once", minimum=1),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.pipeline = step.pipeline_reference(config["pipeline"])
        self.semaphore_size = config["concurrency"]
        self.fail_on_error = config["fail_on_error"]

    def process_input(self, value, baton):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"for-each needs a list at {self.input_path or 'the baton'!r}, "
                            f"not {type(value).__name__}")
        semaphore = DeferredSemaphore(self.semaphore_size)
        pipeline = self.pipeline.value
        runs = [semaphore.run(pipeline, item) for item in value]
        if not self.fail_on_error:
            runs = [run.addErrback(self._item_failed) for run in runs]
        return gatherResults(runs, consumeErrors=True).addErrback(_first_failure)

    def _item_failed(self, failure):
        log.failure("for-each item failed in {pipeline}", failure, pipeline=self.pipeline.name)
        return None


def _first_failure(failure):
    from twisted.internet.defer import FirstError

    failure.trap(FirstError)
    return failure.value.subFailure


@provider(IPlugin, IProcessor)
class Route(Processor):
    """Run the pipeline that ``routes`` names for the value at ``input_path``; its final baton is the output.

    ::

        - route:
            input_path: article.language
            routes: {en: .english, fr: .french}     # value → pipeline, absolute or .relative
            default: .english                       # or null: 422 naming the supported values

    The chosen pipeline runs on the whole baton, as ``run-pipeline`` with ``input_path: ''`` does. Values
    are compared as text: a number or a boolean as JSON writes it (``3``, ``true``), so a key written
    ``"3"`` matches a computed bucket 3. An absent or null value, or one without a route, takes
    ``default``; with ``default: null`` the step fails with 422 and the supported values. Every route's
    pipeline is a reference of this step, so an unknown name is an error at its own line and
    ``--graph`` draws an edge to each.
    """

    name = "route"
    options = {
        "input_path": Option(str, doc="where the value to route on is, e.g. article.language"),
        "routes": Option(dict, doc="value → pipeline to run, e.g. {en: .english, fr: .french}", items=str),
        "default": Option((str, type(None)), doc="the pipeline for any other value (null: answer 422)"),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        routes = config["routes"]
        if not routes:
            raise ConfigError("route needs at least one route", "map each value to a pipeline, e.g. "
                              "routes: {en: .english, fr: .french}", key="routes")
        self.routes = self._references(routes, step)
        self.default = step.pipeline_reference(config["default"], "default") if config["default"] else None

    @staticmethod
    def _references(routes, step) -> dict:
        """A reference per route, each located at its own line; every bad key reported, not just the first."""
        where_of = getattr(routes, "where_of", lambda key: step.where_of("routes"))
        where_of_key = getattr(routes, "where_of_key", where_of)
        located = StepContext(step.runtime, step.pipeline, step.where_of("routes"),
                              {key: where_of(key) for key in routes})
        references = {}
        for key, name in routes.items():
            if not isinstance(key, str):
                step.runtime.errors.add(
                    f"a route's value must be text, not {type_name(key)} ({shown(key)})", where_of_key(key),
                    f"quote it: '{_as_text(key)}': ... (YAML reads no, yes, on, off, true, false and numbers "
                    f"as other types)")
                continue
            if not name:
                step.runtime.errors.add(f"route {key!r} names no pipeline", where_of(key),
                                        "write a pipeline name, absolute or .relative")
                continue
            try:
                references[key] = located.pipeline_reference(name, key)
            except ConfigError as error:
                step.runtime.errors.add(error.message, where_of(key), error.hint)
        return references

    def process(self, baton):
        value = get_path(baton, self.config["input_path"], None)
        text = _as_text(value)
        pipeline = self.routes.get(text) if text is not None else None
        if pipeline is None:
            pipeline = self.default
        if pipeline is None:
            path, supported = self.config["input_path"], sorted(self.routes)
            problem = f"{path} {shown(text)} has no route" if text is not None else f"no value at {path} to route on"
            raise WebError(422, f"{problem}; supported: {', '.join(supported)}",
                           value=None if text is None else text[:100], supported=supported)
        return pipeline.value(baton)


def _as_text(value):
    """*value* as a route's key is compared with it: text as is, numbers and booleans as JSON writes them.

    None (absent or null) and other values (lists, mappings) have no text: they never match a route.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None
