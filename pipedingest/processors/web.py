"""``write-web-response``: answer the request in the baton."""
from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.engine.baton import get_path
from pipedingest.engine.processor import Option, Processor, IProcessor

log = Logger()
_ABSENT = object()


def _with_request_id(content, request):
    """An error written by a pipeline (``{"error": {...}}``) carries the request's id, as the site's own do."""
    error = content.get("error") if isinstance(content, dict) else None
    request_id = getattr(request, "request_id", None)
    if not isinstance(error, dict) or request_id is None or "request_id" in error:
        return content
    return {**content, "error": {**error, "request_id": request_id}}


@provider(IPlugin, IProcessor)
class WriteWebResponse(Processor):
    """Write the content at ``input_path`` as the response to the request at ``request_path``.

    Bytes and text are written as they are; anything else is encoded as JSON.
    When the content is absent, ``fallback_content`` is written instead (as the
    reaper does for requests that waited too long).  A request that was
    already answered, or whose client went away, is left alone.
    """

    name = "write-web-response"
    options = {
        "input_path": Option(str, "content", "where the response content is"),
        "request_path": Option(str, "request", "where the request is"),
        "status": Option(int, 200, "the HTTP status", minimum=100, maximum=599),
        "status_path": Option((str, type(None)), None, "where to read the status from, if it varies"),
        "content_type": Option((str, type(None)), None,
                               "defaults to application/json for JSON content, text/plain otherwise"),
        "headers": Option(dict, {}, "extra response headers", items=str),
        "headers_path": Option((str, type(None)), None, "where more headers are, if they vary ({name: value})"),
        "fallback_content": Option(object, _ABSENT, "written when there is no content"),
    }

    def process(self, baton):
        request = get_path(baton, self.config["request_path"])
        content = get_path(baton, self.config["input_path"], _ABSENT)
        if content is _ABSENT or content is None:
            content = self.config["fallback_content"]
            if content is _ABSENT:
                raise LookupError(f"no response content at {self.config['input_path']!r} and no fallback_content")
        status = self.config["status"]
        if self.config["status_path"]:
            status = int(get_path(baton, self.config["status_path"]))
        content_type = self.config["content_type"]
        if isinstance(content, bytes):
            body = content
        elif isinstance(content, str):
            body = content.encode("utf-8")
            if content_type is None and content[:1] in ("{", "["):
                content_type = "application/json"
        else:
            if status >= 400:
                content = _with_request_id(content, request)
            body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            content_type = content_type or "application/json"
        headers = self.config["headers"]
        if self.config["headers_path"]:
            headers = {**headers, **(get_path(baton, self.config["headers_path"], None) or {})}
        if not request.respond(status, body, content_type or "text/plain; charset=utf-8", headers):
            log.debug("{request} was already answered; response dropped", request=request)
        return baton
