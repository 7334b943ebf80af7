"""OTLP/HTTP transport of the ``otlp`` receiver: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` (each only
when a pipeline of its signal takes this receiver), protobuf or JSON, gzip or deflate.

The body is read only up to ``max_request_body_size`` and decompressed only up to the
same limit, so neither a huge body nor a gzip bomb costs more than the limit. Errors
answer with a ``google.rpc.Status`` in the request's encoding, as the specification says.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from flowtel._log import logger
from flowtel._wsgi import WSGIEndpoint
from flowtel.otlp import MalformedRequest
from flowtel.settings import BearerToken

from ..refusal import Refused
from ..settings import split_endpoint
from .otlp import AnyIntake, HTTPServerConfig

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
#: google.rpc.Code for the HTTP statuses this receiver answers with, as the upstream receiver maps them.
_GRPC_CODE = {400: 3, 401: 16, 404: 5, 405: 12, 411: 3, 413: 8, 415: 3, 500: 13, 503: 14}
_PROFILES = "/v1development/profiles"
#: A body up to this size is read before admission, so a refusal can count its spans
#: (``otelcol_receiver_refused_spans_total``, as upstream); a larger one is refused on its head, unread, and
#: counted as a refused request only.
_READ_BEFORE_ADMISSION = 64 * 1024


class _Reject(Exception):
    def __init__(self, status: str, reason: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, list(headers)


#: gzip members one body may hold (real senders write one). Each member is inflated from input handed over in
#: chunks that start small and double, so the copy zlib makes of the input left after a member (``unused_data``)
#: is at most about twice what the member used: decompression is linear in the body, where handing zlib the
#: whole rest after each member made it quadratic in the number of members.
MAX_GZIP_MEMBERS = 4096
_FIRST_CHUNK, _MAX_CHUNK = 256, 64 * 1024


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise _Reject("400 Bad Request", "unsupported_encoding",
                      f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    too_large = _Reject("413 Content Too Large", "too_large",
                        f"decompressed body exceeds max_request_body_size ({limit} bytes)")
    out = bytearray()
    view = memoryview(body)
    pos, members = 0, 0
    try:
        while True:  # gzip allows several members one after the other; they decode as one body
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise _Reject("400 Bad Request", "malformed", f"more than {MAX_GZIP_MEMBERS} gzip members")
            inflater = zlib.decompressobj(wbits)
            size = _FIRST_CHUNK
            while not inflater.eof:
                if pos >= len(body):
                    raise _Reject("400 Bad Request", "malformed", f"truncated {encoding} body")
                chunk = view[pos:pos + size]
                pos += len(chunk)
                size = min(2 * size, _MAX_CHUNK)
                out += inflater.decompress(chunk, limit + 1 - len(out))  # never 0 (unbounded): len(out) <= limit
                if len(out) > limit or inflater.unconsumed_tail:
                    raise too_large
            pos -= len(inflater.unused_data)  # the next member starts where this one's input ended
            if pos >= len(body):
                return bytes(out)
            if encoding == "deflate":
                raise _Reject("400 Bad Request", "malformed", "data after the end of the deflate stream")
    except zlib.error as error:
        raise _Reject("400 Bad Request", "malformed", f"cannot decompress {encoding} body: {error}") from None


class HTTPTransport:
    kind = "http"  # the service lists where it listens under this name

    def __init__(self, config: HTTPServerConfig, intakes: dict[str, AnyIntake], token: BearerToken | None) -> None:
        self._config = config
        # Path -> the intake of its signal; requests to a signal no pipeline takes here answer 404.
        self._routes: dict[str, AnyIntake] = {
            getattr(config, f"{signal}_url_path"): intake for signal, intake in intakes.items()}
        self._intake = next(iter(intakes.values()))  # counts refusals that come before a route is known
        self._token = token
        host, port = split_endpoint(config.endpoint)
        self._endpoint = WSGIEndpoint(self._app, host, port, name="flowtel-otlp-http",
                                      tls=config.tls.settings() if config.tls else None,
                                      limits=config.server_limits(config.max_request_body_size),
                                      check_head=self._check_head,
                                      on_refused=lambda reason, detail: self._intake.refuse_request(
                                          "http", reason, detail))

    @property
    def url(self) -> str:
        return self._endpoint.url

    @property
    def port(self) -> int:
        return self._endpoint.port

    def start(self) -> None:
        self._endpoint.start()

    def shutdown(self) -> None:
        self._endpoint.shutdown()

    def _route(self, environ: dict[str, Any]) -> AnyIntake:
        """The intake of the request's signal; the first one for a path no signal takes (it counts the 404)."""
        return self._routes.get(environ.get("PATH_INFO", ""), self._intake)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        intake = self._route(environ)
        try:
            body = self._handle(environ, content_type)
        except (_Reject, Refused) as error:
            return self._refusal(start_response, error, content_type, intake)
        except Exception:  # a bug of ours, not the client's: answer 500 and keep serving, as upstream does
            logger.exception("receiver %s (http): internal error on a request", self._intake.receiver_id)
            intake.refuse_request("http", "internal_error", "internal error (see the log)")
            return self._status(start_response, "500 Internal Server Error", "internal error", content_type, [])
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _check_head(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes] | None:
        """Run by the server before it reads the body: the same checks as ``_handle``, plus admission for a large
        (or chunked) body, so an overloaded collector refuses it before buffering it."""
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        intake = self._route(environ)
        try:
            length = self._check_request_head(environ, content_type)
            if length is None or length > _READ_BEFORE_ADMISSION:
                intake.admit_early("http")
        except (_Reject, Refused) as error:
            return self._refusal(start_response, error, content_type, intake)
        return None

    def _refusal(self, start_response: Callable[..., Any], error: _Reject | Refused, content_type: str,
                 intake: AnyIntake) -> Iterable[bytes]:
        if isinstance(error, _Reject):
            intake.refuse_request("http", error.reason, error.message)
            return self._status(start_response, error.status, error.message, content_type, error.headers)
        retry = str(max(1, round(error.retry_after_s)))
        return self._status(start_response, "503 Service Unavailable", error.message, content_type,
                            [("Retry-After", retry)])

    def _check_request_head(self, environ: dict[str, Any], content_type: str) -> int | None:
        """Everything checked before the body is read; returns the Content-Length (``None``: chunked)."""
        path = environ.get("PATH_INFO", "")
        if path not in self._routes:
            config = self._config
            hint = {config.traces_url_path: " (no traces pipeline takes this receiver)",
                    config.metrics_url_path: " (no metrics pipeline takes this receiver)",
                    config.logs_url_path: " (no logs pipeline takes this receiver)",
                    _PROFILES: " (flowtel's collector takes no profiles)"}.get(path, "")
            raise _Reject("404 Not Found", "not_found", f"no OTLP endpoint at {path}{hint}")
        if environ.get("REQUEST_METHOD") != "POST":
            raise _Reject("405 Method Not Allowed", "method", "use POST", [("Allow", "POST")])
        if self._token is not None and not self._token.check(environ.get("HTTP_AUTHORIZATION")):
            raise _Reject("401 Unauthorized", "unauthenticated", "missing or wrong bearer token",
                          [("WWW-Authenticate", "Bearer")])
        if content_type not in (_PROTOBUF, _JSON):
            raise _Reject("415 Unsupported Media Type", "content_type",
                          f"Content-Type must be {_PROTOBUF} or {_JSON}, got {content_type or 'none'!r}")
        limit = self._config.max_request_body_size
        raw_length = environ.get("CONTENT_LENGTH") or ""
        if not raw_length.isdigit():
            return None
        length = int(raw_length)
        if length > limit:
            raise _Reject("413 Content Too Large", "too_large",
                          f"body of {length} bytes exceeds max_request_body_size ({limit} bytes)")
        return length

    def _handle(self, environ: dict[str, Any], content_type: str) -> bytes:
        length = self._check_request_head(environ, content_type)
        if length is None:  # the server de-chunks bodies and sets Content-Length: only a bare WSGI server lands here
            raise _Reject("411 Length Required", "length_required", "Content-Length is required")
        intake = self._routes[environ.get("PATH_INFO", "")]
        limit = self._config.max_request_body_size
        body = environ["wsgi.input"].read(length)
        if len(body) != length:
            raise _Reject("400 Bad Request", "malformed", "body shorter than Content-Length")
        body = _decompress(body, environ.get("HTTP_CONTENT_ENCODING", "").strip().lower(), limit)
        try:
            signal = intake.signal
            request = signal.parse_json(body) if content_type == _JSON else signal.request.FromString(body)
        except (DecodeError, ValueError, json_format.ParseError, UnicodeDecodeError) as error:
            raise _Reject("400 Bad Request", "malformed", f"malformed OTLP {content_type} body: {error}") from None
        try:
            response = intake.accept(request, "http", None if content_type == _JSON else body)
        except MalformedRequest as error:
            raise _Reject("400 Bad Request", "malformed", str(error)) from None
        return _encode(response, content_type)

    @staticmethod
    def _status(start_response: Callable[..., Any], status: str, message: str, content_type: str,
                headers: list[tuple[str, str]]) -> Iterable[bytes]:
        code = int(status.split()[0])
        if content_type not in (_PROTOBUF, _JSON):
            body, content_type = (message + "\n").encode(), "text/plain; charset=utf-8"
        else:
            body = _encode(status_pb2.Status(code=_GRPC_CODE.get(code, 2), message=message), content_type)
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers])
        return [body]


def _encode(message: Message, content_type: str) -> bytes:
    if content_type == _JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()
