"""The ``twistd ingest`` command.

Kept tiny on purpose: twistd imports every plugin module to list commands, so
the real work is imported lazily from :mod:`pipedingest.tap`.
"""
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _IngestServiceMaker:
    tapname = "ingest"
    description = "Ingest news articles over HTTP and extract named entities (YAML pipelines)."

    @property
    def options(self):
        from pipedingest.tap import Options

        return Options

    def makeService(self, options):
        from pipedingest.tap import makeService

        return makeService(options)


ingest = _IngestServiceMaker()
