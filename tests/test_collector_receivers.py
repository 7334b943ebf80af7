"""The collector's ``otlp`` receiver against the real collector process, over loopback.

Real OTLP clients (the ``opentelemetry-exporter-otlp`` span exporters, a grpcio stub) and
hand-made bad requests (``requests``, raw sockets, a raw gRPC channel) exercise what the
upstream receiver does: 400 / INVALID_ARGUMENT for malformed data, 415 for other content
types, 413 / RESOURCE_EXHAUSTED past the size limits (gzip bombs included), 401 /
UNAUTHENTICATED without the bearer token, 503 / UNAVAILABLE with a retry delay under
backpressure, TLS and client certificates, and OTLP partial success for invalid spans.

After every bad request a good one must still go through, the downstream backend must
get exactly the good spans, and the collector's self-metrics must have moved by exactly
the refusal (reason included) and the accepted spans: the bad request costs nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowtel._wire import encode_varint

from collector_proc import CollectorProcess
from conftest import scrape
from otlp_sink import OTLPSink
from tls_certs import self_signed

MIB = 1 << 20
LIMIT = 1 * MIB  # max_request_body_size and max_recv_msg_size_mib below
TOKEN = "s3cret-t0ken"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ACCEPTED = "otelcol_receiver_accepted_spans_total"
REFUSED_SPANS = "otelcol_receiver_refused_spans_total"
REFUSED_REQUESTS = "flowtel_receiver_refused_requests_total"

MAIN_CONFIG = """
extensions:
  bearertokenauth: {token: "%(token)s"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 1}
      http: {endpoint: "127.0.0.1:0", max_request_body_size: %(limit)d}
  otlp/auth:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", auth: {authenticator: bearertokenauth}}
      http: {endpoint: "127.0.0.1:0", auth: {authenticator: bearertokenauth}}
processors:
  batch: {timeout: 20ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  extensions: [bearertokenauth]
  pipelines:
    traces: {receivers: [otlp, otlp/auth], processors: [batch], exporters: [prometheus, otlp/sink]}
"""

# traces/queue: spans wait in the intake queue until 8 are queued (the batch timeout never fires), and
# more than 10 queued spans is "full"; traces/memory: a memory limit below any Python process's RSS.
BACKPRESSURE_CONFIG = """
receivers:
  otlp/queue: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
  otlp/memory: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel: {max_queue_size: 10}
  batch: {timeout: 1h, send_batch_size: 8}
  memory_limiter: {limit_mib: 1, check_interval: 2s}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces/queue: {receivers: [otlp/queue], processors: [flowtel, batch], exporters: [prometheus, otlp/sink]}
    traces/memory: {receivers: [otlp/memory], processors: [memory_limiter], exporters: [prometheus]}
"""

TLS_CONFIG = """
receivers:
  otlp/tls:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", tls: {cert_file: "%(cert)s", key_file: "%(key)s"}}
      http: {endpoint: "127.0.0.1:0", tls: {cert_file: "%(cert)s", key_file: "%(key)s"}}
  otlp/mtls:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", tls: {cert_file: "%(cert)s", key_file: "%(key)s", client_ca_file: "%(ca)s"}}
      http: {endpoint: "127.0.0.1:0", tls: {cert_file: "%(cert)s", key_file: "%(key)s", client_ca_file: "%(ca)s"}}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp/tls, otlp/mtls], exporters: [prometheus]}
"""


# --- requests --------------------------------------------------------------------------------------------------


def new_id(size: int) -> bytes:
    return b"\x01" + os.urandom(size - 1)  # never all zero


def spans_request(n: int, service: str = "receiver-tests") -> tuple[ExportTraceServiceRequest, set[bytes]]:
    """A request with ``n`` valid root spans of one new trace, and their span ids."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attribute = rs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    ss.scope.name = "receiver-tests"
    trace_id = new_id(16)
    for i in range(n):
        span = ss.spans.add()
        span.trace_id, span.span_id, span.name = trace_id, new_id(8), f"span-{i}"
        span.kind = 2
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
    return request, {span.span_id for span in ss.spans}


def padded(request: ExportTraceServiceRequest, total: int) -> bytes:
    """``request`` serialized plus an unknown field (number 15) of zeros, exactly ``total`` bytes: still valid."""
    payload = request.SerializeToString()
    room = total - len(payload) - 1  # one tag byte, 0x7a = field 15, length-delimited
    for width in range(1, 6):
        size = room - width
        if size >= 0 and len(encode_varint(size)) == width:
            out = payload + b"\x7a" + encode_varint(size) + bytes(size)
            assert len(out) == total
            return out
    raise AssertionError(total)


def gzip_bytes(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def json_span(trace_id: str, span_id: str, name: str = "json-span") -> dict[str, Any]:
    return {"traceId": trace_id, "spanId": span_id, "name": name, "kind": 2,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
            "attributes": [{"key": "http.route", "value": {"stringValue": "/chat"}}]}


def json_body(*spans: dict[str, Any]) -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
        "scopeSpans": [{"scope": {"name": "json"}, "spans": list(spans)}]}]}).encode()


def sdk_spans(n: int, service: str) -> list[Any]:
    """``n`` finished SDK spans (a root and its children) for the real OTLP exporters to send."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("receiver-tests")
    with tracer.start_as_current_span("root"):
        for i in range(n - 1):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    provider.shutdown()
    spans = list(memory.get_finished_spans())
    assert len(spans) == n
    return spans


def export_with(exporter: Any, spans: list[Any]) -> set[bytes]:
    """Send ``spans`` with a real OTLP exporter, require success, shut it down; the span ids sent."""
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    return {s.context.span_id.to_bytes(8, "big") for s in spans}


def post(url: str, body: bytes, content_type: str | None = PROTOBUF, **headers: str) -> requests.Response:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return requests.post(url, data=body, headers={k.replace("_", "-"): v for k, v in headers.items()}, timeout=30)


def rpc_status(response: requests.Response) -> status_pb2.Status:
    """The ``google.rpc.Status`` an OTLP/HTTP error carries, in the request's encoding."""
    content_type = response.headers["Content-Type"]
    if content_type == PROTOBUF:
        return status_pb2.Status.FromString(response.content)
    assert content_type == JSON, content_type
    return json_format.Parse(response.text, status_pb2.Status())


def raw_http(base_url: str, data: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is and read one answer: its head, then Content-Length bytes (the server may keep the
    connection open) or up to the close; bounded by a timeout."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"]) if "content-length" in headers else None
        while (length is None or len(body) < length) and (chunk := sock.recv(65536)):
            body += chunk
    return int(lines[0].split()[1]), headers, body


def raw_export(channel: grpc.Channel) -> Any:
    """The Export method with no (de)serializer: the bytes go on the wire as given."""
    return channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --- collectors ------------------------------------------------------------------------------------------------


Key = tuple[str, tuple[tuple[str, str], ...]]


def key(name: str, transport: str, reason: str | None = None, receiver: str = "otlp") -> Key:
    labels = {"receiver": receiver, "transport": transport, **({"reason": reason} if reason else {})}
    return name, tuple(sorted(labels.items()))


def accepted(transport: str, receiver: str = "otlp") -> Key:
    return key(ACCEPTED, transport, receiver=receiver)


def refused(transport: str, reason: str, receiver: str = "otlp") -> Key:
    """The request counter of a refusal."""
    return key(REFUSED_REQUESTS, transport, reason, receiver)


def refused_spans(transport: str, reason: str, receiver: str = "otlp") -> Key:
    return key(REFUSED_SPANS, transport, reason, receiver)


@dataclass
class Snapshot:
    counters: dict[Key, float]
    forwarded: int
    log_lines: int


@dataclass
class Collector:
    proc: CollectorProcess
    sink: OTLPSink | None

    def http_url(self, receiver: str = "otlp") -> str:
        return self.proc.http[receiver]

    def traces_url(self, receiver: str = "otlp") -> str:
        return self.proc.http[receiver] + "/v1/traces"

    def grpc_target(self, receiver: str = "otlp") -> str:
        return self.proc.grpc[receiver]

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def counters(self) -> dict[Key, float]:
        names = (ACCEPTED, REFUSED_SPANS, REFUSED_REQUESTS)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for s in scrape(self.proc.prometheus["prometheus"]).samples if s.name in names}

    def forwarded(self) -> dict[bytes, Any]:
        assert self.sink is not None
        return {span.span_id: span for span, _ in self.sink.spans()}

    def snapshot(self) -> Snapshot:
        return Snapshot(self.counters(), len(self.sink.spans()) if self.sink else 0, len(self.proc.lines))

    def delta(self, before: Snapshot) -> dict[Key, float]:
        after = self.counters()
        return {k: v - before.counters.get(k, 0) for k, v in after.items() if v != before.counters.get(k, 0)}

    def wait_forwarded(self, ids: set[bytes], before: Snapshot, earlier: int = 0) -> dict[bytes, Any]:
        """Wait until ``ids`` reached the backend; then exactly those (and ``earlier`` more the caller
        already checked) arrived since ``before``."""
        assert self.sink is not None
        self.proc.wait_for(lambda: ids <= set(self.forwarded()), timeout=20)
        assert len(self.sink.spans()) - before.forwarded == len(ids) + earlier
        return self.forwarded()

    def send_good(self, transport: str, n: int = 2, receiver: str = "otlp",
                  metadata: tuple[tuple[str, str], ...] = (), **headers: str) -> set[bytes]:
        request, ids = spans_request(n)
        if transport == "http":
            response = post(self.traces_url(receiver), request.SerializeToString(), **headers)
            assert response.status_code == 200, response.content
            answer = ExportTraceServiceResponse.FromString(response.content)
        else:
            with grpc.insecure_channel(self.grpc_target(receiver)) as channel:
                answer = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, metadata=metadata,
                                                                                  timeout=10)
        assert not answer.HasField("partial_success"), answer
        return ids

    def still_serving(self, before: Snapshot, transport: str, expected: dict[Key, float], earlier: int = 0) -> None:
        """A good request right after is accepted and forwarded, and the counters moved by exactly
        ``expected`` plus its spans: nothing else was accepted, refused or forwarded (but ``earlier``
        spans the test already saw forwarded)."""
        ids = self.send_good(transport)
        if self.sink is not None:
            self.wait_forwarded(ids, before, earlier)
        want = dict(expected)
        want[accepted(transport)] = want.get(accepted(transport), 0) + len(ids)
        assert self.delta(before) == want
        self.assert_healthy(before.log_lines)

    def assert_healthy(self, since_line: int = 0) -> None:
        """Running, and nothing since ``since_line`` left a traceback in its log (an unhandled error)."""
        assert self.proc.proc is not None and self.proc.proc.poll() is None
        new = "".join(self.proc.lines[since_line:])
        assert "Traceback" not in new, new


def _started(config: str, tmp_path: Path, sink: OTLPSink | None) -> Iterator[Collector]:
    proc = CollectorProcess(config, tmp_path).start()
    try:
        yield Collector(proc, sink)
    finally:
        assert proc.stop() == 0, proc.log


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    with OTLPSink() as sink:
        config = MAIN_CONFIG % {"token": TOKEN, "limit": LIMIT, "sink": sink.endpoint}
        yield from _started(config, tmp_path_factory.mktemp("main"), sink)


@pytest.fixture(scope="module")
def backpressure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    with OTLPSink() as sink:
        yield from _started(BACKPRESSURE_CONFIG % {"sink": sink.endpoint}, tmp_path_factory.mktemp("bp"), sink)


@pytest.fixture(autouse=True)
def _collectors_healthy_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test, each collector it used still runs and has logged no traceback."""
    used = [request.getfixturevalue(name) for name in ("main", "backpressure", "tls") if name in request.fixturenames]
    lines = [len(collector.proc.lines) for collector in used]
    yield
    for collector, since in zip(used, lines, strict=True):
        collector.assert_healthy(since)


# --- happy paths -----------------------------------------------------------------------------------------------


def test_real_otlp_exporters_grpc_and_http(main: Collector) -> None:
    before = main.snapshot()
    sent: dict[bytes, Any] = {}
    for transport in ("grpc", "http"):
        spans = sdk_spans(5, f"exporter-{transport}")
        if transport == "grpc":
            exporter: Any = GRPCSpanExporter(endpoint=main.grpc_target(), insecure=True, timeout=10,
                                             compression=grpc.Compression.Gzip)
        else:
            exporter = HTTPSpanExporter(endpoint=main.traces_url(), timeout=10, compression=HTTPCompression.Gzip)
        try:
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        sent.update({s.context.span_id.to_bytes(8, "big"): s for s in spans})
    forwarded = main.wait_forwarded(set(sent), before)
    for span_id, reference in sent.items():
        span = forwarded[span_id]
        assert span.trace_id == reference.context.trace_id.to_bytes(16, "big")
        assert span.name == reference.name
        parent = reference.parent.span_id.to_bytes(8, "big") if reference.parent else b""
        assert span.parent_span_id == parent
    by_service = {}
    for span, resource in main.sink.spans():  # type: ignore[union-attr]
        if span.span_id in sent:
            by_service.setdefault(resource["service.name"].string_value, set()).add(span.span_id)
    assert {k: len(v) for k, v in by_service.items()} == {"exporter-grpc": 5, "exporter-http": 5}
    assert main.delta(before) == {accepted("grpc"): 5, accepted("http"): 5}


def test_json_with_hex_ids(main: Collector) -> None:
    before = main.snapshot()
    trace_id, span_ids = new_id(16).hex(), [new_id(8).hex() for _ in range(3)]
    # The spec's hex ids; mixed case is still hex. A charset parameter on the content type is fine.
    body = json_body(*(json_span(trace_id, sid.upper() if i == 0 else sid, f"json-{i}")
                       for i, sid in enumerate(span_ids)))
    response = post(main.traces_url(), body, "application/json; charset=utf-8")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == JSON
    answer = json_format.Parse(response.text, ExportTraceServiceResponse())
    assert not answer.HasField("partial_success")
    forwarded = main.wait_forwarded({bytes.fromhex(s) for s in span_ids}, before)
    for i, sid in enumerate(span_ids):
        span = forwarded[bytes.fromhex(sid)]
        assert span.trace_id == bytes.fromhex(trace_id)
        assert span.name == f"json-{i}"
        assert span.attributes[0].value.string_value == "/chat"
    assert main.delta(before) == {accepted("http"): 3}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "multi-member gzip"])
def test_compressed_http_bodies(main: Collector, encoding: str) -> None:
    before = main.snapshot()
    first, ids = spans_request(2)
    raw = first.SerializeToString()
    if encoding == "gzip":
        body = gzip_bytes(raw)
    elif encoding == "deflate":
        body = zlib.compress(raw)
    else:  # two gzip members decode as their concatenation: two protobuf messages concatenated merge
        second, more = spans_request(3)
        body, ids = gzip_bytes(raw) + gzip_bytes(second.SerializeToString()), ids | more
        encoding = "gzip"
    response = post(main.traces_url(), body, Content_Encoding=encoding)
    assert response.status_code == 200, response.content
    main.wait_forwarded(ids, before)
    assert main.delta(before) == {accepted("http"): len(ids)}


# --- malformed -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x0a", b"\x0a\x80\x80\x80\x80\x80\x80"],
                         ids=["bad-tag", "truncated", "bad-varint"])
def test_malformed_protobuf_is_400_with_status(main: Collector, body: bytes) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), body)
    assert response.status_code == 400
    status = rpc_status(response)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "malformed" in status.message
    main.still_serving(before, "http", {refused("http", "malformed"): 1})


MALFORMED_JSON = {
    "not-json": b"this is not json",
    "invalid-utf8": b'{"resourceSpans": "\xff\xfe"}',
    "array": b"[]",
    "resource-spans-number": b'{"resourceSpans": 5}',
    "resource-spans-string": b'{"resourceSpans": "abc"}',
    "resource-span-number": b'{"resourceSpans": [5]}',
    "scope-spans-object": b'{"resourceSpans": [{"scopeSpans": {"spans": []}}]}',
    "spans-string": b'{"resourceSpans": [{"scopeSpans": [{"spans": "abc"}]}]}',
    "links-number": json_body({**json_span("01" * 16, "02" * 8), "links": 7}),
    "trace-id-not-hex": json_body(json_span("zz" * 16, "02" * 8)),
    "span-id-odd-length": json_body(json_span("01" * 16, "123")),
    "trace-id-number": b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
    "deeply-nested": b"[" * 100_000,
}


@pytest.mark.parametrize("body", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_is_400_with_json_status(main: Collector, body: bytes) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), body, JSON)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == JSON
    status = rpc_status(response)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message
    main.still_serving(before, "http", {refused("http", "malformed"): 1})


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x0a"], ids=["bad-tag", "truncated"])
def test_grpc_garbage_is_invalid_argument(main: Collector, body: bytes) -> None:
    before = main.snapshot()
    with grpc.insecure_channel(main.grpc_target()) as channel, pytest.raises(grpc.RpcError) as info:
        raw_export(channel)(body, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ExportTraceServiceRequest" in info.value.details()
    main.still_serving(before, "grpc", {refused("grpc", "malformed"): 1})


def _with_group_field() -> bytes:
    """A valid request whose ResourceSpans also holds a deprecated group field (101): upb parses it,
    flowtel's wire reader does not read groups."""
    request, _ = spans_request(1)
    group = b"\xab\x06\xac\x06"  # field 101, start group / end group
    resource_spans = group + request.resource_spans[0].SerializeToString()
    return b"\x0a" + encode_varint(len(resource_spans)) + resource_spans


def test_group_field_is_400_on_http(main: Collector) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), _with_group_field())
    assert response.status_code == 400
    status = rpc_status(response)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "unreadable ExportTraceServiceRequest: unsupported wire type 3"
    main.still_serving(before, "http", {refused("http", "malformed"): 1})


def test_group_field_is_invalid_argument_on_grpc(main: Collector) -> None:
    before = main.snapshot()
    with grpc.insecure_channel(main.grpc_target()) as channel, pytest.raises(grpc.RpcError) as info:
        raw_export(channel)(_with_group_field(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "unreadable ExportTraceServiceRequest: unsupported wire type 3"
    main.still_serving(before, "grpc", {refused("grpc", "malformed"): 1})


# --- wrong requests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "application/protobuf", None])
def test_other_content_type_is_415(main: Collector, content_type: str | None) -> None:
    before = main.snapshot()
    request, _ = spans_request(1)
    response = post(main.traces_url(), request.SerializeToString(), content_type)
    assert response.status_code == 415
    assert PROTOBUF in response.text and JSON in response.text
    main.still_serving(before, "http", {refused("http", "content_type"): 1})


def test_get_is_405(main: Collector) -> None:
    before = main.snapshot()
    response = requests.get(main.traces_url(), timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    main.still_serving(before, "http", {refused("http", "method"): 1})


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/logs", "/", "/v1/traces/"])
def test_other_paths_are_404(main: Collector, path: str) -> None:
    before = main.snapshot()
    request, _ = spans_request(1)
    response = post(main.http_url() + path, request.SerializeToString())
    assert response.status_code == 404
    assert rpc_status(response).code == grpc.StatusCode.NOT_FOUND.value[0]
    main.still_serving(before, "http", {refused("http", "not_found"): 1})


def test_missing_content_length_is_an_empty_body(main: Collector) -> None:
    # HTTP/1.1 (RFC 9112 6.3): a request with neither Content-Length nor Transfer-Encoding has no body. An empty
    # protobuf body is an empty request, accepted as upstream accepts it (it used to be a 411).
    before = main.snapshot()
    status, headers, body = raw_http(main.http_url(), b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/x-protobuf\r\n\r\n")
    assert status == 200
    assert headers["content-type"] == PROTOBUF
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    main.still_serving(before, "http", {accepted("http"): 0})


def test_body_shorter_than_content_length_is_400(main: Collector) -> None:
    before = main.snapshot()
    status, _, body = raw_http(main.http_url(), b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n\x0a\x00",
                               half_close=True)
    assert status == 400
    assert "shorter" in status_pb2.Status.FromString(body).message
    main.still_serving(before, "http", {refused("http", "malformed"): 1})


def test_stalled_client_does_not_block_others(main: Collector) -> None:
    before = main.snapshot()
    parts = urlsplit(main.http_url())
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        b"Content-Length: 1000\r\n\r\n\x0a")
        main.still_serving(before, "http", {})
        main.still_serving(main.snapshot(), "grpc", {})
        closing = main.snapshot()
    # Closing the stalled connection ends its request as a short body; wait for that to be counted so
    # it cannot land in the next test's counters.
    main.proc.wait_for(lambda: main.delta(closing) == {refused("http", "malformed"): 1})


# --- size limits -----------------------------------------------------------------------------------------------


def test_http_size_limit_is_exact(main: Collector) -> None:
    before = main.snapshot()
    request, ids = spans_request(1)
    response = post(main.traces_url(), padded(request, LIMIT))
    assert response.status_code == 200, response.content
    too_big, _ = spans_request(1)
    response = post(main.traces_url(), padded(too_big, LIMIT + 1))
    assert response.status_code == 413
    assert rpc_status(response).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    main.wait_forwarded(ids, before)
    main.still_serving(before, "http", {accepted("http"): 1, refused("http", "too_large"): 1}, earlier=1)


def test_huge_declared_body_is_413_without_reading_it(main: Collector) -> None:
    before = main.snapshot()
    # 10 GiB declared, none sent: an answer (and the connection closed) proves the body was never awaited.
    status, headers, body = raw_http(main.http_url(), b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/x-protobuf\r\nContent-Length: 10737418240\r\n\r\n")
    assert status == 413
    assert headers["content-type"] == PROTOBUF
    assert "10737418240" in status_pb2.Status.FromString(body).message
    main.still_serving(before, "http", {refused("http", "too_large"): 1})


def test_oversize_body_from_a_real_client_gets_413(main: Collector) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), bytes(3 * LIMIT))
    assert response.status_code == 413
    main.still_serving(before, "http", {refused("http", "too_large"): 1})


def test_gzip_size_limit_applies_to_decompressed_size(main: Collector) -> None:
    before = main.snapshot()
    request, ids = spans_request(1)
    response = post(main.traces_url(), gzip_bytes(padded(request, LIMIT)), Content_Encoding="gzip")
    assert response.status_code == 200, response.content
    over, _ = spans_request(1)
    body = gzip_bytes(padded(over, LIMIT + 1))
    assert len(body) < LIMIT // 100
    response = post(main.traces_url(), body, Content_Encoding="gzip")
    assert response.status_code == 413
    main.wait_forwarded(ids, before)
    main.still_serving(before, "http", {accepted("http"): 1, refused("http", "too_large"): 1}, earlier=1)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A valid request (an unknown field of zeros) of 200 MiB, gzip-compressed to a fraction of a MiB."""
    size = 200 * MIB
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b"\x7a" + encode_varint(size))]
    chunk = bytes(MIB)
    parts.extend(packer.compress(chunk) for _ in range(size // MIB))
    parts.append(packer.flush())
    return b"".join(parts)


def test_gzip_bomb_is_413_and_costs_no_memory(main: Collector, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < LIMIT
    before = main.snapshot()
    peak_before = peak_rss_kib(main.pid)
    for _ in range(3):
        response = post(main.traces_url(), gzip_bomb, Content_Encoding="gzip")
        assert response.status_code == 413
        assert "decompressed" in rpc_status(response).message
    # A 200 MiB bomb, three times: the collector's peak resident memory grew by far less than one.
    assert peak_rss_kib(main.pid) - peak_before < 32 * 1024
    main.still_serving(before, "http", {refused("http", "too_large"): 3})


def _corrupt_crc() -> bytes:
    body = bytearray(gzip_bytes(spans_request(1)[0].SerializeToString()))
    body[-5] ^= 0xFF  # inside the CRC32 of the trailer
    return bytes(body)


BAD_GZIP = {
    "not-gzip": b"this is not gzip at all",
    "bad-crc": _corrupt_crc(),
    # The whole deflate stream but no trailer: every byte of the message inflates, yet the body is cut short.
    "missing-trailer": gzip_bytes(spans_request(1)[0].SerializeToString())[:-8],
    "cut-in-half": gzip_bytes(bytes(10_000))[:20],
    "garbage-after-member": gzip_bytes(spans_request(1)[0].SerializeToString()) + b"garbage!",
}


@pytest.mark.parametrize("body", BAD_GZIP.values(), ids=BAD_GZIP.keys())
def test_corrupt_gzip_is_400(main: Collector, body: bytes) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), body, Content_Encoding="gzip")
    assert response.status_code == 400, response.content
    assert rpc_status(response).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    main.still_serving(before, "http", {refused("http", "malformed"): 1})


@pytest.mark.parametrize("encoding", ["br", "zstd", "snappy", "gzip, br"])
def test_unsupported_content_encoding_is_400(main: Collector, encoding: str) -> None:
    before = main.snapshot()
    response = post(main.traces_url(), spans_request(1)[0].SerializeToString(), Content_Encoding=encoding)
    assert response.status_code == 400
    assert "unsupported Content-Encoding" in rpc_status(response).message
    main.still_serving(before, "http", {refused("http", "unsupported_encoding"): 1})


def test_grpc_size_limit_is_exact(main: Collector) -> None:
    # grpcio rejects an oversize message in its core, before the handler: like upstream's grpc-go, the
    # refusal is not in the receiver's counters; the client is told RESOURCE_EXHAUSTED.
    before = main.snapshot()
    request, ids = spans_request(1)
    with grpc.insecure_channel(main.grpc_target()) as channel:
        export = raw_export(channel)
        ExportTraceServiceResponse.FromString(export(padded(request, LIMIT), timeout=10))
        with pytest.raises(grpc.RpcError) as info:
            export(padded(spans_request(1)[0], LIMIT + 1), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    main.wait_forwarded(ids, before)
    main.still_serving(before, "grpc", {accepted("grpc"): 1}, earlier=1)


def test_grpc_gzip_limit_applies_to_decompressed_size(main: Collector) -> None:
    before = main.snapshot()
    peak_before = peak_rss_kib(main.pid)
    request, ids = spans_request(1)
    with grpc.insecure_channel(main.grpc_target()) as channel:
        export = raw_export(channel)
        ExportTraceServiceResponse.FromString(export(padded(request, LIMIT), timeout=10,
                                                     compression=grpc.Compression.Gzip))
        # 64 MiB on the wire as ~64 KiB of gzip: far below the limit compressed, far above it inflated.
        bomb = padded(spans_request(1)[0], 64 * MIB)
        with pytest.raises(grpc.RpcError) as info:
            export(bomb, timeout=20, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert peak_rss_kib(main.pid) - peak_before < 32 * 1024
    main.wait_forwarded(ids, before)
    main.still_serving(before, "grpc", {accepted("grpc"): 1}, earlier=1)


# --- authentication --------------------------------------------------------------------------------------------


def test_http_bearer_token(main: Collector) -> None:
    before = main.snapshot()
    url = main.traces_url("otlp/auth")
    body = spans_request(1)[0].SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}):
        response = post(url, body, **headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert rpc_status(response).code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # The token is checked before anything else is looked at: a bad token with a bomb is still just a 401.
    response = post(url, bytes(10), "text/plain", Authorization="Bearer wrong")
    assert response.status_code == 401
    ids = main.send_good("http", receiver="otlp/auth", Authorization=f"Bearer {TOKEN}")
    exporter = HTTPSpanExporter(endpoint=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    ids |= export_with(exporter, sdk_spans(3, "auth-http"))
    main.wait_forwarded(ids, before)
    assert main.delta(before) == {refused("http", "unauthenticated", "otlp/auth"): 6,
                                  accepted("http", "otlp/auth"): 5}


def test_grpc_bearer_token(main: Collector) -> None:
    before = main.snapshot()
    request, _ = spans_request(1)
    with grpc.insecure_channel(main.grpc_target("otlp/auth")) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Export(request, metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Garbage with a wrong token: refused for the token, not parsed.
        with pytest.raises(grpc.RpcError) as info:
            raw_export(channel)(b"\xff\xff", metadata=(("authorization", "Bearer wrong"),), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ids = main.send_good("grpc", receiver="otlp/auth", metadata=(("authorization", f"Bearer {TOKEN}"),))
    exporter = GRPCSpanExporter(endpoint=main.grpc_target("otlp/auth"), insecure=True, timeout=10,
                                headers={"authorization": f"Bearer {TOKEN}"})
    ids |= export_with(exporter, sdk_spans(3, "auth-grpc"))
    main.wait_forwarded(ids, before)
    assert main.delta(before) == {refused("grpc", "unauthenticated", "otlp/auth"): 4,
                                  accepted("grpc", "otlp/auth"): 5}


# --- partial success -------------------------------------------------------------------------------------------


def _mixed_request() -> tuple[ExportTraceServiceRequest, set[bytes], set[bytes]]:
    """Three valid spans and five invalid ones, each invalid a different way."""
    request, valid = spans_request(3)
    spans = request.resource_spans[0].scope_spans[0].spans
    trace_id = spans[0].trace_id
    bad = [(bytes(16), new_id(8), b""), (trace_id, new_id(5), b""), (new_id(15), new_id(8), b""),
           (trace_id, bytes(8), b""), (trace_id, new_id(8), new_id(3))]
    invalid = set()
    for i, (tid, sid, parent) in enumerate(bad):
        span = spans.add()
        span.trace_id, span.span_id, span.parent_span_id, span.name = tid, sid, parent, f"bad-{i}"
        invalid.add(sid)
    return request, valid, invalid


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
def test_invalid_ids_are_partial_success(main: Collector, transport: str) -> None:
    before = main.snapshot()
    request, valid, invalid = _mixed_request()
    if transport == "grpc":
        with grpc.insecure_channel(main.grpc_target()) as channel:
            answer = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    elif transport == "http-protobuf":
        response = post(main.traces_url(), request.SerializeToString())
        assert response.status_code == 200
        answer = ExportTraceServiceResponse.FromString(response.content)
    else:
        data = json_format.MessageToDict(request)
        for span in data["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON ids are hex
            for field in ("traceId", "spanId", "parentSpanId"):
                if field in span:
                    span[field] = base64.b64decode(span[field]).hex()
        response = post(main.traces_url(), json.dumps(data).encode(), JSON)
        assert response.status_code == 200, response.text
        assert json.loads(response.text)["partialSuccess"]["rejectedSpans"] == "5"  # int64 as a JSON string
        answer = json_format.Parse(response.text, ExportTraceServiceResponse())
    assert answer.partial_success.rejected_spans == len(invalid) == 5
    assert "rejected" in answer.partial_success.error_message
    forwarded = main.wait_forwarded(valid, before)
    assert not invalid & set(forwarded)
    wire = "grpc" if transport == "grpc" else "http"
    assert main.delta(before) == {accepted(wire): 3, refused_spans(wire, "invalid_span"): 5}


def test_only_invalid_spans(main: Collector) -> None:
    before = main.snapshot()
    request, _ = spans_request(2)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.trace_id = bytes(16)
    response = post(main.traces_url(), request.SerializeToString())
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 2
    main.still_serving(before, "http", {refused_spans("http", "invalid_span"): 2})


def test_empty_request_is_accepted(main: Collector) -> None:
    before = main.snapshot()
    for body, content_type in ((b"", PROTOBUF), (b"{}", JSON)):
        response = post(main.traces_url(), body, content_type)
        assert response.status_code == 200
    with grpc.insecure_channel(main.grpc_target()) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(ExportTraceServiceRequest(), timeout=10)
    main.still_serving(before, "http", {})


# --- backpressure ----------------------------------------------------------------------------------------------


def _retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo:
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, error.trailing_metadata()
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    info = error_details_pb2.RetryInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info)
    return info


def test_full_queue_is_503_and_unavailable_then_recovers(backpressure: Collector) -> None:
    bp = backpressure
    before = bp.snapshot()
    first, first_ids = spans_request(5)  # queued: 5 of 10
    assert post(bp.traces_url("otlp/queue"), first.SerializeToString()).status_code == 200
    over, over_ids = spans_request(6)  # 5 + 6 > 10
    response = post(bp.traces_url("otlp/queue"), over.SerializeToString())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    status = rpc_status(response)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "queue is full" in status.message
    trace_id = new_id(16).hex()
    response = post(bp.traces_url("otlp/queue"), json_body(*(json_span(trace_id, new_id(8).hex()) for _ in range(6))),
                    JSON)
    assert response.status_code == 503
    assert rpc_status(response).code == grpc.StatusCode.UNAVAILABLE.value[0]
    with grpc.insecure_channel(bp.grpc_target("otlp/queue")) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(over, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _retry_info(info.value).retry_delay.ToNanoseconds() == 1_000_000_000
        # 3 more fit (8 of 10), and 8 queued wakes the worker: the queue drains and the collector recovers.
        last, last_ids = spans_request(3)
        assert not stub.Export(last, timeout=10).HasField("partial_success")
    forwarded = bp.wait_forwarded(first_ids | last_ids, before)
    assert not over_ids & set(forwarded)
    assert bp.delta(before) == {
        accepted("http", "otlp/queue"): 5, accepted("grpc", "otlp/queue"): 3,
        refused_spans("http", "queue_full", "otlp/queue"): 12, refused_spans("grpc", "queue_full", "otlp/queue"): 6,
        refused("http", "queue_full", "otlp/queue"): 2, refused("grpc", "queue_full", "otlp/queue"): 1,
    }


def test_memory_limit_is_503_and_unavailable(backpressure: Collector) -> None:
    bp = backpressure
    before = bp.snapshot()
    request, _ = spans_request(4)
    response = post(bp.traces_url("otlp/memory"), request.SerializeToString())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"  # the limiter's check_interval
    assert "memory limit" in rpc_status(response).message
    with grpc.insecure_channel(bp.grpc_target("otlp/memory")) as channel, pytest.raises(grpc.RpcError) as info:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _retry_info(info.value).retry_delay.ToNanoseconds() == 2_000_000_000
    # A real exporter is told to retry, not that the data is bad: it keeps trying until its timeout.
    exporter = HTTPSpanExporter(endpoint=bp.traces_url("otlp/memory"), timeout=1)
    try:
        assert exporter.export(sdk_spans(2, "memory")) == SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    delta = bp.delta(before)
    http_attempts = delta.pop(refused("http", "memory_limit", "otlp/memory"))
    assert http_attempts >= 2  # ours and at least one from the exporter
    assert delta == {refused_spans("http", "memory_limit", "otlp/memory"): 4 + 2 * (http_attempts - 1),
                     refused_spans("grpc", "memory_limit", "otlp/memory"): 4,
                     refused("grpc", "memory_limit", "otlp/memory"): 1}


def test_memory_limit_refuses_a_large_body_before_reading_it(backpressure: Collector) -> None:
    bp = backpressure
    before = bp.snapshot()
    # 10 MiB announced, none sent: the 503 comes on the head alone (the body is never awaited), counted as a
    # refused request; its spans were never read, so none are counted. Small bodies are read first (above).
    status, headers, body = raw_http(bp.http_url("otlp/memory"), b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/x-protobuf\r\nContent-Length: 10485760\r\n\r\n")
    assert status == 503
    assert headers["retry-after"] == "2"
    assert "memory limit" in status_pb2.Status.FromString(body).message
    assert bp.delta(before) == {refused("http", "memory_limit", "otlp/memory"): 1}


# --- TLS -------------------------------------------------------------------------------------------------------


@dataclass
class TLSFiles:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    return TLSFiles(*self_signed(directory, "server"), *self_signed(directory, "client"))


@pytest.fixture(scope="module")
def tls(tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    config = TLS_CONFIG % {"cert": tls_files.server_cert, "key": tls_files.server_key, "ca": tls_files.client_cert}
    yield from _started(config, tmp_path_factory.mktemp("tls-collector"), None)


def _grpc_credentials(files: TLSFiles, client_cert: bool) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=files.server_cert.read_bytes())
    return grpc.ssl_channel_credentials(root_certificates=files.server_cert.read_bytes(),
                                        private_key=files.client_key.read_bytes(),
                                        certificate_chain=files.client_cert.read_bytes())


def _session() -> requests.Session:
    """For the HTTP exporter over TLS: requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` override a
    session's ``verify`` (psf/requests#3829), which would silently replace the exporter's ``certificate_file``."""
    session = requests.Session()
    session.trust_env = False
    return session


def _export_grpc(target: str, credentials: grpc.ChannelCredentials) -> None:
    with grpc.secure_channel(target, credentials) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(spans_request(2)[0], timeout=5)


def test_tls_on_both_transports(tls: Collector, tls_files: TLSFiles) -> None:
    before = tls.snapshot()
    assert tls.http_url("otlp/tls").startswith("https://")
    grpc_exporter = GRPCSpanExporter(endpoint=tls.grpc_target("otlp/tls"), timeout=10,
                                     credentials=_grpc_credentials(tls_files, client_cert=False))
    http_exporter = HTTPSpanExporter(endpoint=tls.traces_url("otlp/tls"), timeout=10,
                                     certificate_file=str(tls_files.server_cert), session=_session())
    for exporter in (grpc_exporter, http_exporter):
        export_with(exporter, sdk_spans(3, "tls"))
    # Plaintext to the TLS ports, and TLS without trusting the certificate, get nowhere.
    with grpc.insecure_channel(tls.grpc_target("otlp/tls")) as channel, pytest.raises(grpc.RpcError) as info:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(spans_request(1)[0], timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as info:
        _export_grpc(tls.grpc_target("otlp/tls"), grpc.ssl_channel_credentials())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    plain = tls.traces_url("otlp/tls").replace("https://", "http://")
    with pytest.raises(requests.exceptions.ConnectionError):
        post(plain, spans_request(1)[0].SerializeToString())
    with pytest.raises(requests.exceptions.SSLError):
        post(tls.traces_url("otlp/tls"), spans_request(1)[0].SerializeToString())
    # A connection that never starts its handshake does not hold up the others.
    parts = urlsplit(tls.http_url("otlp/tls"))
    with socket.create_connection((parts.hostname, parts.port), timeout=10):
        response = requests.post(tls.traces_url("otlp/tls"), data=spans_request(2)[0].SerializeToString(),
                                 headers={"Content-Type": PROTOBUF}, verify=str(tls_files.server_cert), timeout=10)
        assert response.status_code == 200
    _export_grpc(tls.grpc_target("otlp/tls"), _grpc_credentials(tls_files, client_cert=False))
    assert tls.delta(before) == {accepted("grpc", "otlp/tls"): 5, accepted("http", "otlp/tls"): 5}


def test_client_certificate_required(tls: Collector, tls_files: TLSFiles) -> None:
    before = tls.snapshot()
    target, url = tls.grpc_target("otlp/mtls"), tls.traces_url("otlp/mtls")
    with pytest.raises(grpc.RpcError) as info:
        _export_grpc(target, _grpc_credentials(tls_files, client_cert=False))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    body = spans_request(1)[0].SerializeToString()
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        requests.post(url, data=body, headers={"Content-Type": PROTOBUF}, verify=str(tls_files.server_cert),
                      timeout=10)
    # A certificate the server does not trust is no better than none.
    other = self_signed(tls_files.client_cert.parent, "stranger")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(url, data=body, headers={"Content-Type": PROTOBUF}, verify=str(tls_files.server_cert),
                      cert=(str(other[0]), str(other[1])), timeout=10)
    assert tls.delta(before) == {}
    _export_grpc(target, _grpc_credentials(tls_files, client_cert=True))
    exporter = HTTPSpanExporter(endpoint=url, timeout=10, certificate_file=str(tls_files.server_cert),
                                client_certificate_file=str(tls_files.client_cert),
                                client_key_file=str(tls_files.client_key), session=_session())
    export_with(exporter, sdk_spans(3, "mtls"))
    assert tls.delta(before) == {accepted("grpc", "otlp/mtls"): 2, accepted("http", "otlp/mtls"): 3}
