"""Failures that carry their own HTTP answer, and the one mapping from any failure to an answer."""
from __future__ import annotations

import uuid
from typing import Any, Optional

from twisted.logger import Logger

from pipedingest.engine.errors import InvalidInput

log = Logger()


class WebError(Exception):
    """Raise from a processor to answer with *status* and a JSON error body."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, **detail: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.detail = detail


def describe_failure(failure, context: str = "", request_id: Optional[str] = None) -> tuple[int, dict, dict]:
    """``(status, error, headers)`` for a failure; unexpected ones are logged with an error id.

    ``error`` is the JSON object placed under ``"error"`` in the response; with the
    *request_id* of the request it answers, when there is one (it is then in the
    log line too).
    """
    if failure.check(WebError):
        error = failure.value
        body = {"status": error.status, "message": error.message}
        body.update({k: v for k, v in error.detail.items() if v is not None})
        status, headers = error.status, dict(error.headers)
    elif failure.check(InvalidInput):
        body = {"status": 400, "message": failure.value.message}
        if failure.value.detail is not None:
            body["detail"] = failure.value.detail
        status, headers = 400, {}
    else:
        error_id = uuid.uuid4().hex[:12]
        log.failure("error {error_id} {context}", failure, error_id=error_id, context=context, request_id=request_id)
        body, status, headers = {"status": 500, "message": "internal error", "id": error_id}, 500, {}
    if request_id is not None:
        body["request_id"] = request_id
    return status, body, headers
