"""Processors that run other pipelines: ``run-pipeline`` and ``for-each``."""
from __future__ import annotations

from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.engine.processor import InputOutputProcessor, IProcessor, Option

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
