"""Errors shared by every layer."""

from __future__ import annotations


class RowError(Exception):
    """Raised (or returned) by a stage for one row it cannot process; the message is one line.
    ``stage`` (optional) names the stage in the reject when it is not the run's own (``asap compress``)."""

    def __init__(self, message: str = "", stage: str | None = None):
        super().__init__(message)
        self.stage = stage
