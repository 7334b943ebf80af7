"""Durability of the real collector under memory spikes, damaged queue files, oversized spans and shutdown.

Each test starts the collector process, drives it over loopback and checks what a client and a
downstream backend see, and that the collector's own metrics account for every span.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector_proc import CollectorProcess
from conftest import Scrape, scrape

_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def request_bytes(spans: list[Span], service: str = "durability-tests") -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    rs.scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


def orphan_spans(count: int, payload_bytes: int) -> list[Span]:
    """Spans whose parent never arrives: the collector holds them until ``trace_timeout``."""
    now = time.time_ns()
    filler = "x" * payload_bytes
    return [Span(trace_id=os.urandom(16), span_id=os.urandom(8), parent_span_id=os.urandom(8), name="orphan",
                 start_time_unix_nano=now, end_time_unix_nano=now + 1000,
                 attributes=[KeyValue(key="filler", value=AnyValue(string_value=filler + str(i)))])
            for i in range(count)]


def export(channel: grpc.Channel, body: bytes) -> grpc.StatusCode:
    """Send one serialized request; the gRPC status it got (OK when accepted)."""
    call = channel.unary_unary(_EXPORT, request_serializer=None, response_deserializer=None)
    try:
        call(body, timeout=30)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


class CountingBackend:
    """A downstream OTLP/gRPC backend that only counts spans and bytes (a spike must not live on in the test)."""

    def __init__(self, delay_s: float = 0.0, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.spans = 0
        self.requests = 0
        self.started = 0  # export calls begun (a slow backend counts them before answering)
        self.span_names: list[str] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.max_receive_message_length", max_message_bytes)])
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.started += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self.lock:
            self.requests += 1
            self.spans += len(spans)
            self.span_names += [s.name for s in spans if s.name != "orphan"]
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CountingBackend:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0).wait()


def collector_config(exporters: dict[str, Any], *, processors: dict[str, Any] | None = None,
                     extensions: dict[str, Any] | None = None, shutdown_timeout: str = "10s") -> str:
    processors = {"flowtel": {}, "batch": {"timeout": "50ms"}, **(processors or {})}
    order = [p for p in ("memory_limiter", "flowtel", "batch") if p in processors]
    return yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0", "max_recv_msg_size_mib": 16}}}},
        "processors": processors,
        "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}, **exporters},
        "extensions": extensions or {},
        "service": {
            "extensions": list(extensions or {}),
            "shutdown_timeout": shutdown_timeout,
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": order,
                                     "exporters": ["prometheus", *exporters]}},
        },
    })


def forward_to(endpoint: str, **settings: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "tls": {"insecure": True},
            "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms"}, **settings}


def metrics(collector: CollectorProcess) -> Scrape:
    return scrape(collector.prometheus["prometheus"])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# Item: after a spike, memory is given back and intake resumes.

def test_intake_resumes_after_a_memory_spike_is_delivered(tmp_path: Path) -> None:
    limiter = {"check_interval": "200ms", "limit_mib": 330, "spike_limit_mib": 80}  # refuses above 250 MiB
    with CountingBackend(max_message_bytes=256 * 1024 * 1024) as backend:
        collector = CollectorProcess(collector_config(
            {"otlp/backend": forward_to(backend.endpoint)},
            processors={"memory_limiter": limiter, "flowtel": {"trace_timeout": "3s"}}), tmp_path).start()
        assert collector.proc is not None
        pid = collector.proc.pid
        try:
            baseline = rss_mib(pid)
            assert baseline < 200, f"the collector starts at {baseline:.0f} MiB: too close to the limit for this test"
            sent = 0
            with grpc.insecure_channel(collector.grpc["otlp"]) as channel:
                body = request_bytes(orphan_spans(500, 4000))  # 2 MB of spans held until their trace times out
                for _ in range(400):  # bounded: 800 MB at most
                    status = export(channel, body)
                    if status == grpc.StatusCode.UNAVAILABLE:
                        break
                    assert status == grpc.StatusCode.OK, status
                    sent += 500
                else:
                    raise AssertionError("the memory limiter never refused")
                peak = rss_mib(pid)
                # Every held span times out, is released and delivered; then the memory they took is free.
                collector.wait_for(lambda: backend.spans >= sent, timeout=60)
                delivered_at = time.monotonic()
                good = request_bytes([Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="good-client",
                                           start_time_unix_nano=1, end_time_unix_nano=2)])
                resumed = collector.wait_for(lambda: export(channel, good) == grpc.StatusCode.OK, timeout=30,
                                             interval=0.2)
                assert resumed
                waited = time.monotonic() - delivered_at
                after = rss_mib(pid)
                collector.wait_for(lambda: "good-client" in backend.span_names)
            reading = metrics(collector)
            assert reading.value("otelcol_receiver_accepted_spans_total") == sent + 1
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == sent + 1
            assert reading.value("otelcol_receiver_refused_spans_total", reason="memory_limit") >= 500
            print(f"baseline {baseline:.0f} MiB, peak {peak:.0f} MiB, {sent} spans; intake resumed {waited:.1f}s "
                  f"after delivery at {after:.0f} MiB")
        finally:
            assert collector.stop() == 0
    assert "accepting data" in collector.log


def test_peak_rss_units_follow_the_platform() -> None:
    import platform
    import resource

    from flowtel.collector.processors.allocator import can_release
    from flowtel.collector.processors.memory_limiter import maxrss_mib

    assert maxrss_mib(3 * 2**20, "darwin") == 3.0  # bytes on macOS
    assert maxrss_mib(3 * 1024, "linux") == 3.0  # KiB on Linux
    with open("/proc/self/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    ours = maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sys.platform)
    assert abs(ours - peak_kib / 1024) < 16
    # Where the C library is glibc, freed memory can be handed back (the limiter relies on it).
    assert can_release() == (platform.libc_ver()[0] == "glibc")


# Item: one large span does not poison a batch.

def test_a_span_over_the_batch_byte_limit_is_dropped_alone_and_batches_are_split_below_it(tmp_path: Path) -> None:
    retry = {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "2s"}
    with CountingBackend() as backend:  # a gRPC server's usual 4 MiB limit
        collector = CollectorProcess(collector_config(
            {"otlp/backend": forward_to(backend.endpoint, retry_on_failure=retry)}), tmp_path).start()
        try:
            now = time.time_ns()

            def root(name: str, payload_bytes: int) -> Span:  # a whole trace: released at once
                return Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=name, start_time_unix_nano=now,
                            end_time_unix_nano=now + 1000, attributes=[
                                KeyValue(key="filler", value=AnyValue(string_value="y" * payload_bytes))])

            small = [root(f"small-{i}", 100) for i in range(174)]
            large = [root(f"large-{i}", 1_500_000) for i in range(3)]  # 4.5 MB together: two requests at least
            huge = root("huge", 5_000_000)
            with grpc.insecure_channel(collector.grpc["otlp"]) as channel:
                assert export(channel, request_bytes([*small[:100], huge, *large, *small[100:]])) == \
                    grpc.StatusCode.OK
            expected = len(small) + len(large)
            collector.wait_for(lambda: metrics(collector).value("otelcol_exporter_sent_spans_total",
                                                                exporter="otlp/backend") >= expected)
            reading = metrics(collector)
            assert sorted(backend.span_names) == sorted(s.name for s in [*small, *large])
            assert backend.requests >= 2
            assert reading.value("otelcol_receiver_accepted_spans_total") == expected + 1
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == expected
            assert reading.value("otelcol_exporter_send_failed_spans_total") == 0
            assert reading.value("flowtel_spans_dropped_total", reason="too_large") == 1
            assert reading.value("flowtel_spans_dropped_total") == 1
        finally:
            assert collector.stop() == 0
    assert len([line for line in collector.lines if "exceeds batch.send_batch_max_bytes" in line]) == 1, collector.log


def test_split_batches_bounds_every_request_by_its_encoded_size() -> None:
    from flowtel.collector.pipeline import split_batches
    from flowtel.otlp import adapt, encode_request

    now = time.time_ns()
    spans = [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"s{i}", start_time_unix_nano=now,
                  end_time_unix_nano=now + 1, attributes=[KeyValue(key="k", value=AnyValue(string_value="z" * (
                      37 * i % 900)))]) for i in range(300)]
    items = [span.native for span in adapt(request_bytes(spans[:150]) + request_bytes(spans[150:], "other")).spans]
    for max_bytes, max_spans in ((500, 0), (2_000, 0), (5_000, 7), (1_000_000, 0), (1_000_000, 64)):
        batches, too_large = split_batches(items, max_spans, max_bytes)
        kept = [i for b in batches for i in b]
        left_out = [i for i in items if all(i is not k for k in kept)]
        assert sorted(too_large) == sorted(len(i[0]) for i in left_out)
        # Sizes are upper bounds a few framing bytes above the exact ones: nothing near the limit is left out.
        assert all(len(encode_request([i])) > max_bytes - 16 for i in left_out)
        assert all(len(encode_request(b)) <= max_bytes for b in batches)
        assert all(len(b) <= (max_spans or len(items)) for b in batches)
        assert [i for i in items if any(i is k for k in kept)] == kept  # order kept
        if max_bytes == 1_000_000 and not max_spans:
            assert len(batches) == 1  # no split without need
        if max_bytes == 500:
            assert 0 < len(too_large) < len(items)


# Item: damaged persistent queue files are moved aside and counted, never trusted.

def test_damaged_queue_files_are_moved_aside_and_counted_and_tmp_leftovers_removed(tmp_path: Path) -> None:
    from flowtel.collector import Collector  # noqa: F401  (imported first, as an app would)
    from flowtel.exporters.sending_queue import encode_batch

    storage = tmp_path / "storage"
    queue = storage / "otlp_backend"
    queue.mkdir(parents=True)
    now = time.time_ns()

    def spans(name: str, n: int) -> list[Span]:
        return [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{name}-{i}", start_time_unix_nano=now,
                     end_time_unix_nano=now + 1) for i in range(n)]

    good = spans("stored", 3)
    (queue / f"{1:020d}.batch").write_bytes(encode_batch(request_bytes(good), 3, "traces"))
    (queue / f"{2:020d}.batch").write_bytes(b"")  # empty
    truncated = encode_batch(request_bytes(spans("truncated", 2)), 2, "traces")
    (queue / f"{3:020d}.batch").write_bytes(truncated[:len(truncated) - 20])
    (queue / f"{4:020d}.batch").write_bytes(encode_batch(request_bytes(spans("lying", 1)), 2**62, "traces"))
    (queue / f"{5:020d}.batch").mkdir()
    flipped = bytearray(encode_batch(request_bytes(spans("flipped", 2)), 2, "traces"))
    flipped[-5] ^= 0x40
    (queue / f"{6:020d}.batch").write_bytes(bytes(flipped))
    (queue / f"{7:020d}.batch").write_bytes(encode_batch(b"\x0a\x00", 1, "metrics"))  # another signal's
    (queue / f"{8:020d}.batch.tmp").write_bytes(truncated[:30])  # a crash mid-write
    # A length of 2^62 bytes must be checked against the file, never read (or allocated) as claimed.
    huge = encode_batch(request_bytes(spans("huge", 1)), 1, "traces")
    (queue / f"{11:020d}.batch").write_bytes(huge[:20] + struct.pack(">Q", 2**62) + huge[28:])
    (queue / f"{12:020d}.batch").write_bytes(huge[:12] + struct.pack(">QQ", 2**62, 2**62) + huge[28:])
    # Batches an earlier release stored (a span count, then the request): kept when the request agrees.
    legacy = spans("legacy", 2)
    (queue / f"{9:020d}.batch").write_bytes(struct.pack(">Q", 2) + request_bytes(legacy))
    (queue / f"{10:020d}.batch").write_bytes(struct.pack(">Q", 2**62) + request_bytes(spans("legacy-lying", 1)))
    exporters = {"otlp/backend": forward_to("", sending_queue={"storage": "file_storage"})}
    extensions = {"file_storage": {"directory": str(storage)}}
    damaged = {"truncated": 4, "bad_header": 1, "not_a_file": 1, "checksum": 1, "wrong_signal": 1, "unfinished": 1,
               "unknown_format": 1}
    with CountingBackend() as backend:
        exporters["otlp/backend"]["endpoint"] = backend.endpoint
        collector = CollectorProcess(collector_config(exporters, extensions=extensions), tmp_path).start()
        try:
            collector.wait_for(lambda: metrics(collector).value("otelcol_exporter_sent_spans_total") >= 5)
            reading = metrics(collector)
            assert sorted(backend.span_names) == sorted(s.name for s in good + legacy)
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == 5
            for reason, files in damaged.items():
                assert reading.value("flowtel_exporter_queue_damaged_files_total", exporter="otlp/backend",
                                     reason=reason) == files, reason
            # Spans are counted where the header could still be read and was plausible: never 2^62.
            lost = 2 + 2 + 1  # truncated, flipped, huge (the metrics batch's point is no span: its file is counted)
            assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlp/backend",
                                 reason="damaged_file") == lost
            assert reading.value("flowtel_spans_dropped_total", reason="queue_file_damaged") == lost
        finally:
            assert collector.stop() == 0
        assert sorted(p.name for p in queue.iterdir()) == ["corrupt"]  # delivered, moved aside or removed
        assert len(list((queue / "corrupt").iterdir())) == 9  # and the .tmp removed
        assert len([line for line in collector.lines if "cannot be trusted" in line]) == 10, collector.log
        # Moved aside means dealt with: the next start finds nothing to skip or to report again.
        collector.start()
        try:
            assert metrics(collector).value("flowtel_exporter_queue_damaged_files_total") == 0
        finally:
            assert collector.stop() == 0
        assert not [line for line in collector.lines if "WARNING" in line], collector.log


# Item: shutdown counts what was really lost.

def test_shutdown_counts_a_batch_in_flight_at_the_deadline_only_if_it_is_lost(tmp_path: Path) -> None:
    # One consumer: batch A is being sent to a backend that answers after 6 s, batch B waits behind it.
    # The shutdown deadline (2 s) comes while A is in flight: A arrives, B is lost, and only B is counted.
    with CountingBackend(delay_s=6.0) as backend:
        exporter = forward_to(backend.endpoint, timeout="10s", sending_queue={"num_consumers": 1})
        collector = CollectorProcess(collector_config({"otlp/backend": exporter}, shutdown_timeout="2s"),
                                     tmp_path).start()
        now = time.time_ns()

        def roots(name: str, n: int) -> list[Span]:
            return [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{name}-{i}",
                         start_time_unix_nano=now, end_time_unix_nano=now + 1) for i in range(n)]

        try:
            with grpc.insecure_channel(collector.grpc["otlp"]) as channel:
                assert export(channel, request_bytes(roots("in-flight", 5))) == grpc.StatusCode.OK
                collector.wait_for(lambda: backend.started == 1)
                assert export(channel, request_bytes(roots("queued", 7))) == grpc.StatusCode.OK
            collector.wait_for(lambda: metrics(collector).value("otelcol_exporter_queue_size",
                                                                exporter="otlp/backend") == 1)
        finally:
            assert collector.stop(timeout=30) == 0
        assert sorted(backend.span_names) == [f"in-flight-{i}" for i in range(5)]
    dropped = [line for line in collector.lines if "at the shutdown deadline were dropped" in line]
    assert len(dropped) == 1 and "7 span(s) still queued" in dropped[0], collector.log
    assert "in flight" not in collector.log


# Item: feedback values that OTLP cannot carry are coerced, never dropped.

#: JSON a client may send that has no OTLP attribute form as it is: integers beyond int64, lone surrogates
#: (in values and in keys), numbers beyond int64 inside a list; a list mixing integers and floats is fine as is.
UNEXPORTABLE_FEEDBACK = (b'{"big": 9223372036854775808, "small": -9223372036854775809, "text": "a\\ud800b", '
                         b'"\\udc00key": 1, "nums": [1, 18446744073709551616], "mixed": [1, 2.5], '
                         b'"words": ["ok", "\\ud83d"], "rating": 5}')
COERCED_FEEDBACK = {"big": "9223372036854775808", "small": "-9223372036854775809", "text": "a\ufffdb",
                    "\ufffdkey": 1, "nums": "[1, 18446744073709551616]", "mixed": (1, 2.5),
                    "words": ("ok", "\ufffd"), "rating": 5}


def test_feedback_values_otlp_cannot_carry_are_coerced_by_the_collector(tmp_path: Path) -> None:
    import requests

    from flowtel.otlp import decode_attributes

    from otlp_sink import OTLPSink

    with OTLPSink() as sink:
        collector = CollectorProcess(yaml.safe_dump({
            "receivers": {"feedback": {"endpoint": "127.0.0.1:0"}},
            "processors": {"flowtel": {}, "batch": {"timeout": "50ms"}},
            "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}, "otlp/sink": forward_to(sink.endpoint)},
            "service": {"pipelines": {"traces": {"receivers": ["feedback"], "processors": ["flowtel", "batch"],
                                                 "exporters": ["prometheus", "otlp/sink"]}}},
        }), tmp_path).start()
        try:
            for _ in range(2):
                response = requests.post(collector.feedback["feedback"] + "?flatten=true", data=UNEXPORTABLE_FEEDBACK,
                                         headers={"Content-Type": "application/json"}, timeout=10)
                assert response.status_code == 200, response.text
            collector.wait_for(lambda: len(sink.spans()) == 2)
            for span, _ in sink.spans():
                got = decode_attributes(span.attributes)
                assert {k: got.get(k) for k in COERCED_FEEDBACK} == COERCED_FEEDBACK
            reading = metrics(collector)
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/sink") == 2
            assert reading.value("flowtel_spans_dropped_total") == 0
        finally:
            assert collector.stop() == 0
    assert "Traceback" not in collector.log
    assert len([line for line in collector.lines if "feedback values OTLP cannot carry" in line]) == 1, collector.log


def test_feedback_values_otlp_cannot_carry_are_coerced_in_process() -> None:
    import io

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flowtel.feedback import FeedbackApp
    from flowtel.otlp import decode_attributes

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FeedbackApp(provider)
    answers: list[str] = []
    body = app({"REQUEST_METHOD": "POST", "PATH_INFO": "/feedback", "QUERY_STRING": "flatten=true",
                "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(UNEXPORTABLE_FEEDBACK)),
                "wsgi.input": io.BytesIO(UNEXPORTABLE_FEEDBACK)}, lambda status, headers: answers.append(status))
    assert answers == ["200 OK"], b"".join(body)
    (span,) = exporter.get_finished_spans()
    # The OTLP exporters' own encoder: it raised on these values, so the span was lost at export.
    request = encode_spans([span])
    got = decode_attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)
    assert {k: got.get(k) for k in COERCED_FEEDBACK} == COERCED_FEEDBACK
    request.SerializeToString()


def test_when_memory_cannot_be_returned_the_limiter_refuses_only_while_the_collector_holds_data(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from flowtel.collector.processors import memory_limiter
    from flowtel.collector.processors.memory_limiter import MemoryLimiter, MemoryLimiterConfig
    from flowtel.collector.refusal import Refused

    monkeypatch.setattr(memory_limiter, "resident_mib", lambda: 500.0)  # retained by the allocator after a spike
    monkeypatch.setattr(memory_limiter, "release_free_memory", lambda: False)  # musl, macOS
    held = [10]
    limiter = MemoryLimiter("memory_limiter", MemoryLimiterConfig(limit_mib=300, spike_limit_mib=50),
                            holding=lambda: held[0])
    limiter._check()
    with pytest.raises(Refused):
        limiter.check()
    held[0] = 0  # delivered: refusing would free nothing
    limiter._check()
    limiter.check()
    held[0] = 3
    limiter._check()
    with pytest.raises(Refused):
        limiter.check()
    # Over the limit with nothing ever held is a limit below the idle process: that still refuses.
    idle = MemoryLimiter("memory_limiter", MemoryLimiterConfig(limit_mib=300, spike_limit_mib=50), holding=lambda: 0)
    idle._check()
    with pytest.raises(Refused):
        idle.check()
