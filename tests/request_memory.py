"""What one request costs the collector in memory, as a multiple of its size (issue "hardened under attack").

Each shape builds one crafted request (``build(n)``: larger ``n``, larger request) that is the worst it can be
for some stage. ``measure`` sends it through an in-process ``Collector`` built from a real config (never
started: no server, no worker thread) by the code path a request takes there: the HTTP receiver's WSGI app
(``HTTPTransport._app``: body limits, decompression, upb parse, ``Intake.accept`` / ``RequestIntake.accept``:
adapt, admit, queue), then the pipelines' ``_drain_once`` as their worker runs it (traces: ``TracePipeline``:
assembly, analysis, derivation, enrichment, then split and encode for the exporters; metrics and logs: join,
parse, ``ReceivedMetrics.consume`` / log content removal, hand to the exporters), then, for shapes that leave
spans held, the pipeline's shutdown drain that releases them. The ``otlp`` exporter is never started, so what
it is given stays queued: part of the cost, as it is until sent.

The peak is ``tracemalloc``'s (Python allocations, which is what flowtel's own work allocates; upb's arenas
are C ``malloc`` and not in it: ``bench/bench_request_memory.py`` cross-checks with the RSS of a subprocess).
Shared by ``tests/test_request_memory.py`` and ``bench/bench_request_memory.py``.
"""

from __future__ import annotations

import gc
import gzip
import io
import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attacks import long_flow_names, nested_calls, new_span_id, new_trace_id, pf_span, request
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from flowtel import _wire as w
from flowtel.collector.config import load_config
from flowtel.collector.service import Collector

#: Largest HTTP body (after decompression) the measuring collector takes; the shapes stay under it.
MAX_BODY = 64 << 20

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0", max_request_body_size: %(max_body)d}}}
  feedback: {endpoint: "127.0.0.1:0", max_request_body_size: %(max_body)d}
processors:
  flowtel: {trace_timeout: 10m, max_queue_size: 10000000, max_held_spans: 10000000}
  batch: {send_batch_size: 100000000, send_batch_max_size: 0}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp: {endpoint: "127.0.0.1:9", tls: {insecure: true}, sending_queue: {queue_size: 1000000}}
service:
  pipelines:
    traces: {receivers: [otlp, feedback], processors: [flowtel, batch], exporters: [prometheus, otlp]}
    metrics: {receivers: [otlp], processors: [batch], exporters: [prometheus, otlp]}
    logs: {receivers: [otlp], processors: [batch], exporters: [otlp]}
"""


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = str(value)
    return kv


@dataclass(frozen=True)
class Crafted:
    path: str  # /v1/traces, /v1/metrics, /v1/logs, /feedback
    body: bytes  # as sent
    decoded: int  # its size after decompression
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/x-protobuf"


def _traces(spans: list[Span], **kw: Any) -> Crafted:
    body = request(spans)
    return Crafted("/v1/traces", body, len(body), **kw)


# --- traces -----------------------------------------------------------------------------------------------------

def tiny_spans(n: int) -> Crafted:
    """``n`` spans with nothing but their ids and a one-letter name, each its own trace: the per-span objects
    (the span view, its bytes, its trace) against the fewest bytes a span can have."""
    return _traces([Span(trace_id=new_trace_id(), span_id=new_span_id(), name="s") for _ in range(n)])


def empty_spans(n: int) -> Crafted:
    """``n`` empty spans (2 bytes each on the wire), every one rejected for its missing ids."""
    return _traces([Span() for _ in range(n)])


def empty_resource_spans(n: int) -> Crafted:
    """``n`` empty ``ResourceSpans`` (2 bytes each), then one ``ResourceSpans`` with ``n`` empty ``ScopeSpans``."""
    body = b"\x0a\x00" * n + b"\x0a" + w.encode_varint(2 * n) + b"\x12\x00" * n
    return Crafted("/v1/traces", body, len(body))


def many_attributes(n: int) -> Crafted:
    """One span with ``n`` tiny distinct attributes: the decoded attribute dict and the position index."""
    span = pf_span(new_trace_id(), new_span_id(), b"", "flow", "Flow")
    span.attributes.extend(_kv(f"k{i}", i) for i in range(n))
    return _traces([span])


def huge_attribute(n: int) -> Crafted:
    """One flow span whose ``inputs`` and ``output`` are ``n`` KiB of text each (removed as content)."""
    text = "x" * (n << 10)
    return _traces([pf_span(new_trace_id(), new_span_id(), b"", "flow", "Flow", inputs=text, output=text)])


def deep_nesting(n: int) -> Crafted:
    """A flow, a node, and ``n`` calls each nested in the previous one: the ``api_call`` paths."""
    body = nested_calls(n)
    return Crafted("/v1/traces", body, len(body))


def held_and_roots(n: int) -> Crafted:
    """``n`` spans of one trace waiting for parents that never come, then ``n // 5`` local roots of that trace."""
    trace_id = new_trace_id()
    orphans = [pf_span(trace_id, new_span_id(), new_span_id(), "o", "Function") for _ in range(n)]
    roots = [pf_span(trace_id, new_span_id(), b"", "r", "Function") for _ in range(n // 5)]
    return _traces(orphans + roots)


def long_flow_names_shape(n: int) -> Crafted:
    """``n`` flows named with 2 KiB each: label values (cut to 256 B) on every derived metric."""
    body = long_flow_names(n, 2048)
    return Crafted("/v1/traces", body, len(body))


def _llm_trace(inputs: str, output: str, **extra: Any) -> list[Span]:
    trace_id, flow_id, llm_id = new_trace_id(), new_span_id(), new_span_id()
    llm = pf_span(trace_id, llm_id, flow_id, "openai_chat", "LLM", 1_200_000, 1_800_000, node_name="chat",
                  inputs=inputs, output=output,
                  **{"llm.usage.prompt_tokens": 7, "llm.usage.completion_tokens": 3,
                     "llm.response.model": "gpt-4o-mini"}, **extra)
    flow = pf_span(trace_id, flow_id, b"", "chat-flow", "Flow", inputs=inputs, output=output)
    return [llm, flow]


def genai_messages(n: int) -> Crafted:
    """An LLM call and its flow whose ``inputs`` / ``output`` are JSON holding ``n`` chat messages each (parsed,
    turned into GenAI message attributes, removed as content)."""
    messages = [{"role": "user", "content": f"message {i} " + "w" * 40} for i in range(n)]
    inputs = json.dumps({"model": "gpt-4o-mini", "messages": messages, "chat_history": [
        {"inputs": {"question": m["content"]}, "outputs": {"answer": m["content"]}} for m in messages]})
    output = json.dumps({"id": "c1", "choices": [{"finish_reason": "stop", "message": m} for m in messages]})
    return _traces(_llm_trace(inputs, output))


def json_small_values(n: int) -> Crafted:
    """Every JSON attribute flowtel parses, each an array of ``n`` empty objects: the most Python objects per
    byte of JSON (3 bytes each)."""
    array = "[" + ",".join(["{}"] * n) + "]"
    trace_id, flow_id, llm_id = new_trace_id(), new_span_id(), new_span_id()
    llm = pf_span(trace_id, llm_id, flow_id, "openai_chat", "LLM", 1_200_000, 1_800_000, node_name="chat",
                  inputs=array, output=array, **{"promptflow.llm.generated_message": array,
                                                   "mlflow.spanInputs": array, "mlflow.spanOutputs": array,
                                                   "llm.invocation_parameters": array,
                                                   "mlflow.chat.tokenUsage": array})
    return _traces([llm, pf_span(trace_id, flow_id, b"", "f", "Flow", inputs=array, output=array)])


def many_events(n: int) -> Crafted:
    """One LLM span with ``n`` events (content events among them, removed), each with one attribute."""
    trace_id = new_trace_id()
    span = pf_span(trace_id, new_span_id(), b"", "openai_chat", "LLM", inputs="{}")
    for i in range(n):
        event = span.events.add(time_unix_nano=1_500_000 + i,
                                name="promptflow.llm.generated_message" if i % 2 else "exception")
        event.attributes.append(_kv("payload" if i % 2 else "exception.message", f"e{i}"))
    return _traces([span])


def gzip_bomb(n: int) -> Crafted:
    """``n`` empty spans, gzipped: about 1,000 times smaller on the wire than inflated (the bound is on the
    inflated size, itself bounded by ``max_request_body_size``)."""
    raw = empty_spans(n).body
    return Crafted("/v1/traces", gzip.compress(raw, 9), len(raw), (("Content-Encoding", "gzip"),))


def json_empty_spans(n: int) -> Crafted:
    """OTLP/JSON with ``n`` empty span objects (3 bytes each): ``json.loads`` makes a dict of each before the
    protobuf JSON mapping reads them (and the spans are rejected: no ids)."""
    body = ('{"resourceSpans":[{"scopeSpans":[{"spans":[' + ",".join(["{}"] * n) + ']}]}]}').encode()
    return Crafted("/v1/traces", body, len(body), content_type="application/json")


def json_tiny_spans(n: int) -> Crafted:
    """OTLP/JSON with ``n`` spans holding only their hex ids and a one-letter name, each its own trace."""
    spans = ",".join(f'{{"traceId":"{i + 1:032x}","spanId":"{i + 1:016x}","name":"s"}}' for i in range(n))
    body = ('{"resourceSpans":[{"scopeSpans":[{"spans":[' + spans + ']}]}]}').encode()
    return Crafted("/v1/traces", body, len(body), content_type="application/json")


# --- metrics ----------------------------------------------------------------------------------------------------

def _metrics(metrics: list[Metric]) -> Crafted:
    message = ExportMetricsServiceRequest()
    rm = message.resource_metrics.add()
    rm.resource.attributes.append(_kv("service.name", "app"))
    rm.scope_metrics.add().metrics.extend(metrics)
    body = message.SerializeToString()
    return Crafted("/v1/metrics", body, len(body))


def metric_points(n: int) -> Crafted:
    """One counter with ``n`` points, each its own tiny label set: a series each."""
    metric = Metric(name="requests")
    metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    for i in range(n):
        point = metric.sum.data_points.add(as_int=i, time_unix_nano=2)
        point.attributes.append(_kv("k", i))
    return _metrics([metric])


def metric_attributes(n: int) -> Crafted:
    """A gauge point with ``n`` attributes (labels), ten points of it."""
    metric = Metric(name="g")
    for p in range(10):
        point = metric.gauge.data_points.add(as_double=1.0, time_unix_nano=2)
        point.attributes.extend(_kv(f"a{i}", p) for i in range(n))
    return _metrics([metric])


def histogram_buckets(n: int) -> Crafted:
    """A histogram whose points have ``n`` buckets each: ten points."""
    metric = Metric(name="latency")
    metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    for p in range(10):
        point = metric.histogram.data_points.add(count=n, sum=1.0, time_unix_nano=2)
        point.attributes.append(_kv("p", p))
        point.explicit_bounds.extend(float(i) for i in range(n - 1))
        point.bucket_counts.extend([1] * n)
    return _metrics([metric])


def exponential_buckets(n: int) -> Crafted:
    """An exponential histogram whose points have ``n`` positive and ``n`` negative buckets: ten points."""
    metric = Metric(name="exp")
    metric.exponential_histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    for p in range(10):
        point = metric.exponential_histogram.data_points.add(count=2 * n, sum=1.0, scale=0, time_unix_nano=2)
        point.attributes.append(_kv("p", p))
        point.positive.bucket_counts.extend([1] * n)
        point.negative.bucket_counts.extend([1] * n)
    return _metrics([metric])


def summary_quantiles(n: int) -> Crafted:
    """A summary whose points have ``n`` quantiles each: ten points."""
    metric = Metric(name="q")
    for p in range(10):
        point = metric.summary.data_points.add(count=1, sum=1.0, time_unix_nano=2)
        point.attributes.append(_kv("p", p))
        for i in range(n):
            point.quantile_values.add(quantile=i / n, value=float(i))
    return _metrics([metric])


def exemplars(n: int) -> Crafted:
    """A histogram point with ``n`` buckets and an exemplar (trace and span id) in each."""
    metric = Metric(name="ex")
    metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    point = metric.histogram.data_points.add(count=n, sum=1.0, time_unix_nano=2)
    point.explicit_bounds.extend(float(i) for i in range(n - 1))
    point.bucket_counts.extend([1] * n)
    for i in range(n):
        point.exemplars.add(as_double=i - 0.5, time_unix_nano=1, trace_id=new_trace_id(), span_id=new_span_id())
    return _metrics([metric])


def empty_resource_metrics(n: int) -> Crafted:
    """``n`` empty ``ResourceMetrics`` (2 bytes each), then one with ``n`` empty ``ScopeMetrics``."""
    body = b"\x0a\x00" * n + b"\x0a" + w.encode_varint(2 * n) + b"\x12\x00" * n
    return Crafted("/v1/metrics", body, len(body))


def many_metrics(n: int) -> Crafted:
    """``n`` metrics (families) of one point each: the family limit cuts them, each is still read."""
    metrics = []
    for i in range(n):
        metric = Metric(name=f"m{i}")
        metric.gauge.data_points.add(as_int=1, time_unix_nano=2)
        metrics.append(metric)
    return _metrics(metrics)


# --- logs -------------------------------------------------------------------------------------------------------

def _logs(records: list[LogRecord]) -> Crafted:
    message = ExportLogsServiceRequest()
    rl = message.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", "app"))
    rl.scope_logs.add().log_records.extend(records)
    body = message.SerializeToString()
    return Crafted("/v1/logs", body, len(body))


def empty_log_records(n: int) -> Crafted:
    """``n`` empty log records (2 bytes each): every one looked at for content."""
    return _logs([LogRecord() for _ in range(n)])


def log_bodies(n: int) -> Crafted:
    """Ten records with ``n`` KiB bodies each, half of them GenAI content events (cleared), half a prompt flow
    node's printed output."""
    text = "y" * (n << 10)
    records = []
    for i in range(10):
        if i % 2:
            record = LogRecord(event_name="gen_ai.user.message")
            record.body.string_value = text
        else:
            record = LogRecord()
            record.body.string_value = f"[chat in line 0 (index starts from 0)] stdout> {text}"
        records.append(record)
    return _logs(records)


def log_content_attributes(n: int) -> Crafted:
    """``n`` records each with a content attribute (removed: the record is rebuilt) and two others."""
    records = []
    for i in range(n):
        record = LogRecord(event_name="gen_ai.choice")
        record.body.string_value = "c"
        record.attributes.extend([_kv("gen_ai.prompt", f"p{i}"), _kv("gen_ai.system", "openai"), _kv("i", i)])
        records.append(record)
    return _logs(records)


# --- feedback ---------------------------------------------------------------------------------------------------

def feedback_body(n: int) -> Crafted:
    """One ``POST /feedback`` of ``n`` KiB of JSON (many small fields): parsed, recorded as a span."""
    body = json.dumps({"rating": 1, "comment": "c" * 100, **{f"f{i}": i for i in range(n * 100)}}).encode()
    return Crafted("/feedback", body, len(body), content_type="application/json")


@dataclass(frozen=True)
class Shape:
    name: str
    build: Callable[[int], Crafted]
    n: int  # the size the test measures at (the bench's default too)


SHAPES: tuple[Shape, ...] = (
    Shape("tiny_spans", tiny_spans, 4_000),
    Shape("empty_spans", empty_spans, 20_000),
    Shape("empty_resource_spans", empty_resource_spans, 20_000),
    Shape("many_attributes", many_attributes, 8_000),
    Shape("huge_attribute", huge_attribute, 512),
    Shape("deep_nesting", deep_nesting, 1_000),
    Shape("held_and_roots", held_and_roots, 2_000),
    Shape("long_flow_names", long_flow_names_shape, 100),
    Shape("genai_messages", genai_messages, 1_000),
    Shape("json_small_values", json_small_values, 20_000),
    Shape("many_events", many_events, 4_000),
    Shape("gzip_bomb", gzip_bomb, 200_000),
    Shape("json_empty_spans", json_empty_spans, 20_000),
    Shape("json_tiny_spans", json_tiny_spans, 2_000),
    Shape("metric_points", metric_points, 2_000),
    Shape("metric_attributes", metric_attributes, 500),
    Shape("histogram_buckets", histogram_buckets, 2_000),
    Shape("exponential_buckets", exponential_buckets, 2_000),
    Shape("summary_quantiles", summary_quantiles, 2_000),
    Shape("exemplars", exemplars, 2_000),
    Shape("empty_resource_metrics", empty_resource_metrics, 20_000),
    Shape("many_metrics", many_metrics, 2_000),
    Shape("empty_log_records", empty_log_records, 20_000),
    Shape("log_bodies", log_bodies, 256),
    Shape("log_content_attributes", log_content_attributes, 4_000),
    Shape("feedback_body", feedback_body, 5),
)
BY_NAME = {shape.name: shape for shape in SHAPES}


def new_collector() -> Collector:
    return Collector(load_config(text=CONFIG % {"max_body": MAX_BODY}))


def _app(collector: Collector, path: str) -> Callable[..., Any]:
    for receiver in collector._receivers:
        if (path == "/feedback") == (receiver.kind == "feedback"):
            return receiver._endpoint.app
    raise LookupError(path)


def close(collector: Collector) -> None:
    """Free the listening sockets the receivers bound (the collector was never started)."""
    for receiver in collector._receivers:
        receiver._endpoint._socket.close()
        receiver._endpoint._pool.shutdown()


def send(collector: Collector, crafted: Crafted, app: Callable[..., Any] | None = None) -> str:
    """``crafted`` through the receiver's WSGI app and every pipeline's worker step; the answer's status."""
    app = app or _app(collector, crafted.path)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": crafted.path, "CONTENT_TYPE": crafted.content_type,
               "CONTENT_LENGTH": str(len(crafted.body)), "QUERY_STRING": "", "wsgi.input": io.BytesIO(crafted.body),
               **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in crafted.headers}}
    status: list[str] = []
    answer = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    del answer
    environ.clear()
    for pipeline in collector.pipelines.values():
        pipeline._drain_once()
    traces = collector.pipelines["traces"]
    pipe = getattr(traces, "_trace_pipeline", None)
    if pipe is not None:  # what is still held, released as at the trace timeout or shutdown
        traces._emit(pipe.drain())
    return status[0]


@dataclass(frozen=True)
class Measured:
    shape: str
    n: int
    wire: int
    decoded: int
    peak: int
    status: str

    @property
    def ratio(self) -> float:
        return self.peak / self.decoded


def measure(shape: Shape, n: int | None = None) -> Measured:
    """One request of ``shape`` at size ``n`` into a fresh collector (warmed up by a small request of the same
    shape, so imports and first-use caches are not counted); the tracemalloc peak above what was allocated
    before the request, its body included."""
    n = shape.n if n is None else n
    collector = new_collector()
    try:
        send(collector, shape.build(max(1, n // 100)))  # warm-up: first-use imports, caches, series of the shape
        crafted = shape.build(n)
        app = _app(collector, crafted.path)
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            status = send(collector, crafted, app)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    finally:
        close(collector)
    return Measured(shape.name, n, len(crafted.body), crafted.decoded, peak, status)
