"""Failures that carry their own HTTP answer."""
from __future__ import annotations

from typing import Any, Optional


class WebError(Exception):
    """Raise from a processor to answer with *status* and a JSON error body."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, **detail: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.detail = detail
