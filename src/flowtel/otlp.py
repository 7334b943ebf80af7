"""OTLP protobuf spans as the shared logic sees them, and back.

The collector's receivers decode ``ExportTraceServiceRequest`` messages; ``adapt`` turns
each valid span into a ``SpanData`` whose ``native`` is ``(proto span, SpanGroup)``.
``apply_to_otlp_span`` writes an ``Enrichment`` into the proto span in place, and
``encode_request`` re-assembles released spans, grouped by resource and scope again,
straight into protobuf wire format (spans held across requests come from many original
messages, and serialising each span once is cheaper than copying messages into a new one).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from flowtel.spans import KIND_CONSUMER, KIND_INTERNAL, KIND_SERVER, Enrichment, SpanData, SpanEvent

_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_STATUS_ERROR = 2


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


def encode_value(target: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            kv = target.kvlist_value.values.add()
            kv.key = str(k)
            encode_value(kv.value, v)
    elif isinstance(value, (list, tuple)):
        array = target.array_value
        array.SetInParent()
        for v in value:
            encode_value(array.values.add(), v)
    else:
        target.string_value = str(value)


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


def _invalid(span: ProtoSpan) -> str | None:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
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
                problem = _invalid(span)
                if problem is not None:
                    rejected += 1
                    reason = reason or problem
                    continue
                kind = span.kind - 1 if span.kind > 0 else KIND_INTERNAL
                parent = span.parent_span_id
                flags = span.flags
                if flags & _HAS_IS_REMOTE:
                    remote = bool(flags & _IS_REMOTE)
                else:  # senders that do not say: a server or consumer span's parent is in another process
                    remote = bool(parent) and kind in (KIND_SERVER, KIND_CONSUMER)
                status = span.status
                append(SpanData(
                    trace_id=from_bytes(span.trace_id, "big"),
                    span_id=from_bytes(span.span_id, "big"),
                    parent_span_id=from_bytes(parent, "big") if parent else 0,
                    parent_is_remote=remote,
                    name=span.name,
                    kind=kind,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status=status.code,
                    status_message=status.message,
                    attributes=decode_attributes(span.attributes),
                    events=[SpanEvent(e.name, e.time_unix_nano, decode_attributes(e.attributes))
                            for e in span.events] if span.events else (),
                    scope_name=scope_name,
                    resource=resource,
                    native=(span, group),
                ))
    message = f"{rejected} span(s) rejected: {reason}" if rejected else ""
    return Adapted(out, rejected, message)


def apply_to_otlp_span(data: SpanData, enrichment: Enrichment) -> tuple[ProtoSpan, SpanGroup]:
    span: ProtoSpan = data.native[0]
    removed = enrichment.removed_attributes
    if removed:
        attributes = span.attributes
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key in removed:
                del attributes[i]
    if enrichment.added:
        attributes = span.attributes
        for key, value in enrichment.added.items():
            kv = attributes.add()
            kv.key = key
            encode_value(kv.value, value)
    if enrichment.removed_events:
        events = span.events
        for i in range(len(events) - 1, -1, -1):
            if events[i].name in enrichment.removed_events:
                del events[i]
    if enrichment.set_error_status is not None:
        span.status.code = _STATUS_ERROR
        span.status.message = enrichment.set_error_status
    return data.native  # type: ignore[no-any-return]


def encode_request(items: Sequence[tuple[ProtoSpan, SpanGroup]]) -> bytes:
    """Serialized ``ExportTraceServiceRequest`` with ``items`` grouped by their resource and scope."""
    groups: dict[int, tuple[SpanGroup, list[bytes]]] = {}
    for span, group in items:
        entry = groups.get(id(group))
        if entry is None:
            entry = groups[id(group)] = (group, [])
        entry[1].append(span.SerializeToString())
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
