"""``POST /feedback``: prompt flow serving's feedback API, for the collector and for apps that serve HTTP.

Compatible with prompt flow: the W3C ``traceparent`` (and ``baggage``) of the request being
judged make the feedback an INTERNAL span named ``promptflow-feedback`` in that request's
trace, a child of the span ``traceparent`` names; the body is one ``feedback`` attribute,
or with ``?flatten=true`` one attribute per top-level key of a JSON object (other values
JSON-encoded; integers beyond int64 as their digits and lone surrogates as U+FFFD, since OTLP
cannot carry them and the span would be lost at export); every baggage entry becomes an attribute; the answer is
``{"status": "Feedback received."}``. flowtel adds a span link to the judged span, and the
pipeline later adds the evaluation event and the correlated request (``processors/correlation``).

Where prompt flow takes anything, this endpoint refuses what cannot be feedback, with a
4xx that says why: a body that is not JSON or is empty (400), over ``max_body_bytes``
(413), a content type other than JSON (415), another method (405), a missing or wrong
bearer token when one is set (401). A missing or malformed ``traceparent`` is not refused:
the feedback starts a new trace and is counted as uncorrelated, as prompt flow records it.
Baggage beyond the limits of ``FeedbackLimits`` (W3C Baggage's minimums) is dropped, counted
on the span as ``flowtel.feedback.baggage_dropped`` and logged once.

    app = FeedbackApp()                 # WSGI; mount at /feedback, or serve it as is
    asgi = FeedbackASGIApp()            # the same for ASGI servers
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowtel import semconv as sc
from flowtel._log import logger, warn_once
from flowtel.settings import BearerToken

FEEDBACK_PATH = "/feedback"
RECEIVED = json.dumps({"status": "Feedback received."}).encode()
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_PRIMITIVES = (str, bool, int, float)
_NOT_TOKEN = frozenset(' \t"(),/:;<=>?@[\\]{}')


@dataclass(frozen=True, slots=True)
class FeedbackLimits:
    #: Largest body accepted, in bytes (feedback is a rating and a comment, not a document).
    max_body_bytes: int = 64 * 1024
    #: W3C Baggage's minimums every implementation must accept; beyond them entries are dropped.
    max_baggage_bytes: int = 8192
    max_baggage_entries: int = 64
    max_baggage_entry_bytes: int = 4096


class FeedbackRefused(Exception):
    """A request that is not feedback flowtel can record; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, list(headers)


class FeedbackUnavailable(Exception):
    """Raised by a sink that cannot take the span now (the collector over its limits): answered 503."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


@dataclass(slots=True)
class ParsedFeedback:
    attributes: dict[str, Any]
    parent: SpanContext | None


_INT64 = range(-(2**63), 2**63)


def _exportable_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: JSON allows "\\ud800", UTF-8 (and so OTLP) does not
        return False
    return True


def _text(value: str) -> str:
    """``value`` as text UTF-8 can carry: each lone surrogate becomes U+FFFD."""
    return value if _exportable_text(value) else value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _exportable(value: Any) -> bool:
    """Whether OTLP carries ``value`` (a parsed JSON value) as it is."""
    if isinstance(value, str):
        return _exportable_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value in _INT64
    if isinstance(value, list):  # nested lists and maps are JSON-encoded, which carries anything
        return all(_exportable(v) for v in value if not isinstance(v, (list, dict)))
    return True


def _attribute_value(value: Any) -> Any:
    """prompt flow's rule: primitives as they are, lists element by element, anything else as JSON; and what
    OTLP cannot carry as is (an integer beyond int64, a lone surrogate) coerced rather than lost at export."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return str(value)  # exact, where a double would round it
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [_text(v) for v in value]
    if isinstance(value, list) and value and all(
            isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and v in _INT64) for v in value):
        return value
    return json.dumps(value)  # nested lists, maps, numbers beyond int64 in a list: as JSON (ASCII, exact)


def _flattened(data: dict[Any, Any]) -> dict[str, Any]:
    """``?flatten=true``: one attribute per top-level key."""
    if not all(_exportable(k) and _exportable(v) for k, v in data.items()):
        warn_once("feedback:coerced", "feedback values OTLP cannot carry as they are (integers beyond int64, lone "
                  "surrogates) are recorded as text: numbers as their digits or JSON, surrogates as U+FFFD")
    return {_text(str(k)): _attribute_value(v) for k, v in data.items()}


def parse_baggage(header: str, limits: FeedbackLimits) -> tuple[dict[str, str], int]:
    """W3C Baggage ``key=value;properties`` list members; returns (entries, number dropped)."""
    entries: dict[str, str] = {}
    dropped = 0
    size = 0
    for member in header.split(","):
        member = member.strip()
        if not member:
            continue
        size += len(member.encode()) + 1
        key, sep, rest = member.partition("=")
        key = key.strip()
        if (not sep or not key or any(c in key for c in _NOT_TOKEN) or size > limits.max_baggage_bytes + 1
                or len(member.encode()) > limits.max_baggage_entry_bytes
                or len(entries) >= limits.max_baggage_entries):
            dropped += 1
            continue
        entries[key] = unquote(rest.split(";", 1)[0].strip())
    return entries, dropped


def _trace_parent(headers: Mapping[str, str]) -> SpanContext | None:
    if "traceparent" not in headers:
        return None
    context = _TRACE_CONTEXT.extract(headers)
    parent = trace.get_current_span(context).get_span_context()
    return parent if parent.is_valid else None


def parse_feedback(body: bytes, query_string: str, headers: Mapping[str, str],
                   limits: FeedbackLimits) -> ParsedFeedback:
    """``headers`` with lower-case names. Raises ``FeedbackRefused`` for a body that is not JSON."""
    text = body.decode(errors="replace")
    if not text.strip():
        raise FeedbackRefused(400, "empty", "empty body; send the feedback as JSON, e.g. \"thumbup\"")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise FeedbackRefused(400, "malformed", f"body is not JSON: {error}") from None
    flatten = parse_qs(query_string).get("flatten", ["false"])[0].lower() == "true"
    # prompt flow falls back to the raw body when the body cannot be flattened
    attributes: dict[str, Any] = (_flattened(data) if flatten and isinstance(data, dict)
                                  else {sc.FEEDBACK_ATTRIBUTE: text})
    baggage, dropped = parse_baggage(headers.get("baggage", ""), limits)
    attributes.update(baggage)
    if dropped:
        attributes[sc.FEEDBACK_BAGGAGE_DROPPED] = dropped
        warn_once("feedback:baggage", "feedback baggage over the limits (%d entries, %d bytes each, %d in all) was "
                  "dropped; counted on the span as %s", limits.max_baggage_entries, limits.max_baggage_entry_bytes,
                  limits.max_baggage_bytes, sc.FEEDBACK_BAGGAGE_DROPPED)
    return ParsedFeedback(attributes, _trace_parent(headers))


def record_feedback(tracer: trace.Tracer, feedback: ParsedFeedback) -> trace.Span:
    """Start and end the ``promptflow-feedback`` span; returns it (a ReadableSpan when the SDK recorded it)."""
    parent = feedback.parent
    # An explicit context, never the current one: feedback belongs to the judged request's trace or to none.
    context = trace.set_span_in_context(NonRecordingSpan(parent), Context()) if parent else Context()
    span = tracer.start_span(sc.FEEDBACK_SPAN_NAME, context=context, kind=SpanKind.INTERNAL,
                             attributes=feedback.attributes, links=[Link(parent)] if parent else None)
    span.end()
    return span


Response = tuple[int, list[tuple[str, str]], bytes]

def _json_response(status: int, payload: bytes, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *headers], payload


class FeedbackHandler:
    """What the WSGI and ASGI apps (and the collector's receiver) share: checks, parsing, recording."""

    def __init__(self, tracer_provider: TracerProvider | None = None, *, token: str | None = None,
                 limits: FeedbackLimits | None = None, path: str | None = FEEDBACK_PATH,
                 sink: Callable[[ReadableSpan], None] | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("flowtel.feedback")
        self._token = BearerToken(token) if token else None
        self.limits = limits or FeedbackLimits()
        self._path = path
        self._sink = sink
        self._on_refused = on_refused

    def check_head(self, method: str, path: str, headers: Mapping[str, str], length: int | None) -> None:
        """Everything that can be refused before the body is read."""
        if self._path is not None and path.rstrip("/") != self._path:
            raise FeedbackRefused(404, "not_found", f"no endpoint at {path}; feedback goes to {self._path}")
        if method != "POST":
            raise FeedbackRefused(405, "method", "use POST", [("Allow", "POST")])
        if self._token is not None and not self._token.check(headers.get("authorization")):
            raise FeedbackRefused(401, "unauthenticated", "missing or wrong bearer token",
                                  [("WWW-Authenticate", "Bearer")])
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise FeedbackRefused(415, "content_type", f"Content-Type must be application/json, got {content_type!r}")
        if length is not None and length > self.limits.max_body_bytes:
            raise self.too_large()

    def too_large(self) -> FeedbackRefused:
        return FeedbackRefused(413, "too_large", f"body exceeds the limit of {self.limits.max_body_bytes} bytes")

    def record(self, body: bytes, query_string: str, headers: Mapping[str, str]) -> Response:
        span = record_feedback(self._tracer, parse_feedback(body, query_string, headers, self.limits))
        # A sampler that drops the trace (traceparent flags 00 under ParentBased) leaves nothing to hand on.
        if self._sink is not None and isinstance(span, ReadableSpan):
            self._sink(span)
        return _json_response(200, RECEIVED)

    def refusal(self, error: FeedbackRefused | FeedbackUnavailable) -> Response:
        if isinstance(error, FeedbackUnavailable):
            payload = json.dumps({"error": {"code": "unavailable", "message": error.message}}).encode()
            return _json_response(503, payload, [("Retry-After", str(max(1, round(error.retry_after_s))))])
        if self._on_refused is not None:
            self._on_refused(error.reason, error.message)
        payload = json.dumps({"error": {"code": error.reason, "message": error.message}}).encode()
        return _json_response(error.status, payload, error.headers)

    def internal_error(self) -> Response:
        """A bug of ours, not the client's: log it, count it, answer 500 and keep serving."""
        logger.exception("feedback endpoint: internal error on a request")
        if self._on_refused is not None:
            self._on_refused("internal_error", "internal error")
        return _json_response(500, json.dumps({"error": {"code": "internal_error",
                                                         "message": "internal error (see the log)"}}).encode())


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


class FeedbackApp:
    """WSGI app for ``POST /feedback`` (``path=None`` answers on any path, for mounting under a prefix)."""

    def __init__(self, tracer_provider: TracerProvider | None = None, **options: Any) -> None:
        self.handler = FeedbackHandler(tracer_provider, **options)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        handler = self.handler
        headers, length = _head(environ)
        try:
            handler.check_head(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), headers, length)
            if length is None:  # WSGI servers do not de-chunk bodies: without a length there is no body to read
                raise FeedbackRefused(411, "length_required", "Content-Length is required")
            body = environ["wsgi.input"].read(length) if length else b""
            status, out_headers, payload = handler.record(body, environ.get("QUERY_STRING", ""), headers)
        except (FeedbackRefused, FeedbackUnavailable) as error:
            status, out_headers, payload = handler.refusal(error)
        except Exception:
            status, out_headers, payload = handler.internal_error()
        start_response(_status_line(status), out_headers)
        return [payload]

    def check_head(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes] | None:
        """For a server that checks the head before reading the body (flowtel's): ``None`` or the refusal."""
        headers, length = _head(environ)
        try:
            self.handler.check_head(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), headers, length)
        except FeedbackRefused as error:
            status, out_headers, payload = self.handler.refusal(error)
            start_response(_status_line(status), out_headers)
            return [payload]
        return None


def _head(environ: dict[str, Any]) -> tuple[dict[str, str], int | None]:
    """A WSGI request's headers (lower-case names) and its Content-Length (``None`` when absent)."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    raw_length = environ.get("CONTENT_LENGTH") or ""
    return headers, int(raw_length) if raw_length.isdigit() else None


class FeedbackASGIApp:
    """ASGI (HTTP) app for ``POST /feedback``; reads at most ``max_body_bytes`` of a chunked body."""

    def __init__(self, tracer_provider: TracerProvider | None = None, **options: Any) -> None:
        self.handler = FeedbackHandler(tracer_provider, **options)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        handler = self.handler
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        raw_length = headers.get("content-length", "")
        try:
            handler.check_head(scope.get("method", ""), scope.get("path", ""), headers,
                               int(raw_length) if raw_length.isdigit() else None)
            body = bytearray()
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > handler.limits.max_body_bytes:
                    raise handler.too_large()
            status, out_headers, payload = handler.record(bytes(body), scope.get("query_string", b"").decode(),
                                                          headers)
        except (FeedbackRefused, FeedbackUnavailable) as error:
            status, out_headers, payload = handler.refusal(error)
        except Exception:
            status, out_headers, payload = handler.internal_error()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers]})
        await send({"type": "http.response.body", "body": payload})
