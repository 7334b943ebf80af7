"""Why a pipeline would not take data; receivers turn it into 503 / UNAVAILABLE or 4xx."""

from __future__ import annotations


class Refused(Exception):
    def __init__(self, reason: str, message: str, retryable: bool = True, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s
