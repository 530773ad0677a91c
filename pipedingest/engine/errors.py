"""Failures a pipeline can raise that mean something to whoever runs it.

The engine knows nothing of HTTP; the web layer maps these to statuses.
"""


class InvalidInput(ValueError):
    """The data given to a pipeline is unusable (the caller's mistake, not the daemon's)."""

    def __init__(self, message: str, detail=None):
        super().__init__(message)
        self.message = message
        self.detail = detail
