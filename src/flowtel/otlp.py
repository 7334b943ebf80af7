"""OTLP spans as the shared logic sees them, and back.

The collector's receivers hand ``adapt`` the bytes of an ``ExportTraceServiceRequest`` (already
parsed once by upb, which rejects malformed input); it reads each valid span straight from the
wire into a ``SpanData`` whose ``native`` is ``WireSpan``: the span's own bytes, its resource and
scope, and where each attribute lies. ``apply_to_otlp_span`` applies an ``Enrichment`` by cutting
removed fields out of those bytes and appending additions, and ``encode_request`` re-assembles
released spans, grouped by resource and scope again. No protobuf object is built per span or per
attribute: with upb, that object churn cost more than the rest of the receiving and encoding.
JSON requests and the Azure exporter's SDK spans still go through the protobuf classes.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from flowtel import _wire as w
from flowtel.semconv import CONTENT_ATTRIBUTE_PREFIXES, CONTENT_ATTRIBUTES
from flowtel.spans import KIND_CONSUMER, KIND_INTERNAL, KIND_SERVER, Enrichment, EventView, SpanData

_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_DOUBLE = struct.Struct("<d")


def decode_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return tuple(decode_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: decode_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value
    return None


_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value", "bytes_value"})


def decode_attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        kind = value.WhichOneof("value")
        # Scalars are nearly every attribute: read them without a call to decode_value.
        out[kv.key] = getattr(value, kind) if kind in _SCALARS else decode_value(value)
    return out


class OTLPEvent:
    """A span event shaped like ``SpanEvent``, read from the span's bytes; its attributes are decoded only if
    the logic reads them (it reads names and timestamps of every event, attributes of exception events only).
    ``field`` is where the event's field lies in the span's bytes, for removal."""

    __slots__ = ("_attributes", "_buf", "field", "name", "timestamp")

    def __init__(self, buf: bytes, start: int, end: int, field_start: int) -> None:
        self.name = ""
        self.timestamp = 0
        self.field = (field_start, end)
        self._buf = buf
        self._attributes: dict[str, Any] | list[tuple[int, int]] = []
        for tag, _, a, b in w.fields(buf, start, end):
            if tag == 0x09:  # time_unix_nano, fixed64
                self.timestamp = w.fixed64(buf, a)
            elif tag == 0x12:
                self.name = buf[a:b].decode()
            elif tag == 0x1A:
                self._attributes.append((a, b))

    @property
    def attributes(self) -> dict[str, Any]:
        if isinstance(self._attributes, list):
            self._attributes = dict(w.key_value(self._buf, a, b) for a, b in self._attributes)
        return self._attributes


class SpanGroup:
    """The resource and scope a span came with, as the wire bytes ``encode_request`` writes around it."""

    __slots__ = ("resource", "resource_head", "resource_tail", "scope_head", "scope_name", "scope_tail")

    def __init__(self, resource: Mapping[str, Any], scope_name: str, resource_head: bytes, resource_tail: bytes,
                 scope_head: bytes, scope_tail: bytes) -> None:
        self.resource = resource
        self.scope_name = scope_name
        self.resource_head = resource_head
        self.resource_tail = resource_tail
        self.scope_head = scope_head
        self.scope_tail = scope_tail


#: ``SpanData.native`` in the collector: the span's wire bytes, its group, and where each attribute's field
#: starts in those bytes, by key (None when a key repeats: rare, and then removal scans the span).
WireSpan = tuple[bytes, SpanGroup, "dict[str, int] | None"]


@dataclass(slots=True)
class Adapted:
    spans: list[SpanData]
    rejected: int = 0
    error_message: str = ""


_BAD_TRACE_ID = "trace_id must be 16 bytes and not all zero"
_BAD_SPAN_ID = "span_id must be 8 bytes and not all zero"
_BAD_PARENT_ID = "parent_span_id must be empty or 8 bytes"


class MalformedRequest(ValueError):
    """The request's bytes are not an ``ExportTraceServiceRequest`` flowtel can read."""


def adapt(raw: bytes) -> Adapted:
    """Every valid span of a serialized ``ExportTraceServiceRequest`` (already parsed once by upb, which
    rejects malformed input) as ``SpanData``; invalid ones are counted and named, OTLP partial-success style.
    Raises ``MalformedRequest`` for what upb accepts but flowtel cannot read (deprecated group fields)."""
    out: list[SpanData] = []
    problems: list[str] = []
    try:
        for tag, _, a, b in w.fields(raw, 0, len(raw)):
            if tag == 0x0A:
                _resource_spans(raw, a, b, out, problems)
    except (ValueError, IndexError, struct.error) as error:
        raise MalformedRequest(f"unreadable ExportTraceServiceRequest: {error}") from None
    message = f"{len(problems)} span(s) rejected: {problems[0]}" if problems else ""
    return Adapted(out, len(problems), message)


def _resource_spans(raw: bytes, start: int, end: int, out: list[SpanData], problems: list[str]) -> None:
    """A message field written more than once is one message, merged (as upb reads it): the resource's
    attributes are those of every occurrence, and every occurrence is forwarded so the receiver merges them
    the same way. A scalar written twice (schema_url) keeps its last value."""
    resource: dict[str, Any] = {}
    head = bytearray()  # appended in place: a resource written n times costs n, not n squared, bytes copied
    tail = b""
    scopes = array("q")  # start and end of each ScopeSpans: 16 bytes each, however small the ScopeSpans
    for tag, field_start, a, b in w.fields(raw, start, end):
        if tag == 0x0A:  # resource
            head += raw[field_start:b]
            resource.update(w.key_values(raw, a, b))
        elif tag == 0x12:  # scope_spans
            scopes.append(a)
            scopes.append(b)
        elif tag == 0x1A:  # schema_url
            tail = raw[field_start:b]
    resource_head = bytes(head)
    bounds = iter(scopes)
    for a, b in zip(bounds, bounds, strict=True):
        _scope_spans(raw, a, b, resource, resource_head, tail, out, problems)


def _scope_spans(raw: bytes, start: int, end: int, resource: dict[str, Any], resource_head: bytes,
                 resource_tail: bytes, out: list[SpanData], problems: list[str]) -> None:
    scope_name = ""
    head = bytearray()
    tail = b""
    # Start and end of each span: 16 bytes a span. A list of tuples held about 120 bytes a span, 60 times an
    # empty span's 2 bytes on the wire.
    spans = array("q")
    for tag, field_start, a, b in w.fields(raw, start, end):
        if tag == 0x12:
            spans.append(a)
            spans.append(b)
        elif tag == 0x0A:  # scope; merged like the resource
            head += raw[field_start:b]
            for t, _, x, y in w.fields(raw, a, b):
                if t == 0x0A:
                    scope_name = raw[x:y].decode()
        elif tag == 0x1A:
            tail = raw[field_start:b]
    group = SpanGroup(resource, scope_name, resource_head, resource_tail, bytes(head), tail)
    append = out.append
    bounds = iter(spans)
    for a, b in zip(bounds, bounds, strict=True):
        span = _span(raw[a:b], group)
        if isinstance(span, str):
            problems.append(span)
        else:
            append(span)


#: Short attribute fields recur across spans byte for byte (framework, span types, function and node names,
#: models, token counts), so their decoded (key, value) is remembered; long ones are read each time, and so
#: are prompts and completions whatever their length: they differ per request (remembering them would only
#: evict the rest) and flowtel does not keep content it was not asked to keep. Bounded: emptied when full.
_MAX_MEMO_FIELD = 128
_MAX_MEMO_ENTRIES = 8192
_KEY_VALUES: dict[bytes, tuple[str, Any]] = {}


def _remember(field: bytes, kv: tuple[str, Any]) -> tuple[str, Any]:
    key, value = kv
    if isinstance(value, (tuple, dict)):  # scalars only: a kvlist, or an array holding one, is mutable
        return kv
    if key in CONTENT_ATTRIBUTES or key.startswith(CONTENT_ATTRIBUTE_PREFIXES):
        return kv
    if len(_KEY_VALUES) >= _MAX_MEMO_ENTRIES:
        _KEY_VALUES.clear()
    _KEY_VALUES[field] = kv
    return kv


# The fields every OTel SDK writes first, in field order: trace_id (1), span_id (2), parent_span_id (4) and
# name (5), then kind (6), start (7) and end (8) time. Read with one struct each when laid out that way.
_IDS = struct.Struct(">2xQQ2xQ")
_PARENT = struct.Struct(">2xQ")
_KIND_TIMES = struct.Struct("<xBxQxQ")


def _span(buf: bytes, group: SpanGroup) -> SpanData | str:
    """One ``Span`` message; a str says why it is invalid. The common fields are read inline (a call per
    field would cost more than the read), the leading ones in one struct read when the sender wrote them in
    field order; anything else, including a field written twice (the last one wins), goes through the loop."""
    trace_bytes: bytes | None = None
    span_bytes: bytes | None = None
    parent_bytes: bytes | None = None
    trace_id = span_id = parent_id = 0
    name = status_message = ""
    kind = start_ns = end_ns = flags = status = 0
    attributes: dict[str, Any] = {}
    positions: dict[str, int] = {}
    n_attributes = 0
    events: list[OTLPEvent] = []
    varint, key_value, memo = w.varint, w.key_value, _KEY_VALUES
    unpack_fixed64, unpack_fixed32 = w.FIXED64.unpack_from, w.FIXED32.unpack_from
    pos, end = 0, len(buf)
    if end >= 48 and buf[0] == 0x0A and buf[1] == 16 and buf[18] == 0x12 and buf[19] == 8:
        high, low, span_id = _IDS.unpack_from(buf)
        trace_id = high << 64 | low
        pos = 28
        if buf[28] == 0x22 and buf[29] == 8:
            parent_id = _PARENT.unpack_from(buf, 28)[0]
            pos = 38
        n = buf[pos + 1]
        if buf[pos] == 0x2A and n < 0x80 and pos + n + 22 <= end:
            name = buf[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            if buf[pos] == 0x30 and buf[pos + 1] < 0x80 and buf[pos + 2] == 0x39 and buf[pos + 11] == 0x41:
                kind, start_ns, end_ns = _KIND_TIMES.unpack_from(buf, pos)
                pos += 20
    while pos < end:
        field_start = pos
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            if tag == 0x85 and buf[pos] == 0x01:  # flags (field 16, fixed32): a two-byte tag on every span
                flags = unpack_fixed32(buf, pos + 1)[0]
                pos += 5
                continue
            tag, pos = varint(buf, field_start)
        if tag & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                if buf[pos] < 0x80:  # two bytes: 128 B to 16 KiB, prompts and answers
                    n = (n & 0x7F) | (buf[pos] << 7)
                    pos += 1
                else:
                    n, pos = varint(buf, pos - 1)
            a = pos
            pos += n
            if tag == 0x4A:  # attributes
                if n <= _MAX_MEMO_FIELD:
                    field = buf[a:pos]
                    kv = memo.get(field)
                    if kv is None:
                        kv = _remember(field, key_value(buf, a, pos))
                    key, value = kv
                else:
                    key, value = key_value(buf, a, pos)
                attributes[key] = value
                positions[key] = field_start
                n_attributes += 1
            elif tag == 0x5A:
                events.append(OTLPEvent(buf, a, pos, field_start))
            elif tag == 0x7A:  # status; a repeated message field merges, field by field
                if n == 0:  # UNSET, as the SDK's exporter writes it
                    continue
                if n == 2 and buf[a] == 0x18 and buf[a + 1] < 0x80:  # a code and no message
                    status = buf[a + 1]
                    continue
                for t, _, x, y in w.fields(buf, a, pos):
                    if t == 0x18:
                        status = varint(buf, x)[0]
                    elif t == 0x12:
                        status_message = buf[x:y].decode()
            elif tag == 0x0A:
                trace_bytes = buf[a:pos]
            elif tag == 0x12:
                span_bytes = buf[a:pos]
            elif tag == 0x22:
                parent_bytes = buf[a:pos]
            elif tag == 0x2A:
                name = buf[a:pos].decode()
        elif tag == 0x39:
            start_ns = unpack_fixed64(buf, pos)[0]
            pos += 8
        elif tag == 0x41:
            end_ns = unpack_fixed64(buf, pos)[0]
            pos += 8
        elif tag == 0x30:
            kind = buf[pos]
            pos += 1
            if kind >= 0x80:
                kind, pos = varint(buf, pos - 1)
        elif tag == 0x85:  # flags, with its tag written the long way
            flags = unpack_fixed32(buf, pos)[0]
            pos += 4
        else:
            pos = w.skip(buf, pos, tag)
    if pos != end:
        raise ValueError("span field runs past the end of the span")
    if trace_bytes is not None:
        if len(trace_bytes) != 16:
            return _BAD_TRACE_ID
        trace_id = int.from_bytes(trace_bytes, "big")
    if span_bytes is not None:
        if len(span_bytes) != 8:
            return _BAD_SPAN_ID
        span_id = int.from_bytes(span_bytes, "big")
    if parent_bytes is not None:
        if parent_bytes and len(parent_bytes) != 8:
            return _BAD_PARENT_ID
        parent_id = int.from_bytes(parent_bytes, "big") if parent_bytes else 0
    if not trace_id:
        return _BAD_TRACE_ID
    if not span_id:
        return _BAD_SPAN_ID
    kind = kind - 1 if kind > 0 else KIND_INTERNAL
    if flags & _HAS_IS_REMOTE:
        remote = bool(flags & _IS_REMOTE)
    else:  # senders that do not say: a server or consumer span's parent is in another process
        remote = parent_id != 0 and kind in (KIND_SERVER, KIND_CONSUMER)
    return SpanData(trace_id, span_id, parent_id, remote, name, kind, start_ns, end_ns, status, status_message,
                    attributes, events or (), group.scope_name, group.resource,
                    (buf, group, positions if n_attributes == len(positions) else None))


def _any_value(value: Any) -> bytes:
    """``AnyValue`` wire bytes for a Python attribute value (sequences become arrays, mappings kvlists)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + w.encode_varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, str):
        return w.field(0x0A, value.encode())
    if isinstance(value, bytes):
        return w.field(0x3A, value)
    if isinstance(value, Mapping):
        return w.field(0x32, b"".join(w.field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return w.field(0x2A, b"".join(w.field(0x0A, _any_value(v)) for v in value))
    return w.field(0x0A, str(value).encode())


def _key_value(key: str, value: Any) -> bytes:
    return w.field(0x0A, key.encode()) + w.field(0x12, _any_value(value))


@functools.lru_cache(maxsize=8192)
def _attribute_field(key: str, value: Any) -> bytes:
    return w.field(0x4A, _key_value(key, value))  # Span.attributes is field 9


def _attribute(key: str, value: Any) -> bytes:
    try:
        return _attribute_field(key, value)
    except TypeError:
        return w.field(0x4A, _key_value(key, value))


def _attribute_fields(buf: bytes, keys: frozenset[str]) -> list[tuple[int, int]]:
    """Bounds of every attribute field of the span ``buf`` whose key is in ``keys``, repeats included."""
    return [(start, b) for tag, start, a, b in w.fields(buf, 0, len(buf))
            if tag == 0x4A and w.key_value(buf, a, b)[0] in keys]


def _event_field(event: EventView) -> tuple[int, int]:
    """Where the event lies in its span's bytes. ``adapt`` reads every event of a collector span as an
    ``OTLPEvent``; anything else cannot be cut out: raising leaves the span to the pipeline's fail-closed path."""
    if not isinstance(event, OTLPEvent):
        raise TypeError(f"a received span's events are OTLPEvent, not {type(event).__name__}")
    return event.field


def apply_to_otlp_span(data: SpanData, enrichment: Enrichment) -> tuple[bytes, SpanGroup]:
    """The span's bytes with the enrichment applied: removed attributes and events are cut out, additions and
    the status are appended as wire bytes (protobuf concatenates repeated fields and merges a repeated
    message field), so no message is ever built."""
    buf, group, positions = data.native
    cuts: list[tuple[int, int]] = []
    removed = enrichment.removed_attributes
    if removed:
        if positions is None:
            cuts += _attribute_fields(buf, removed)
        else:
            cuts += [w.field_bounds(buf, positions[key]) for key in removed]
    if enrichment.removed_events:
        names = enrichment.removed_events
        cuts += [_event_field(event) for event in data.events if event.name in names]
    pieces: list[bytes] = []  # the kept parts of the span, then what is added: joined once
    if cuts:
        cuts.sort()
        kept_from = 0
        for start, end in cuts:
            pieces.append(buf[kept_from:start])
            kept_from = end
        pieces.append(buf[kept_from:])
    else:
        pieces.append(buf)
    added = enrichment.added
    if added:
        try:  # the same few keys and values recur (models, operations, counts): their fields are cached
            pieces += [_attribute_field(k, v) for k, v in added.items()]
        except TypeError:  # an unhashable value (a mapping)
            pieces += [_attribute(k, v) for k, v in added.items()]
    for event in enrichment.added_events:
        encoded = (b"\x09" + w.FIXED64.pack(event.timestamp) + w.field(0x12, event.name.encode())
                   + b"".join(w.field(0x1A, _key_value(k, v)) for k, v in event.attributes.items()))
        pieces.append(w.field(0x5A, encoded))  # Span.events is field 11; Event: time (1), name (2), attributes (3)
    if enrichment.set_error_status is not None:
        status = b"\x18\x02" + w.field(0x12, enrichment.set_error_status.encode())  # code ERROR, message
        pieces.append(w.field(0x7A, status))  # Span.status is field 15; a second occurrence merges into the first
    return b"".join(pieces), group


@functools.lru_cache(maxsize=4096)
def _span_head(length: int) -> bytes:
    """Tag and length of a ``ScopeSpans.spans`` field: span sizes recur, so each is encoded once."""
    return b"\x12" + w.encode_varint(length)


def encode_request(items: Sequence[tuple[Any, ...]]) -> bytes:
    """Serialized ``ExportTraceServiceRequest`` with ``items`` (a ``WireSpan`` from ``adapt`` or the
    ``(bytes, group)`` of ``apply_to_otlp_span``) grouped by their resource and scope."""
    groups: dict[int, tuple[SpanGroup, list[bytes]]] = {}
    for item in items:
        group = item[1]
        entry = groups.get(id(group))
        if entry is None:
            entry = groups[id(group)] = (group, [])
        entry[1].append(item[0])
    varint = w.encode_varint
    out = bytearray()
    for group, spans in groups.values():
        scope = bytearray(group.scope_head)
        for encoded in spans:
            scope += _span_head(len(encoded))
            scope += encoded
        scope += group.scope_tail
        resource = group.resource_head + b"\x12" + varint(len(scope)) + bytes(scope) + group.resource_tail
        out += b"\x0a"
        out += varint(len(resource))
        out += resource
    return bytes(out)


_JSON_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId"))


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """Ids anywhere in an OTLP/JSON body (spans, links, exemplars, log records), walked without recursion:
    each object and array is visited once, so the cost is linear in the body."""
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _JSON_ID_KEYS and isinstance(value, str):
                    if value:
                        try:
                            node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                        except ValueError:
                            raise ValueError(f"{key} must be hex, got {value[:40]!r}") from None
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))


M = TypeVar("M", bound=Message)


def parse_json_message(body: bytes, message_type: type[M]) -> M:
    """OTLP/JSON for any signal: protobuf JSON mapping, except that trace and span ids are hex, not base64.

    Raises ``ValueError`` (with the reason) for anything that is not a valid request.
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    _hex_ids_to_base64(data)
    request = message_type()
    json_format.ParseDict(data, request, ignore_unknown_fields=True)
    return request


def parse_json_request(body: bytes) -> ExportTraceServiceRequest:
    """An OTLP/JSON traces request (``parse_json_message``)."""
    return parse_json_message(body, ExportTraceServiceRequest)


def readable_spans(request: ExportTraceServiceRequest) -> list[Any]:
    """SDK ``ReadableSpan``s for an OTLP request, for exporters that only take SDK spans (Azure Monitor)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    def context(trace_id: bytes, span_id: bytes, flags: int, trace_state: str, remote: bool) -> SpanContext:
        state = TraceState.from_header([trace_state]) if trace_state else None
        return SpanContext(int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"), is_remote=remote,
                           trace_flags=TraceFlags(flags & 0xFF), trace_state=state)

    out: list[Any] = []
    for rs in request.resource_spans:
        resource = Resource(decode_attributes(rs.resource.attributes), rs.schema_url or None)
        for ss in rs.scope_spans:
            scope = InstrumentationScope(ss.scope.name, ss.scope.version or None, ss.schema_url or None,
                                         decode_attributes(ss.scope.attributes) or None)
            for span in ss.spans:
                parent = None
                if span.parent_span_id:
                    parent = context(span.trace_id, span.parent_span_id, span.flags, "",
                                     bool(span.flags & _IS_REMOTE))
                out.append(ReadableSpan(
                    name=span.name,
                    context=context(span.trace_id, span.span_id, span.flags, span.trace_state, False),
                    parent=parent,
                    resource=resource,
                    attributes=decode_attributes(span.attributes),
                    events=[Event(e.name, decode_attributes(e.attributes), e.time_unix_nano) for e in span.events],
                    links=[Link(context(link.trace_id, link.span_id, link.flags, link.trace_state, False),
                                decode_attributes(link.attributes)) for link in span.links],
                    kind=SpanKind(span.kind - 1) if span.kind > 0 else SpanKind.INTERNAL,
                    status=Status(StatusCode(span.status.code), span.status.message or None),
                    start_time=span.start_time_unix_nano,
                    end_time=span.end_time_unix_nano,
                    instrumentation_scope=scope,
                ))
    return out
