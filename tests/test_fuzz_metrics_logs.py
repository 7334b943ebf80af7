"""Property-based: the real collector's metrics and logs receivers, over loopback, on generated and mutated
ExportMetricsServiceRequest / ExportLogsServiceRequest bodies (protobuf, JSON, gzip over HTTP; protobuf over gRPC).

The collector's metrics pipeline exports to ``prometheus`` and to a recording OTLP sink, its logs pipeline to the
sink (without content capture, so log content removal runs on every record). Every answer is a clear 2xx / 4xx (over
gRPC never INTERNAL, UNKNOWN or DATA_LOSS), every Prometheus scrape taken during the run parses, nothing leaves a
traceback in the collector's log, and the metric points / log records the receivers accepted (their own metrics)
are exactly what the sink received. Bounded examples so the file runs in well under half a minute.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from test_fuzz_receivers import _hex_ids, mutated
from test_fuzz_wire import KEYS, VALUES

from flowtel.processors.log_content import is_content_event, is_content_key, redacted_node_output

from collector_proc import CollectorProcess
from conftest import Scrape, scrape
from otlp_sink import OTLPSink

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}, grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  batch: {timeout: 20ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    metrics: {receivers: [otlp], processors: [batch], exporters: [prometheus, otlp/sink]}
    logs: {receivers: [otlp], processors: [batch], exporters: [otlp/sink]}
"""


class Collector:
    def __init__(self, proc: CollectorProcess, sink: OTLPSink) -> None:
        self.proc, self.sink = proc, sink
        self.scrapes = 0

    def post(self, path: str, body: bytes, **headers: str) -> requests.Response:
        return requests.post(self.proc.http["otlp"] + path, data=body, timeout=60,
                             headers={"Content-Type": "application/x-protobuf", **headers})

    def scrape(self) -> Scrape:
        """The Prometheus endpoint, parsed by prometheus_client (an unparsable scrape raises), with no sample
        exposed twice (which that parser lets through and Prometheus refuses)."""
        self.scrapes += 1
        served = scrape(self.proc.prometheus["prometheus"])
        seen = [(s.name, tuple(sorted(s.labels.items()))) for s in served.samples]
        assert len(seen) == len(set(seen)), sorted(k for k in seen if seen.count(k) > 1)[:3]
        return served


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    tmp_path: Path = tmp_path_factory.mktemp("fuzz-signals")
    with OTLPSink() as sink:
        proc = CollectorProcess(CONFIG % {"sink": sink.endpoint}, tmp_path).start()
        try:
            yield Collector(proc, sink)
        finally:
            assert proc.stop() == 0, proc.log


# --- valid requests --------------------------------------------------------------------------------------------

ATTRIBUTES = st.lists(st.tuples(KEYS | st.sampled_from(["le", "quantile", "__name__", "job", "instance", "a b",
                                                         "0x", ""]), VALUES), max_size=4).map(
    lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs])
U64 = st.integers(0, 2**64 - 1)
FIXED64 = st.sampled_from([0, 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
DOUBLES = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324])
I64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.sampled_from(["app.requests", "app.latency", "http.server.duration", "a", "1bad", "ünïcode", "x" * 300,
                         "", "flowtel_spans", "otelcol_receiver_accepted_spans", "a.b-c/d", "app_requests_total"])
UNITS = st.sampled_from(["", "ms", "s", "By", "1", "{request}", "%", "ünit", "m/s"])


@st.composite
def exemplars(draw: st.DrawFn) -> Exemplar:
    exemplar = Exemplar(time_unix_nano=draw(FIXED64), trace_id=draw(st.sampled_from([b"", bytes(16)]) |
                                                                      st.binary(min_size=16, max_size=16)),
                        span_id=draw(st.sampled_from([b"", b"\x01" * 3]) | st.binary(min_size=8, max_size=8)))
    if draw(st.booleans()):
        exemplar.as_double = draw(DOUBLES)
    else:
        exemplar.as_int = draw(I64)
    exemplar.filtered_attributes.extend(draw(ATTRIBUTES))
    return exemplar


def _point_common(draw: st.DrawFn, point: Any) -> None:
    point.attributes.extend(draw(ATTRIBUTES))
    point.start_time_unix_nano = draw(FIXED64)
    point.time_unix_nano = draw(FIXED64)
    point.flags = draw(st.sampled_from([0, 1, 2**32 - 1]))


@st.composite
def number_points(draw: st.DrawFn) -> NumberDataPoint:
    point = NumberDataPoint()
    _point_common(draw, point)
    kind = draw(st.sampled_from(["double", "int", "none"]))
    if kind == "double":
        point.as_double = draw(DOUBLES)
    elif kind == "int":
        point.as_int = draw(I64)
    point.exemplars.extend(draw(st.lists(exemplars(), max_size=2)))
    return point


@st.composite
def histogram_points(draw: st.DrawFn) -> HistogramDataPoint:
    point = HistogramDataPoint()
    _point_common(draw, point)
    bounds = draw(st.lists(DOUBLES, max_size=5))
    if draw(st.booleans()):
        bounds = sorted(b for b in bounds if not math.isnan(b))
    point.explicit_bounds.extend(bounds)
    # Mostly len(bounds) + 1 counts; sometimes fewer or more (invalid, must not break anything).
    extra = draw(st.sampled_from([1, 1, 1, 0, 2, -len(bounds) - 1]))
    point.bucket_counts.extend(draw(st.lists(FIXED64, min_size=max(0, len(bounds) + extra),
                                             max_size=max(0, len(bounds) + extra))))
    point.count = draw(st.sampled_from([sum(point.bucket_counts) % 2**64]) | FIXED64)
    if draw(st.booleans()):
        point.sum = draw(DOUBLES)
    if draw(st.booleans()):
        point.min = draw(DOUBLES)
    if draw(st.booleans()):
        point.max = draw(DOUBLES)
    point.exemplars.extend(draw(st.lists(exemplars(), max_size=2)))
    return point


@st.composite
def exponential_points(draw: st.DrawFn) -> ExponentialHistogramDataPoint:
    point = ExponentialHistogramDataPoint()
    _point_common(draw, point)
    point.scale = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-10, 20))
    point.zero_count = draw(FIXED64)
    point.zero_threshold = draw(DOUBLES)
    for buckets in (point.positive, point.negative):
        if draw(st.booleans()):
            buckets.offset = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-5, 5))
            buckets.bucket_counts.extend(draw(st.lists(FIXED64 | st.integers(0, 9), max_size=6)))
    point.count = draw(FIXED64 | st.integers(0, 50))
    if draw(st.booleans()):
        point.sum = draw(DOUBLES)
    if draw(st.booleans()):
        point.min, point.max = draw(DOUBLES), draw(DOUBLES)
    point.exemplars.extend(draw(st.lists(exemplars(), max_size=1)))
    return point


@st.composite
def summary_points(draw: st.DrawFn) -> SummaryDataPoint:
    point = SummaryDataPoint()
    _point_common(draw, point)
    point.count = draw(FIXED64)
    point.sum = draw(DOUBLES)
    for _ in range(draw(st.integers(0, 3))):
        point.quantile_values.add(quantile=draw(DOUBLES | st.floats(0, 1)), value=draw(DOUBLES))
    return point


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    metric = Metric(name=draw(NAMES), unit=draw(UNITS), description=draw(st.text(max_size=20)))
    metric.metadata.extend(draw(ATTRIBUTES))
    kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", None]))
    temporality = draw(st.integers(0, 3))
    if kind == "gauge":
        metric.gauge.data_points.extend(draw(st.lists(number_points(), max_size=3)))
    elif kind == "sum":
        metric.sum.aggregation_temporality = temporality
        metric.sum.is_monotonic = draw(st.booleans())
        metric.sum.data_points.extend(draw(st.lists(number_points(), max_size=3)))
    elif kind == "histogram":
        metric.histogram.aggregation_temporality = temporality
        metric.histogram.data_points.extend(draw(st.lists(histogram_points(), max_size=3)))
    elif kind == "exponential_histogram":
        metric.exponential_histogram.aggregation_temporality = temporality
        metric.exponential_histogram.data_points.extend(draw(st.lists(exponential_points(), max_size=2)))
    elif kind == "summary":
        metric.summary.data_points.extend(draw(st.lists(summary_points(), max_size=2)))
    return metric


@st.composite
def metrics_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend(draw(ATTRIBUTES))
        rm.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.26.0"]))
        for _ in range(draw(st.integers(1, 2))):
            sm = rm.scope_metrics.add()
            sm.scope.name = draw(st.sampled_from(["", "app", "flowtel"]))
            sm.scope.attributes.extend(draw(ATTRIBUTES))
            sm.metrics.extend(draw(st.lists(metrics(), min_size=1, max_size=3)))
    return request


CONTENT_KEYS = st.sampled_from(["gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages",
                                "gen_ai.output.messages", "gen_ai.system_instructions", "inputs", "output",
                                "gen_ai.prompt.0.content", "event.name", "gen_ai.request.model"])
EVENT_NAMES = st.sampled_from(["", "gen_ai.user.message", "gen_ai.choice", "gen_ai.client.inference.operation.details",
                               "gen_ai.system.message", "gen_ai.tool.message", "promptflow.node.output", "x"])


#: What a prompt flow node's print becomes in its log line (the text after ``stdout> `` is content).
NODE_PRINTS = st.sampled_from(["[chat in line 0 (index starts from 0)] stdout> my secret prompt",
                               "[n] stderr> secret\nmore", "[n] stdout>no space", "stdout> secret"])


@st.composite
def log_records(draw: st.DrawFn) -> LogRecord:
    record = LogRecord(time_unix_nano=draw(FIXED64), observed_time_unix_nano=draw(FIXED64),
                       severity_number=draw(st.integers(0, 24) | st.integers(-(2**31), 2**31 - 1)),
                       severity_text=draw(st.sampled_from(["", "INFO", "ERROR", "ü"])),
                       flags=draw(st.sampled_from([0, 1, 2**32 - 1])),
                       trace_id=draw(st.sampled_from([b"", bytes(16), b"\x01" * 5]) |
                                     st.binary(min_size=16, max_size=16)),
                       span_id=draw(st.sampled_from([b"", bytes(8)]) | st.binary(min_size=8, max_size=8)),
                       event_name=draw(EVENT_NAMES), dropped_attributes_count=draw(st.integers(0, 2**32 - 1)))
    if draw(st.integers(0, 5)):
        record.body.CopyFrom(draw(VALUES | NODE_PRINTS.map(lambda text: AnyValue(string_value=text))))
    record.attributes.extend(draw(st.lists(st.tuples(CONTENT_KEYS | KEYS, VALUES), max_size=4).map(
        lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs])))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # the older event.name attribute, sometimes twice
        record.attributes.add(key="event.name").value.string_value = draw(EVENT_NAMES)
    return record


@st.composite
def logs_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rl = request.resource_logs.add()
        rl.resource.attributes.extend(draw(ATTRIBUTES))
        for _ in range(draw(st.integers(1, 2))):
            sl = rl.scope_logs.add()
            sl.scope.name = draw(st.sampled_from(["", "app", "promptflow"]))
            sl.log_records.extend(draw(st.lists(log_records(), min_size=1, max_size=3)))
    return request


SIGNALS = {"metrics": ("/v1/metrics", metrics_requests(),
                       "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"),
           "logs": ("/v1/logs", logs_requests(), "/opentelemetry.proto.collector.logs.v1.LogsService/Export")}


def _json(message: Message) -> bytes:
    """OTLP/JSON: ids in hex; NaN and infinities as the protobuf JSON mapping's strings."""
    return json.dumps(_hex_ids(json_format.MessageToDict(message))).encode()


# --- the fuzzing ----------------------------------------------------------------------------------------------

def _answered(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])


@FUZZ
@given(st.data(), st.sampled_from(sorted(SIGNALS)))
def test_mutated_http_bodies(collector: Collector, data: st.DataObject, signal: str) -> None:
    path, generated, _ = SIGNALS[signal]
    message = data.draw(generated)
    encoding = data.draw(st.sampled_from(["protobuf", "json"]))
    body = message.SerializeToString() if encoding == "protobuf" else _json(message)
    body = data.draw(mutated(body))
    headers = {"Content-Type": "application/json"} if encoding == "json" else {}
    if data.draw(st.booleans()):
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    _answered(collector.post(path, body, **headers))
    if data.draw(st.integers(0, 4)) == 0:
        collector.scrape()  # parses, or raises


_SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


@pytest.fixture(scope="module")
def channel(collector: Collector) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(collector.proc.grpc["otlp"]) as channel:
        yield channel


@FUZZ
@given(st.data(), st.sampled_from(sorted(SIGNALS)))
def test_mutated_grpc_messages(collector: Collector, channel: grpc.Channel, data: st.DataObject,
                               signal: str) -> None:
    _, generated, method = SIGNALS[signal]
    body = data.draw(mutated(data.draw(generated).SerializeToString()))
    try:
        channel.unary_unary(method)(body, timeout=30)  # raw bytes: the mutated body goes on the wire as it is
    except grpc.RpcError as error:
        assert error.code() not in _SERVER_FAULTS, (error.code(), error.details())
    if data.draw(st.integers(0, 4)) == 0:
        collector.scrape()


def test_no_content_left_in_any_forwarded_log_record(collector: Collector) -> None:
    """Runs after the fuzzing above: content capture is off, so no record the sink got has a content attribute, a
    body when any of its event names (``event_name``, every ``event.name`` attribute) is a GenAI content event, or
    a prompt flow node's printed text."""
    records = [record for record, _ in collector.sink.log_records()]
    assert records
    for record in records:
        keys = [kv.key for kv in record.attributes]
        assert not [key for key in keys if is_content_key(key)], record
        events = [record.event_name] + [kv.value.string_value for kv in record.attributes if kv.key == "event.name"]
        if any(is_content_event(event) for event in events):
            assert not record.HasField("body"), events
        text = record.body.string_value
        assert "secret" not in text or redacted_node_output(text) is None, record


def test_fuzzed_collector_lost_nothing_and_still_serves(collector: Collector) -> None:
    """Runs after the fuzzing above (file order): every accepted point and record reached the sink, none twice."""
    good = ExportMetricsServiceRequest()
    point = good.resource_metrics.add().scope_metrics.add().metrics.add(name="good.count").sum.data_points.add()
    point.as_int = 7
    assert collector.post("/v1/metrics", good.SerializeToString()).status_code == 200
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add(body=AnyValue(string_value="good record"))
    assert collector.post("/v1/logs", logs.SerializeToString()).status_code == 200

    def settled() -> bool:
        own = collector.scrape()
        points = sum(len(v) for v in collector.sink.metrics().values())
        records = len(collector.sink.log_records())
        return ("good.count" in collector.sink.metrics()
                and own.value("otelcol_receiver_accepted_metric_points_total") == points
                and own.value("otelcol_receiver_accepted_log_records_total") == records)
    collector.proc.wait_for(settled, timeout=60, interval=0.2)
    own = collector.scrape()
    for transport in ("http", "grpc"):  # the fuzz did reach the pipelines, not only the parsers
        assert own.value("otelcol_receiver_accepted_metric_points_total", transport=transport) > 0
        assert own.value("otelcol_receiver_accepted_log_records_total", transport=transport) > 0
    assert collector.scrapes > 5
    assert collector.proc.proc is not None and collector.proc.proc.poll() is None
    assert "Traceback" not in collector.proc.log
