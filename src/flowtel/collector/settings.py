"""Config blocks only the collector has: what one HTTP listener holds at most.

The blocks both hosts use (durations, endpoints, TLS, auth, the ``Model`` base) are in
``flowtel.settings``; they are re-exported here for the collector's components.
"""

from __future__ import annotations

from pydantic import Field

from flowtel._wsgi import ServerLimits
from flowtel.settings import (
    Auth,
    ClientTLS,
    Duration,
    EmptyIsDefault,
    Endpoint,
    Model,
    PositiveDuration,
    ReadableFile,
    ServerTLS,
    parse_duration,
    split_endpoint,
)

__all__ = ["Auth", "ClientTLS", "Duration", "EmptyIsDefault", "Endpoint", "HTTPServerBounds", "Model",
           "PositiveDuration", "ReadableFile", "ServerTLS", "parse_duration", "split_endpoint"]

_SERVER = ServerLimits()


class HTTPServerBounds(Model):
    """What one HTTP listener holds at most (``max_request_body_size`` is each receiver's own)."""

    #: Open connections; one more is answered 503 with Retry-After and closed.
    max_connections: int = Field(_SERVER.max_connections, gt=0)
    #: Request body bytes buffered over all requests in flight, reserved from Content-Length before the body
    #: is read (a chunked body as it arrives); past it requests get 503 with Retry-After.
    max_buffered_bytes: int = Field(_SERVER.max_buffered_bytes, gt=0)
    #: The request line and headers must arrive within this (408 then close) ...
    read_header_timeout: PositiveDuration = _SERVER.head_timeout_s
    #: ... and the whole body within this after them (408, counted, then close).
    read_timeout: PositiveDuration = _SERVER.body_timeout_s
    #: An idle kept-alive connection is closed after this.
    idle_timeout: PositiveDuration = _SERVER.keep_alive_timeout_s

    def server_limits(self, max_body_bytes: int) -> ServerLimits:
        return ServerLimits(max_connections=self.max_connections, max_body_bytes=max_body_bytes,
                            max_buffered_bytes=self.max_buffered_bytes, head_timeout_s=self.read_header_timeout,
                            body_timeout_s=self.read_timeout, keep_alive_timeout_s=self.idle_timeout)
