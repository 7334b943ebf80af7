"""OTLP protobuf spans as the shared logic sees them, and back.

The collector's receivers decode ``ExportTraceServiceRequest`` messages; ``adapt`` turns
each valid span into a ``SpanData`` whose ``native`` is ``(proto span, SpanGroup)``.
``apply_to_otlp_span`` applies an ``Enrichment`` (removals in the proto span, additions as wire bytes), and
``encode_request`` re-assembles released spans, grouped by resource and scope again,
straight into protobuf wire format (spans held across requests come from many original
messages, and serialising each span once is cheaper than copying messages into a new one).
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from flowtel.spans import KIND_CONSUMER, KIND_INTERNAL, KIND_SERVER, Enrichment, SpanData

_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")


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


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


class OTLPEvent:
    """A span event shaped like ``SpanEvent``, whose attributes are decoded only if the logic reads them
    (it reads names and timestamps of every event, attributes of exception events only)."""

    __slots__ = ("_attributes", "_proto", "name", "timestamp")

    def __init__(self, proto: Any) -> None:
        self.name: str = proto.name
        self.timestamp: int = proto.time_unix_nano
        self._proto = proto
        self._attributes: dict[str, Any] | None = None

    @property
    def attributes(self) -> dict[str, Any]:
        if self._attributes is None:
            self._attributes = decode_attributes(self._proto.attributes)
        return self._attributes


class SpanGroup:
    """The resource and scope a span came with, pre-encoded for ``encode_request``."""

    __slots__ = ("resource", "resource_head", "resource_tail", "scope_head", "scope_name", "scope_tail")

    def __init__(self, resource_spans: Any, scope_spans: Any, resource: Mapping[str, Any]) -> None:
        self.resource = resource
        self.scope_name = scope_spans.scope.name
        self.resource_head = _field(0x0A, resource_spans.resource.SerializeToString())
        self.resource_tail = _field(0x1A, resource_spans.schema_url.encode()) if resource_spans.schema_url else b""
        self.scope_head = _field(0x0A, scope_spans.scope.SerializeToString())
        self.scope_tail = _field(0x1A, scope_spans.schema_url.encode()) if scope_spans.schema_url else b""


@dataclass(slots=True)
class Adapted:
    spans: list[SpanData]
    rejected: int = 0
    error_message: str = ""


def _invalid(trace_id: bytes, span_id: bytes, parent: bytes) -> str | None:
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        return "trace_id must be 16 bytes and not all zero"
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        return "span_id must be 8 bytes and not all zero"
    if parent and len(parent) != 8:
        return "parent_span_id must be empty or 8 bytes"
    return None


def adapt(request: ExportTraceServiceRequest) -> Adapted:
    """Every valid span as ``SpanData``; invalid ones are counted and named, OTLP partial-success style."""
    out: list[SpanData] = []
    rejected = 0
    reason = ""
    append = out.append
    from_bytes = int.from_bytes
    for rs in request.resource_spans:
        resource = decode_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            group = SpanGroup(rs, ss, resource)
            scope_name = group.scope_name
            for span in ss.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                problem = _invalid(trace_id, span_id, parent)
                if problem is not None:
                    rejected += 1
                    reason = reason or problem
                    continue
                kind = span.kind - 1 if span.kind > 0 else KIND_INTERNAL
                flags = span.flags
                if flags & _HAS_IS_REMOTE:
                    remote = bool(flags & _IS_REMOTE)
                else:  # senders that do not say: a server or consumer span's parent is in another process
                    remote = bool(parent) and kind in (KIND_SERVER, KIND_CONSUMER)
                status = span.status
                append(SpanData(
                    trace_id=from_bytes(trace_id, "big"),
                    span_id=from_bytes(span_id, "big"),
                    parent_span_id=from_bytes(parent, "big") if parent else 0,
                    parent_is_remote=remote,
                    name=span.name,
                    kind=kind,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status=status.code,
                    status_message=status.message,
                    attributes=decode_attributes(span.attributes),
                    events=[OTLPEvent(e) for e in span.events] if span.events else (),
                    scope_name=scope_name,
                    resource=resource,
                    native=(span, group),
                ))
    message = f"{rejected} span(s) rejected: {reason}" if rejected else ""
    return Adapted(out, rejected, message)


def _any_value(value: Any) -> bytes:
    """``AnyValue`` wire bytes for a Python attribute value (sequences become arrays, mappings kvlists)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(v)) for v in value))
    return _field(0x0A, str(value).encode())


def _key_value(key: str, value: Any) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, _any_value(value))


@functools.lru_cache(maxsize=8192)
def _attribute_field(key: str, value: Any) -> bytes:
    return _field(0x4A, _key_value(key, value))  # Span.attributes is field 9


def _attribute(key: str, value: Any) -> bytes:
    try:
        return _attribute_field(key, value)  # the same few keys and values recur: models, operations, counts
    except TypeError:  # unhashable (a mapping value)
        return _field(0x4A, _key_value(key, value))


def _delete(repeated: Any, indexes: list[int]) -> None:
    for i in reversed(indexes):
        del repeated[i]


def apply_to_otlp_span(data: SpanData, enrichment: Enrichment) -> tuple[ProtoSpan, SpanGroup, bytes]:
    """Removals edit the proto span; additions and the status become wire bytes appended to it when it is
    encoded (protobuf concatenates repeated fields and merges a repeated message field), which costs far
    less than building KeyValue messages."""
    span: ProtoSpan = data.native[0]
    removed = enrichment.removed_attributes
    if removed:
        if len(span.attributes) == len(data.attributes):  # no repeated keys: dict order is the wire order
            _delete(span.attributes, [i for i, key in enumerate(data.attributes) if key in removed])
        else:
            _delete(span.attributes, [i for i, kv in enumerate(span.attributes) if kv.key in removed])
    if enrichment.removed_events:
        names = enrichment.removed_events
        _delete(span.events, [i for i, event in enumerate(data.events) if event.name in names])
    extra = b"".join(_attribute(k, v) for k, v in enrichment.added.items())
    for event in enrichment.added_events:
        encoded = (b"\x09" + _FIXED64.pack(event.timestamp) + _field(0x12, event.name.encode())
                   + b"".join(_field(0x1A, _key_value(k, v)) for k, v in event.attributes.items()))
        extra += _field(0x5A, encoded)  # Span.events is field 11; Event: time fixed64 (1), name (2), attributes (3)
    if enrichment.set_error_status is not None:
        status = b"\x18\x02" + _field(0x12, enrichment.set_error_status.encode())  # code ERROR, message
        extra += _field(0x7A, status)  # Span.status is field 15; a second occurrence merges into the first
    return span, data.native[1], extra


def encode_request(items: Sequence[tuple[Any, ...]]) -> bytes:
    """Serialized ``ExportTraceServiceRequest`` with ``items`` (``(span, group)`` from ``adapt`` or
    ``(span, group, extra bytes)`` from ``apply_to_otlp_span``) grouped by their resource and scope."""
    groups: dict[int, tuple[SpanGroup, list[bytes]]] = {}
    for item in items:
        group = item[1]
        entry = groups.get(id(group))
        if entry is None:
            entry = groups[id(group)] = (group, [])
        encoded = item[0].SerializeToString()
        entry[1].append(encoded + item[2] if len(item) == 3 else encoded)
    out = bytearray()
    for group, spans in groups.values():
        scope = bytearray(group.scope_head)
        for encoded in spans:
            scope += b"\x12"
            scope += _varint(len(encoded))
            scope += encoded
        scope += group.scope_tail
        resource = group.resource_head + b"\x12" + _varint(len(scope)) + bytes(scope) + group.resource_tail
        out += b"\x0a"
        out += _varint(len(resource))
        out += resource
    return bytes(out)


_JSON_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    for key in _JSON_ID_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and value:
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    """``value`` as a JSON array of objects (absent or null is empty), else ``ValueError`` naming ``where``."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{where} must be an array of objects")
    return value


def parse_json_request(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: protobuf JSON mapping, except that trace and span ids are hex, not base64.

    Raises ``ValueError`` (with the reason) for anything that is not a valid request.
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    for rs in _objects(data.get("resourceSpans"), "resourceSpans"):
        for ss in _objects(rs.get("scopeSpans"), "resourceSpans[].scopeSpans"):
            for span in _objects(ss.get("spans"), "scopeSpans[].spans"):
                _hex_ids_to_base64(span)
                for link in _objects(span.get("links"), "spans[].links"):
                    _hex_ids_to_base64(link)
    request = ExportTraceServiceRequest()
    json_format.ParseDict(data, request, ignore_unknown_fields=True)
    return request


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
