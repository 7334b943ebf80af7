"""The collector's forwarding exporters against the real collector process.

``otlp`` and ``otlphttp`` exporters deliver through their sending queue: retried with
backoff on retryable answers, dropped (counted and logged once) on permanent ones or when
``max_elapsed_time`` runs out, refused (counted) when the bounded queue is full, and kept
on disk with ``sending_queue.storage`` so a SIGTERM + restart loses nothing accepted.
SIGTERM releases held traces to the exporters and finishes within
``service.shutdown_timeout`` even with the backend down. ``debug`` logs what it sends.

Spans are built as OTLP protos and sent to the collector's OTLP/gRPC receiver, so every
span id is known; backends below record what they got, by span id.
"""

from __future__ import annotations

import gzip
import http.server
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector_proc import CollectorProcess
from conftest import Scrape, scrape
from otlp_sink import OTLPSink

RETRY = {"initial_interval": "100ms", "max_interval": "500ms"}
SERVICE = "exporter-tests"


# Spans and requests.

def trace(name: str, children: int = 2, *, rooted: bool = True) -> list[Span]:
    """One local trace: ``children`` spans under a root; the root comes last (children end first), or never."""
    trace_id, root_id = os.urandom(16), os.urandom(8)
    now = time.time_ns()
    spans = [Span(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=root_id, name=f"{name}-child{i}",
                  kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=now, end_time_unix_nano=now + 1000)
             for i in range(children)]
    if rooted:
        spans.append(Span(trace_id=trace_id, span_id=root_id, name=f"{name}-root", kind=Span.SPAN_KIND_SERVER,
                          start_time_unix_nano=now - 1000, end_time_unix_nano=now + 2000))
    return spans


def traces(prefix: str, count: int, children: int = 2, *, rooted: bool = True) -> list[Span]:
    return [s for i in range(count) for s in trace(f"{prefix}{i}", children, rooted=rooted)]


def send(collector: CollectorProcess, spans: Iterable[Span], receiver: str = "otlp") -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=SERVICE)))
    ss = rs.scope_spans.add()
    ss.scope.name = "exporter-tests"
    ss.spans.extend(spans)
    with grpc.insecure_channel(collector.grpc[receiver]) as channel:
        response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    assert response.partial_success.rejected_spans == 0, response


def ids(spans: Iterable[Span]) -> list[bytes]:
    return [s.span_id for s in spans]


# Backends.

class Backend:
    """A scriptable downstream OTLP/gRPC backend: counts attempts, can fail (``fail_with``) or answer slowly."""

    def __init__(self, fail_with: grpc.StatusCode | None = None, delay_s: float = 0.0) -> None:
        self.fail_with = fail_with
        self.delay_s = delay_s
        self.attempts = 0
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.attempts += 1
            fail_with = self.fail_with
        if self.delay_s:
            time.sleep(self.delay_s)
        if fail_with is not None:
            context.abort(fail_with, "backend told to fail")
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span_ids(self) -> list[bytes]:
        with self.lock:
            requests = list(self.requests)
        return [s.span_id for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def __enter__(self) -> Backend:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0).wait()


class HTTPBackend:
    """A downstream OTLP/HTTP backend answering the status codes in ``script`` in turn, then 200."""

    def __init__(self, script: Iterable[int] = (), always: int | None = None) -> None:
        self.script = list(script)
        self.always = always
        self.attempts = 0
        self.span_ids: list[bytes] = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                backend.attempts += 1
                status = backend.always or (backend.script.pop(0) if backend.script else 200)
                if status == 200 and self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    backend.span_ids += [s.span_id for rs in request.resource_spans for ss in rs.scope_spans
                                         for s in ss.spans]
                    out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                else:
                    out = b"not now" if status != 200 else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HTTPBackend:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A loopback port with nothing listening on it (a backend that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Collector configs and readings.

def config(exporters: dict[str, Any], *, flowtel: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
           extensions: dict[str, Any] | None = None, shutdown_timeout: str = "10s",
           receiver: dict[str, Any] | None = None, processors: tuple[str, ...] = ("flowtel", "batch")) -> str:
    return yaml.safe_dump({
        "receivers": {"otlp": {"protocols": receiver or {"grpc": {"endpoint": "127.0.0.1:0"}}}},
        "processors": {"flowtel": flowtel or {}, "batch": {"timeout": "50ms", **(batch or {})}},
        "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}, **exporters},
        "extensions": extensions or {},
        "service": {
            "extensions": list(extensions or {}),
            "shutdown_timeout": shutdown_timeout,
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": list(processors),
                                     "exporters": ["prometheus", *exporters]}},
        },
    })


def otlp(endpoint: str, **settings: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "tls": {"insecure": True}, "retry_on_failure": dict(RETRY), **settings}


def metrics(collector: CollectorProcess) -> Scrape:
    return scrape(collector.prometheus["prometheus"])


def sent(collector: CollectorProcess, exporter: str) -> float:
    return metrics(collector).value("otelcol_exporter_sent_spans_total", exporter=exporter)


def log_lines(collector: CollectorProcess, pattern: str) -> list[re.Match[str]]:
    return [m for line in collector.lines if (m := re.search(pattern, line))]


def stored_spans(directory: Path, signal: str = "") -> int:
    """Items (spans, metric points, log records) in the batch files a persistent sending queue left in
    ``directory``; its signal is in its name (``<dir>@metrics``) unless given."""
    from flowtel.exporters.sending_queue import read_batch

    signal = signal or (directory.name.rpartition("@")[2] if "@" in directory.name else "traces")
    return sum(read_batch(str(path), signal, header_only=True)[0] for path in directory.rglob("*.batch"))


# Persistent queue across a restart.

def test_persistent_queue_delivers_after_sigterm_and_restart_once_backend_is_up(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    collector = CollectorProcess(config(
        {"otlp/backend": otlp(f"127.0.0.1:{port}", sending_queue={"storage": "file_storage"})},
        extensions={"file_storage": {"directory": str(storage)}}, shutdown_timeout="5s"), tmp_path)
    first, second = traces("persist-a", 2), traces("persist-b", 3)
    expected = sorted(ids(first + second))
    collector.start()
    try:
        send(collector, first)
        send(collector, second)
        # Accepted means on disk: every span is in a batch file while the backend is down.
        collector.wait_for(lambda: stored_spans(storage) == len(expected))
        assert metrics(collector).value("otelcol_exporter_sent_spans_total") == 0
    finally:
        assert collector.stop(timeout=30) == 0
    assert stored_spans(storage) == len(expected)
    assert log_lines(collector, r"exporter otlp/backend: \d+ batch\(es\) left in .*storage"), collector.log
    assert not log_lines(collector, r"dropped"), collector.log

    collector.start()
    try:
        recovered = log_lines(collector, r"exporter otlp/backend: \d+ stored batch\(es\) \((\d+) spans\) recovered")
        assert [int(m.group(1)) for m in recovered] == [len(expected)], collector.log
        with OTLPSink(port) as sink:
            collector.wait_for(lambda: sent(collector, "otlp/backend") >= len(expected) and stored_spans(storage) == 0)
            delivered = sorted(span.span_id for span, _ in sink.spans())
            assert delivered == expected  # every span, each exactly once
            assert sent(collector, "otlp/backend") == len(expected)
            assert not list(storage.rglob("*.batch"))
    finally:
        assert collector.stop() == 0


# Retry, permanent errors, retries exhausted, queue full.

def test_retryable_errors_are_retried_until_the_backend_recovers(tmp_path: Path) -> None:
    with Backend(fail_with=grpc.StatusCode.UNAVAILABLE) as backend:
        collector = CollectorProcess(config({"otlp/backend": otlp(backend.endpoint)}), tmp_path).start()
        try:
            spans = traces("retry", 2)
            send(collector, spans)
            collector.wait_for(lambda: backend.attempts >= 3)  # failing, and retried
            assert backend.span_ids() == []
            backend.fail_with = None
            collector.wait_for(lambda: sent(collector, "otlp/backend") >= len(spans))
            assert sorted(backend.span_ids()) == sorted(ids(spans))
            reading = metrics(collector)
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == len(spans)
            assert reading.value("otelcol_exporter_send_failed_spans_total") == 0
            assert reading.value("flowtel_spans_dropped_total") == 0
        finally:
            assert collector.stop() == 0
    assert not log_lines(collector, r"WARNING"), collector.log


def test_permanent_error_drops_counts_and_logs_once(tmp_path: Path) -> None:
    with Backend(fail_with=grpc.StatusCode.INVALID_ARGUMENT) as backend:
        collector = CollectorProcess(config({"otlp/backend": otlp(backend.endpoint)}), tmp_path).start()
        try:
            total = 0
            for i in range(3):  # three separate batches, each refused
                spans = trace(f"permanent{i}", 1)
                send(collector, spans)
                total += len(spans)
                collector.wait_for(lambda total=total: metrics(collector).value(
                    "otelcol_exporter_send_failed_spans_total", exporter="otlp/backend") >= total)
            reading = metrics(collector)
            assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlp/backend",
                                 reason="permanent_error") == total == 6
            assert reading.value("flowtel_spans_dropped_total", reason="export_permanent_error") == total
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == 0
            assert backend.attempts == 3  # not retried
        finally:
            assert collector.stop() == 0
    given_up = log_lines(collector, r"WARNING .*exporter otlp/backend: dropped (\d+) span\(s\) \(permanent_error\)"
                                    r".*INVALID_ARGUMENT")
    assert [m.group(1) for m in given_up] == ["2"], collector.log
    assert len(log_lines(collector, r"flowtel dropped spans \(reason: export_permanent_error\)")) == 1


def test_max_elapsed_time_exhausted_is_counted_as_retries_exhausted(tmp_path: Path) -> None:
    with Backend(fail_with=grpc.StatusCode.UNAVAILABLE) as backend:
        retry = {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "1s"}
        collector = CollectorProcess(config({"otlp/backend": otlp(backend.endpoint, retry_on_failure=retry)}),
                                     tmp_path).start()
        try:
            spans = traces("exhausted", 2)
            send(collector, spans)
            collector.wait_for(lambda: metrics(collector).value("otelcol_exporter_send_failed_spans_total",
                                                                exporter="otlp/backend") >= len(spans))
            reading = metrics(collector)
            assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlp/backend",
                                 reason="retries_exhausted") == len(spans)
            assert reading.value("flowtel_spans_dropped_total", reason="export_retries_exhausted") == len(spans)
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend") == 0
            assert backend.attempts >= 3  # retried with backoff before giving up
        finally:
            assert collector.stop() == 0
    assert len(log_lines(collector, r"exporter otlp/backend: dropped 6 span\(s\) \(retries_exhausted\)")) == 1


def test_full_queue_refuses_batches_and_every_span_is_accounted_for(tmp_path: Path) -> None:
    with Backend(delay_s=1.0) as backend:  # slow: one batch in flight, one queued, the rest refused
        exporter = otlp(backend.endpoint, sending_queue={"queue_size": 1, "num_consumers": 1})
        collector = CollectorProcess(config({"otlp/backend": exporter}, batch={"send_batch_max_size": 2}),
                                     tmp_path).start()
        try:
            spans = traces("full", 10, children=1)  # 20 spans, sent as 10 batches of 2
            send(collector, spans)

            def accounted() -> float:
                r = metrics(collector)
                return sum(r.value(name, exporter="otlp/backend") for name in (
                    "otelcol_exporter_sent_spans_total", "otelcol_exporter_enqueue_failed_spans_total",
                    "otelcol_exporter_send_failed_spans_total"))

            collector.wait_for(lambda: accounted() >= len(spans))
            reading = metrics(collector)
            refused = reading.value("otelcol_exporter_enqueue_failed_spans_total", exporter="otlp/backend")
            delivered = reading.value("otelcol_exporter_sent_spans_total", exporter="otlp/backend")
            assert reading.value("otelcol_receiver_accepted_spans_total") == len(spans)
            assert accounted() == len(spans)
            assert refused >= 14  # at most three of the ten batches fit (one sending, one queued, one race)
            assert delivered == len(backend.span_ids()) >= 2
            assert reading.value("flowtel_spans_dropped_total", reason="exporter_queue_full") == refused
            assert reading.value("otelcol_exporter_queue_capacity", exporter="otlp/backend") == 1
        finally:
            assert collector.stop() == 0
    assert len(log_lines(collector, r"exporter otlp/backend: queue full \(1 batches\)")) == 1, collector.log


# OTLP/HTTP.

def test_otlphttp_forwards_to_another_collectors_http_receiver(tmp_path: Path) -> None:
    # The downstream collector wants a bearer token: one exporter sends it (headers), the other does not.
    with OTLPSink() as sink:
        downstream = CollectorProcess(config(
            {"otlp/sink": otlp(sink.endpoint)}, processors=(),
            receiver={"http": {"endpoint": "127.0.0.1:0", "auth": {"authenticator": "bearertokenauth"}}},
            extensions={"bearertokenauth": {"token": "s3cret"}}), tmp_path, name="downstream.yaml").start()
        try:
            endpoint = downstream.http["otlp"]
            upstream = CollectorProcess(config({
                "otlphttp/downstream": {"endpoint": endpoint, "headers": {"Authorization": "Bearer s3cret"},
                                        "retry_on_failure": RETRY},
                "otlphttp/no_token": {"endpoint": endpoint, "retry_on_failure": RETRY},
            }), tmp_path, name="upstream.yaml").start()
            try:
                spans = traces("http", 3)
                send(upstream, spans)
                upstream.wait_for(lambda: len(sink.spans()) >= len(spans) and metrics(upstream).value(
                    "otelcol_exporter_send_failed_spans_total", exporter="otlphttp/no_token") >= len(spans))
                assert sorted(span.span_id for span, _ in sink.spans()) == sorted(ids(spans))
                assert {r["service.name"].string_value for _, r in sink.spans()} == {SERVICE}
                reading = metrics(upstream)
                assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlphttp/downstream") == len(spans)
                assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlphttp/no_token",
                                     reason="permanent_error") == len(spans)
                assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlphttp/no_token") == 0
                assert metrics(downstream).value("otelcol_receiver_accepted_spans_total", receiver="otlp",
                                                 transport="http") == len(spans)
            finally:
                assert upstream.stop() == 0
        finally:
            assert downstream.stop() == 0
    # The reason logged is the downstream's own message, decoded from its google.rpc.Status answer.
    refused = log_lines(upstream, r"exporter otlphttp/no_token: dropped 9 span\(s\) \(permanent_error\): (.*)$")
    assert [m.group(1) for m in refused] == ["HTTP 401: missing or wrong bearer token"], upstream.log


def test_otlphttp_retries_429_and_503_and_drops_on_400(tmp_path: Path) -> None:
    with HTTPBackend(script=[503, 429]) as flaky, HTTPBackend(always=400) as refusing:
        collector = CollectorProcess(config({
            "otlphttp/flaky": {"endpoint": flaky.url, "retry_on_failure": RETRY},
            "otlphttp/refusing": {"endpoint": refusing.url, "retry_on_failure": RETRY},
        }), tmp_path).start()
        try:
            spans = traces("httpretry", 1, children=2)
            send(collector, spans)
            collector.wait_for(lambda: sent(collector, "otlphttp/flaky") >= len(spans) and metrics(collector).value(
                "otelcol_exporter_send_failed_spans_total", exporter="otlphttp/refusing") >= len(spans))
            reading = metrics(collector)
            assert sorted(flaky.span_ids) == sorted(ids(spans))
            assert flaky.attempts == 3
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlphttp/flaky") == len(spans)
            assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlphttp/flaky") == 0
            assert refusing.attempts == 1
            assert reading.value("otelcol_exporter_send_failed_spans_total", exporter="otlphttp/refusing",
                                 reason="permanent_error") == len(spans)
            assert reading.value("otelcol_exporter_sent_spans_total", exporter="otlphttp/refusing") == 0
        finally:
            assert collector.stop() == 0
    assert len(log_lines(collector, r"exporter otlphttp/refusing: dropped 3 span\(s\) \(permanent_error\): "
                                    r"HTTP 400: not now$")) == 1, collector.log


# Held traces: shutdown and timeout.

def test_sigterm_releases_held_traces_to_the_backend(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        collector = CollectorProcess(config({"otlp/backend": otlp(sink.endpoint)}, flowtel={"trace_timeout": "10m"}),
                                     tmp_path).start()
        complete, held = traces("complete", 1), traces("rootless", 2, rooted=False)
        try:
            send(collector, complete + held)
            collector.wait_for(lambda: sent(collector, "otlp/backend") >= len(complete))
            reading = metrics(collector)
            assert reading.value("flowtel_spans_held") == len(held) == 4
            assert reading.value("flowtel_traces_held") == 2
            assert sorted(span.span_id for span, _ in sink.spans()) == sorted(ids(complete))
        finally:
            assert collector.stop() == 0
        delivered = sorted(span.span_id for span, _ in sink.spans())
    assert delivered == sorted(ids(complete + held))
    assert log_lines(collector, r"flowtel collector draining")
    assert log_lines(collector, r"flowtel collector stopped")
    assert not log_lines(collector, r"WARNING"), collector.log


def test_shutdown_is_bounded_with_backend_down_and_in_memory_queue(tmp_path: Path) -> None:
    # Retries would go on for five minutes; shutdown_timeout cuts them at 2s, and what is left is counted as dropped.
    retry = {**RETRY, "max_elapsed_time": "5m"}
    collector = CollectorProcess(config({"otlp/backend": otlp(f"127.0.0.1:{free_port()}", retry_on_failure=retry)},
                                        flowtel={"trace_timeout": "10m"}, shutdown_timeout="2s"), tmp_path).start()
    complete, held = traces("queued", 3), traces("held", 1, rooted=False)
    try:
        send(collector, complete + held)
        collector.wait_for(lambda: metrics(collector).value("flowtel_spans_processed_total") == len(complete)
                           and metrics(collector).value("flowtel_spans_held") == len(held))
        assert sent(collector, "otlp/backend") == 0
    finally:
        # Far less than the retries would take; bounded by shutdown_timeout (+ the signal poll and thread joins).
        assert collector.stop(timeout=10) == 0
    dropped = log_lines(collector, r"exporter otlp/backend: (\d+) span\(s\) still queued at the shutdown deadline "
                                   r"were dropped")
    assert [int(m.group(1)) for m in dropped] == [len(complete) + len(held)], collector.log
    assert len(log_lines(collector, r"flowtel dropped spans \(reason: shutdown_timeout\)")) == 1, collector.log
    assert log_lines(collector, r"flowtel collector stopped in")


def test_trace_timeout_releases_a_rootless_trace(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        collector = CollectorProcess(config({"otlp/backend": otlp(sink.endpoint)}, flowtel={"trace_timeout": "500ms"}),
                                     tmp_path).start()
        try:
            rootless = trace("orphan", 3, rooted=False)
            send(collector, rootless)
            collector.wait_for(lambda: len(sink.spans()) >= len(rootless))
            assert sorted(span.span_id for span, _ in sink.spans()) == sorted(ids(rootless))
            reading = metrics(collector)
            assert reading.value("flowtel_traces_released_total", reason="timeout") == 1
            assert reading.value("flowtel_traces_released_total") == 1
            assert reading.value("flowtel_spans_held") == 0
            assert reading.value("flowtel_spans_processed_total") == len(rootless)
        finally:
            assert collector.stop() == 0


def test_late_and_evicted_spans_are_forwarded_and_counted(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        collector = CollectorProcess(config({"otlp/backend": otlp(sink.endpoint)},
                                            flowtel={"trace_timeout": "10m", "max_held_spans": 2}), tmp_path).start()
        try:
            complete = trace("complete", 1)
            send(collector, complete)
            collector.wait_for(lambda: sent(collector, "otlp/backend") >= 2)
            child = complete[0]
            late = Span(trace_id=child.trace_id, span_id=os.urandom(8), parent_span_id=child.span_id, name="late",
                        start_time_unix_nano=child.start_time_unix_nano, end_time_unix_nano=child.end_time_unix_nano)
            send(collector, [late])
            oldest, *held = (trace(f"evict{i}", 1, rooted=False)[0] for i in range(3))  # one span over the limit
            send(collector, [oldest, *held])
            collector.wait_for(lambda: sent(collector, "otlp/backend") >= 4)
            reading = metrics(collector)
            for reason, count in (("complete", 1), ("late", 1), ("capacity", 1), ("timeout", 0), ("shutdown", 0)):
                assert reading.value("flowtel_traces_released_total", reason=reason) == count, reason
            assert reading.value("flowtel_spans_held") == 2
            assert sorted(span.span_id for span, _ in sink.spans()) == sorted(ids([*complete, late, oldest]))
        finally:
            assert collector.stop() == 0
        delivered = sorted(span.span_id for span, _ in sink.spans())
    assert delivered == sorted(ids([*complete, late, oldest, *held]))  # the held two at shutdown, nothing twice


# Debug exporter.

def test_debug_exporter_detailed_logs_every_span(tmp_path: Path) -> None:
    collector = CollectorProcess(config({"debug": {"verbosity": "detailed"}}), tmp_path).start()
    try:
        spans = traces(f"debug-{os.urandom(4).hex()}-", 2)
        send(collector, spans)
        collector.wait_for(lambda: sent(collector, "debug") >= len(spans))
        assert sent(collector, "debug") == len(spans)
    finally:
        assert collector.stop() == 0
    for span in spans:
        lines = [line for line in collector.lines if f'"{span.name}"' in line]
        assert len(lines) == 1, (span.name, collector.log)
        # OTLP JSON: ids in hex, as in the receiver's JSON and the normal verbosity.
        assert f'"spanId": "{span.span_id.hex()}"' in lines[0]
        assert f'"traceId": "{span.trace_id.hex()}"' in lines[0]
