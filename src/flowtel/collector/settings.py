"""Config building blocks shared by collector components, in the upstream collector's vocabulary.

Every component's config is a pydantic model that forbids unknown keys, so a typo is an
error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flowtel._wsgi import ServerLimits, TLSSettings

_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_EXPECTED = "a duration such as 5s, 200ms or 1m30s"


def parse_duration(value: Any) -> Any:
    """Go-style durations as the upstream collector writes them (``200ms``, ``5s``, ``1m30s``); numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_EXPECTED)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":  # as Go's time.ParseDuration: the one duration that needs no unit
            return 0.0
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_S[u] for n, u in parts)
    raise ValueError(_DURATION_EXPECTED)


_ENDPOINT_EXPECTED = "host:port (no scheme), port 0 to 65535, e.g. localhost:4317 or 0.0.0.0:4317"


def _check_endpoint(value: str) -> str:
    host, _ = split_endpoint(value)
    if not host:
        raise ValueError(_ENDPOINT_EXPECTED)
    return value


def split_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:4317`` for IPv6) to its parts; a scheme, path or stray space is an error."""
    host, sep, port = value.rpartition(":")
    if (not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535
            or any(c.isspace() or c in "/@?#" for c in host)):
        raise ValueError(_ENDPOINT_EXPECTED)
    return host.strip("[]"), int(port)


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _readable(path: str | None) -> str | None:
    if path is None:
        return path
    if not path:
        raise ValueError("a readable file (the path is empty)")
    if not os.path.exists(path):
        raise ValueError("a readable file (it does not exist)")
    if not os.path.isfile(path):
        raise ValueError("a readable file (it is not a regular file)")
    if not os.access(path, os.R_OK):
        raise ValueError("a readable file (permission denied)")
    return path


ReadableFile = Annotated[str, AfterValidator(_readable)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmptyIsDefault(Model):
    """``grpc:`` with nothing under it means "on, with defaults", as upstream reads it."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if v is None and k in cls.model_fields and k not in _SCALAR_NULLABLE else v)
                    for k, v in data.items()}
        return data


_SCALAR_NULLABLE = {"client_ca_file", "storage", "ca_file", "cert_file", "key_file", "traces_endpoint", "filename"}


class ServerTLS(Model):
    """``tls:`` on a server endpoint: serve TLS; with ``client_ca_file``, require client certificates."""

    cert_file: ReadableFile
    key_file: ReadableFile
    client_ca_file: ReadableFile | None = None

    def settings(self) -> TLSSettings:
        return TLSSettings(self.cert_file, self.key_file, self.client_ca_file)


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


class ClientTLS(Model):
    """``tls:`` on an exporter: verify the server (``ca_file``), present a client certificate, or ``insecure``."""

    insecure: bool = False
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _pairs(self) -> ClientTLS:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file both set or neither")
        return self


class Auth(Model):
    """``auth: {authenticator: bearertokenauth}``: the id of an authenticator extension."""

    authenticator: str
