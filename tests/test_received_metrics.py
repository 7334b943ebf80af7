"""Received OTLP metrics on the collector's Prometheus endpoint: translation, accumulation, bounds."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from flowtel.config import FlowtelConfig
from flowtel.exporters.prometheus import PrometheusExporter
from flowtel.exporters.prometheus_config import PrometheusExporterConfig, ReceivedMetricsConfig
from flowtel.exporters.prometheus_names import COUNTER, GAUGE, HISTOGRAM, label_name, labels, metric_name
from flowtel.processors.catalog import FLOW_LATENCY
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

from conftest import scrape
from monitoring_tools import PrometheusServer, tool


@pytest.mark.parametrize(("name", "unit", "kind", "monotonic", "expected"), [
    ("http.server.request.duration", "s", HISTOGRAM, False, "http_server_request_duration_seconds"),
    ("flow_latency", "ms", HISTOGRAM, False, "flow_latency_milliseconds"),
    ("requests", "1", COUNTER, True, "requests_total"),
    ("requests.total.count", "{request}", COUNTER, True, "requests_count_total"),
    ("memory.usage", "By", GAUGE, False, "memory_usage_bytes"),
    ("cpu.utilization", "1", GAUGE, False, "cpu_utilization_ratio"),
    ("queue", "{item}", GAUGE, False, "queue"),
    ("throughput", "By/s", GAUGE, False, "throughput_bytes_per_second"),
    ("latency_seconds", "s", HISTOGRAM, False, "latency_seconds"),
    ("2xx..responses", "", COUNTER, False, "_2xx_responses"),
    ("active", "", COUNTER, False, "active"),
])
def test_metric_names_follow_the_specification(name: str, unit: str, kind: str, monotonic: bool,
                                                 expected: str) -> None:
    assert metric_name(name, unit, kind, monotonic) == expected


def test_label_names_are_sanitised_and_colliding_keys_joined_in_key_order() -> None:
    assert label_name("http.route") == "http_route"
    assert label_name("0day") == "key_0day"
    assert label_name("_private") == "key_private"
    assert label_name("__reserved") == "__reserved"
    assert label_name("") == "key_"  # found by fuzzing: an empty key made the scrape unparsable ({="v"})
    assert label_name("__name__") == "key__name__"  # found by fuzzing: a second __name__ broke the scrape
    assert labels([("b.c", "2"), ("a", "x"), ("b_c", "1")]) == {"b_c": "2;1", "a": "x"}
    assert labels([("b_c", "1"), ("b.c", "2")]) == {"b_c": "2;1"}


def test_config_defaults_are_upstreams_where_upstream_has_the_key() -> None:
    config = ReceivedMetricsConfig()
    assert config.metric_expiration == 300.0
    assert config.resource_to_telemetry_conversion.enabled is False
    assert config.duplicate_derived_metrics == "drop"
    assert ReceivedMetricsConfig.model_validate({"metric_expiration": "2s"}).metric_expiration == 2.0


# -- received metrics from the real SDK, through the exporter, on a real scrape --------------------------------

OPENMETRICS_TIMEOUT_S = 10.0


@dataclass
class App:
    """An app's MeterProvider whose collections become OTLP requests as its OTLP exporter would send them."""

    provider: MeterProvider
    reader: InMemoryMetricReader
    tracer: Any

    @property
    def meter(self) -> Any:
        return self.provider.get_meter("app.meter", "1.2.3")

    def request(self) -> ExportMetricsServiceRequest:
        data = self.reader.get_metrics_data()
        assert data is not None
        # Through bytes, as a receiver gets it: the collector parses with upb.
        return ExportMetricsServiceRequest.FromString(encode_metrics(data).SerializeToString())


def make_app(delta: bool = False, **resource: str) -> App:
    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    reader = InMemoryMetricReader(preferred_temporality={cls: temporality for cls in (
        Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)})
    attrs = {"service.name": "shop", "service.namespace": "prod", "service.instance.id": "pod-1",
             "deployment.environment": "test", **resource}
    provider = MeterProvider(resource=Resource.create(attrs), metric_readers=[reader])
    tracer = TracerProvider().get_tracer("app")
    return App(provider, reader, tracer)


@pytest.fixture
def exporter_factory() -> Iterator[Callable[..., tuple[PrometheusExporter, SelfMetrics]]]:
    made: list[PrometheusExporter] = []

    def make(**config: Any) -> tuple[PrometheusExporter, SelfMetrics]:
        self_metrics = SelfMetrics()
        exporter = PrometheusExporter("prometheus", PrometheusExporterConfig.model_validate(
            {"endpoint": "127.0.0.1:0", **config}), self_metrics=self_metrics)
        provider = MeterProvider(metric_readers=[exporter.reader])
        self_metrics.bind(provider)
        exporter.start()
        made.append(exporter)
        return exporter, self_metrics

    yield make
    for exporter in made:
        exporter.shutdown(0)


def send(exporter: PrometheusExporter, request: ExportMetricsServiceRequest) -> None:
    points = sum(len(getattr(m, m.WhichOneof("data")).data_points)
                 for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
    exporter.export_metrics(request, request.SerializeToString(), points)


JOB = {"job": "prod/shop", "instance": "pod-1", "otel_scope_name": "app.meter", "otel_scope_version": "1.2.3"}


def test_counter_updown_gauge_and_histogram_appear_with_exactly_the_values_sent(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    app = make_app()
    meter = app.meter
    requests = meter.create_counter("http.requests", unit="{request}", description="Requests served")
    active = meter.create_up_down_counter("queue.depth", unit="{item}")
    temperature = meter.create_gauge("room.temperature", unit="Cel")
    latency = meter.create_histogram("http.server.duration", unit="s",
                                     explicit_bucket_boundaries_advisory=[0.1, 0.5, 1.0])
    requests.add(3, {"route": "/a"})
    requests.add(4, {"route": "/b"})
    active.add(5)
    active.add(-2)
    temperature.set(21.5, {"room.name": "lab"})
    for value in (0.05, 0.3, 0.3, 2.0):
        latency.record(value, {"http.route": "/a"})
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert got.find("http_requests_total", route="/a")[0].labels == {**JOB, "route": "/a"}
    assert got.value("http_requests_total", route="/a") == 3
    assert got.value("http_requests_total", route="/b") == 4
    assert got.value("queue_depth", **JOB) == 3
    assert got.value("room_temperature_celsius", room_name="lab") == 21.5
    buckets = {s.labels["le"]: s.value for s in got.find("http_server_duration_seconds_bucket", http_route="/a")}
    assert buckets == {"0.1": 1, "0.5": 3, "1.0": 3, "+Inf": 4}
    assert got.value("http_server_duration_seconds_count", http_route="/a") == 4
    assert got.value("http_server_duration_seconds_sum", http_route="/a") == pytest.approx(2.65)
    assert got.find("target_info")[0].labels == {"job": "prod/shop", "instance": "pod-1",
                                                  "deployment_environment": "test", "telemetry_sdk_language": "python",
                                                  "telemetry_sdk_name": "opentelemetry",
                                                  "telemetry_sdk_version": ANY_VERSION}
    assert self_metrics.count("otelcol.exporter.sent.metric_points", exporter="prometheus") == 5

    requests.add(10, {"route": "/a"})  # cumulative: the next export carries the running total
    send(exporter, app.request())
    assert scrape(exporter.url).value("http_requests_total", route="/a") == 13


class _AnyVersion(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(re.fullmatch(r"\d+\.\d+\.\d+\S*", other))

    __hash__ = str.__hash__


ANY_VERSION = _AnyVersion("x.y.z")


def test_delta_temporality_accumulates_across_exports_and_replays_are_dropped(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    app = make_app(delta=True)
    requests = app.meter.create_counter("jobs.done")
    sizes = app.meter.create_histogram("job.size", unit="By", explicit_bucket_boundaries_advisory=[10, 100])
    stock = app.meter.create_up_down_counter("stock")
    requests.add(2)
    sizes.record(5)
    stock.add(10)
    first = app.request()
    send(exporter, first)
    requests.add(5)
    sizes.record(50)
    sizes.record(500)
    stock.add(-3)
    send(exporter, app.request())
    assert app.reader.get_metrics_data() is None  # an interval with no measurement: the SDK sends nothing
    requests.add(1)
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert got.value("jobs_done_total") == 8
    assert got.value("stock") == 7
    assert {s.labels["le"]: s.value for s in got.find("job_size_bytes_bucket")} == {
        "10.0": 1, "100.0": 2, "+Inf": 3}
    assert got.value("job_size_bytes_sum") == 555
    send(exporter, first)  # a replayed request would count twice
    assert scrape(exporter.url).value("jobs_done_total") == 8
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="out_of_order") == 3


def test_exemplars_are_kept_on_buckets_and_counters_in_openmetrics(exporter_factory) -> None:
    exporter, _ = exporter_factory()
    app = make_app()
    latency = app.meter.create_histogram("rpc.duration", unit="ms", explicit_bucket_boundaries_advisory=[10, 100])
    calls = app.meter.create_counter("rpc.calls")
    with app.tracer.start_as_current_span("call") as span:
        latency.record(42, {"rpc": "x"})
        calls.add(1, {"rpc": "x"})
        context = span.get_span_context()
    send(exporter, app.request())
    send(exporter, app.request())  # the next cumulative export carries no exemplar: the last one stays

    got = scrape(exporter.url, openmetrics=True)
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    bucket = got.find("rpc_duration_milliseconds_bucket", le="100.0")[0]
    assert bucket.value == 1
    assert bucket.exemplar.labels == {"trace_id": trace_id, "span_id": span_id}
    assert bucket.exemplar.value == 42
    assert got.find("rpc_duration_milliseconds_bucket", le="10.0")[0].exemplar is None
    counter = got.find("rpc_calls_total")[0]
    assert counter.exemplar.labels == {"trace_id": trace_id, "span_id": span_id}
    assert counter.exemplar.value == 1


def test_resource_attributes_promoted_to_labels_when_configured(exporter_factory) -> None:
    promoted, _ = exporter_factory(promote_resource_attributes=["deployment.environment"])
    everything, _ = exporter_factory(resource_to_telemetry_conversion={"enabled": True})
    plain, _ = exporter_factory()
    app = make_app(**{"k8s.pod.name": "web-1"})
    app.meter.create_counter("hits").add(1, {"deployment.environment": "from-point"})
    app.meter.create_counter("misses").add(1)
    request = app.request()
    for exporter in (promoted, everything, plain):
        send(exporter, request)

    assert scrape(promoted.url).find("misses_total")[0].labels == {**JOB, "deployment_environment": "test"}
    assert scrape(promoted.url).value("hits_total", deployment_environment="from-point") == 1  # the point wins
    labels_all = scrape(everything.url).find("misses_total")[0].labels
    assert labels_all["k8s_pod_name"] == "web-1"
    assert labels_all["deployment_environment"] == "test"
    assert labels_all["telemetry_sdk_language"] == "python"
    assert scrape(plain.url).find("misses_total")[0].labels == JOB
    assert scrape(plain.url).find("target_info")[0].labels["k8s_pod_name"] == "web-1"


def test_series_that_stop_are_no_longer_exposed_after_metric_expiration(exporter_factory) -> None:
    exporter, _ = exporter_factory(metric_expiration="300ms")
    app = make_app()
    app.meter.create_counter("beats").add(1)
    send(exporter, app.request())
    assert scrape(exporter.url).value("beats_total") == 1
    assert scrape(exporter.url).find("target_info")
    deadline = time.monotonic() + 10
    while scrape(exporter.url).find("beats_total") and time.monotonic() < deadline:
        time.sleep(0.05)
    got = scrape(exporter.url)
    assert not got.find("beats_total")
    assert not got.find("target_info")
    send(exporter, app.request())  # the app comes back: its series does too, with its running total
    assert scrape(exporter.url).value("beats_total") == 1


def _promptflow_metric(app: App) -> Any:
    """prompt flow serving's flow_latency as it sends it: its own flow id label, the SDK's default buckets."""
    return app.meter.create_histogram("flow_latency", unit="ms")


def test_received_copies_of_derived_metrics_are_dropped_and_counted_by_default(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    exporter.add_producer(FlowtelMetrics(FlowtelConfig(), self_metrics))
    app = make_app()
    _promptflow_metric(app).record(120, {"flow": "default_flow_id", "response_code": "200"})
    app.meter.create_counter("flow_request").add(1, {"flow": "default_flow_id"})
    app.meter.create_counter("app.own").add(2)
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert not [s for s in got.samples if s.labels.get("flow") == "default_flow_id"]
    assert got.value("app_own_total") == 2
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="derived_duplicate") == 2
    assert got.value("otelcol_exporter_send_failed_metric_points_total", reason="derived_duplicate") == 2


def test_received_copies_of_derived_metrics_kept_under_a_prefix_when_configured(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(duplicate_derived_metrics="prefix", duplicate_prefix="pf_")
    metrics = FlowtelMetrics(FlowtelConfig(), self_metrics)
    exporter.add_producer(metrics)
    metrics.record(FLOW_LATENCY, 5.0, ("chat", "200", "False", "default"), {})
    app = make_app()
    _promptflow_metric(app).record(120, {"flow": "default_flow_id"})
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert got.value("flow_latency_count", flow="chat") == 1  # the derived one, untouched
    assert not got.find("flow_latency_count", flow="default_flow_id")
    assert got.value("pf_flow_latency_milliseconds_count", flow="default_flow_id") == 1
    assert got.value("pf_flow_latency_milliseconds_bucket", flow="default_flow_id", le="250.0") == 1


def test_names_of_the_collectors_own_metrics_and_other_types_are_never_shared(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    app = make_app()
    app.meter.create_counter("otelcol.exporter.sent.metric_points", unit="{datapoint}").add(1000)
    app.meter.create_gauge("jobs").set(3)
    app.meter.create_histogram("latency", explicit_bucket_boundaries_advisory=[1.0]).record(0.5)
    send(exporter, app.request())
    other = make_app()
    other.meter.create_counter("jobs").add(1)  # a counter where a gauge is: jobs_total would clash with jobs
    other.meter.create_gauge("latency_count").set(7)  # would clash with the histogram's _count
    send(exporter, other.request())

    got = scrape(exporter.url)
    assert got.value("otelcol_exporter_sent_metric_points_total", exporter="prometheus") == 2  # ours, not theirs
    assert not got.find("otelcol_exporter_sent_metric_points_total", job="prod/shop")
    assert got.value("jobs") == 3
    assert not got.find("jobs_total")
    assert got.value("latency_count") == 1
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="name_conflict") == 3


def test_cardinality_limit_folds_new_label_sets_into_the_overflow_series(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(cardinality_limit=2)
    app = make_app()
    counter = app.meter.create_counter("tenants.requests")
    for tenant, n in (("a", 1), ("b", 2), ("c", 4), ("d", 8)):
        counter.add(n, {"tenant": tenant})
    send(exporter, app.request())
    counter.add(16, {"tenant": "c"})
    counter.add(32, {"tenant": "a"})
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert {s.labels.get("tenant", "") for s in got.find("tenants_requests_total")} == {"a", "b", ""}
    assert got.value("tenants_requests_total", tenant="a") == 33
    assert got.value("tenants_requests_total", otel_metric_overflow="true") == 4 + 8 + 16  # increases only
    assert self_metrics.count("flowtel.metric.overflow", metric="tenants_requests") == 4  # c, d; then c, d again


def test_long_label_values_are_cut_to_the_byte_limit_and_counted(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(label_value_max_bytes=16)
    app = make_app()
    app.meter.create_counter("words").add(1, {"word": "é" * 20, "short": "ok"})
    send(exporter, app.request())

    labels_seen = scrape(exporter.url).find("words_total")[0].labels
    assert labels_seen["word"] == "é" * 8
    assert labels_seen["short"] == "ok"
    send(exporter, app.request())  # each point whose labels were cut counts
    assert self_metrics.count("flowtel.metric.labels.cut", metric="words") == 2


def test_labels_per_point_are_limited_and_long_names_cut_and_counted(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(label_count_limit=5, label_value_max_bytes=16,
                                              resource_to_telemetry_conversion={"enabled": True})
    attributes = {f"a{i:03d}": str(i) for i in range(200)}
    app = make_app(**{f"r{i:03d}": "x" for i in range(50)})
    app.meter.create_counter("wide").add(1, attributes)
    app.meter.create_counter("named").add(1, {"k" * 40: "v"})
    send(exporter, app.request())

    samples = scrape(exporter.url)
    wide = samples.find("wide_total")[0].labels
    point_labels = {k for k in wide if k.startswith("a")}
    promoted = set(wide) - point_labels - set(JOB)
    assert point_labels == {"a000", "a001", "a002", "a003", "a004"}  # the first five of the point's 200
    assert len(promoted) == 5  # of the resource's 50-odd attributes: promotion has the same bound
    assert "k" * 16 in samples.find("named_total")[0].labels  # an attribute name is cut as a value is
    assert self_metrics.count("flowtel.metric.labels.cut", metric="wide") == 1
    assert self_metrics.count("flowtel.metric.labels.cut", metric="named") == 1


def test_exponential_histograms_are_dropped_and_counted(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "exp"}), metric_readers=[reader],
                             views=[View(instrument_name="sizes",
                                         aggregation=ExponentialBucketHistogramAggregation())])
    sizes = provider.get_meter("m").create_histogram("sizes")
    sizes.record(3, {"a": "1"})
    sizes.record(5, {"a": "2"})
    data = reader.get_metrics_data()
    assert data is not None
    send(exporter, ExportMetricsServiceRequest.FromString(encode_metrics(data).SerializeToString()))

    assert not scrape(exporter.url).find("sizes_count")
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="unsupported_type") == 2


# -- edge cases no SDK sends: hand-made requests ---------------------------------------------------------------

T0 = 1_700_000_000_000_000_000


def _request_with(fill: Callable[[Any], None], **resource: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    for key, value in {"service.name": "edge", **resource}.items():
        rm.resource.attributes.add(key=key).value.string_value = value
    sm = rm.scope_metrics.add()
    sm.scope.name = "edge.scope"
    fill(sm)
    return request


def _attrs(point: Any, **attrs: Any) -> None:
    for key, value in attrs.items():
        kv = point.attributes.add(key=key)
        if isinstance(value, list):
            for item in value:
                kv.value.array_value.values.add().string_value = item
        else:
            kv.value.string_value = value


def test_summaries_are_exposed_with_quantiles_sum_and_count(exporter_factory) -> None:
    exporter, _ = exporter_factory()

    def fill(sm: Any) -> None:
        metric = sm.metrics.add(name="rpc.latency", unit="s")
        point = metric.summary.data_points.add(start_time_unix_nano=T0, time_unix_nano=T0 + 1, count=4, sum=2.5)
        for quantile, value in ((0.5, 0.4), (0.99, 1.5)):
            point.quantile_values.add(quantile=quantile, value=value)
        _attrs(point, method="get")

    send(exporter, _request_with(fill))
    got = scrape(exporter.url)
    assert got.value("rpc_latency_seconds", quantile="0.5", method="get") == 0.4
    assert got.value("rpc_latency_seconds", quantile="0.99") == 1.5
    assert got.value("rpc_latency_seconds_sum") == 2.5
    assert got.value("rpc_latency_seconds_count") == 4


def test_malformed_points_are_dropped_and_counted_and_the_rest_kept(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()

    def fill(sm: Any) -> None:
        bad_buckets = sm.metrics.add(name="h").histogram
        bad_buckets.aggregation_temporality = 2
        bad_buckets.data_points.add(time_unix_nano=T0, count=3, explicit_bounds=[1, 2], bucket_counts=[1, 2])
        unset = sm.metrics.add(name="s").sum
        unset.is_monotonic = True
        unset.data_points.add(time_unix_nano=T0, as_int=1)
        negative = sm.metrics.add(name="neg").sum
        negative.is_monotonic, negative.aggregation_temporality = True, 2
        negative.data_points.add(time_unix_nano=T0, as_double=-1)
        twice = sm.metrics.add(name="q").summary.data_points.add(time_unix_nano=T0, count=2, sum=3)
        twice.quantile_values.add(quantile=0.5, value=1)  # found by fuzzing: a quantile given twice was
        twice.quantile_values.add(quantile=0.5, value=2)  # exposed twice (q{quantile="0.5"} 1.0 and 2.0)
        good = sm.metrics.add(name="ok").sum
        good.is_monotonic, good.aggregation_temporality = True, 2
        good.data_points.add(time_unix_nano=T0, as_int=5)
        _attrs(good.data_points[0], tags=["a", 'b"c'])

    send(exporter, _request_with(fill))
    got = scrape(exporter.url)
    assert got.find("ok_total")[0].labels["tags"] == '["a","b\\"c"]'  # arrays as JSON
    assert got.value("ok_total") == 5
    assert not got.find("h_count") and not got.find("s_total") and not got.find("neg_total")
    assert not got.find("q_count")
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="invalid") == 4


def test_a_point_without_recorded_value_ends_its_series(exporter_factory) -> None:
    exporter, _ = exporter_factory()

    def gauge(flags: int, time_ns: int) -> Callable[[Any], None]:
        def fill(sm: Any) -> None:
            point = sm.metrics.add(name="temp").gauge.data_points.add(time_unix_nano=time_ns, as_double=20,
                                                                      flags=flags)
            _attrs(point, room="a")
        return fill

    send(exporter, _request_with(gauge(0, T0)))
    assert scrape(exporter.url).value("temp", room="a") == 20
    send(exporter, _request_with(gauge(1, T0 + 1)))
    assert not scrape(exporter.url).find("temp")


def test_delta_histograms_past_the_cardinality_limit_fold_into_the_overflow_series(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(cardinality_limit=1)
    app = make_app(delta=True)
    histogram = app.meter.create_histogram("size", explicit_bucket_boundaries_advisory=[10])
    histogram.record(1, {"k": "a"})
    histogram.record(20, {"k": "b"})
    histogram.record(30, {"k": "c"})
    send(exporter, app.request())
    histogram.record(5, {"k": "b"})
    send(exporter, app.request())

    got = scrape(exporter.url)
    assert got.value("size_count", k="a") == 1
    overflow = {s.labels["le"]: s.value for s in got.find("size_bucket", otel_metric_overflow="true")}
    assert overflow == {"10.0": 1, "+Inf": 3}
    assert got.value("size_sum", otel_metric_overflow="true") == 55
    assert self_metrics.count("flowtel.metric.overflow", metric="size") == 3


def test_metrics_past_max_metrics_are_dropped_until_others_expire(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory(max_metrics=2)
    app = make_app()
    for name in ("one", "two", "three"):
        app.meter.create_counter(name).add(1)
    send(exporter, app.request())
    got = scrape(exporter.url)
    assert sorted(s.name for s in got.samples if s.name in ("one_total", "two_total", "three_total")) == [
        "one_total", "two_total"]
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="metric_limit") == 1


def test_a_failure_inside_the_translation_costs_the_request_counted(exporter_factory, monkeypatch) -> None:
    exporter, self_metrics = exporter_factory()
    app = make_app()
    app.meter.create_counter("fine").add(1)
    request = app.request()

    def broken(*args: Any, **kwargs: Any) -> dict[str, int]:
        raise RuntimeError("bug")

    monkeypatch.setattr(exporter.received, "consume", broken)
    send(exporter, request)
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="internal_error") == 1
    monkeypatch.undo()
    send(exporter, request)
    assert scrape(exporter.url).value("fine_total") == 1


def test_concurrent_senders_and_scrapes_lose_nothing(exporter_factory) -> None:
    exporter, _ = exporter_factory()
    apps = [make_app(delta=True, **{"service.instance.id": f"pod-{i}"}) for i in range(4)]
    counters = [app.meter.create_counter("work") for app in apps]
    requests: list[list[ExportMetricsServiceRequest]] = [[] for _ in apps]
    for i, (app, counter) in enumerate(zip(apps, counters, strict=True)):
        for n in range(30):
            counter.add(n + i)
            requests[i].append(app.request())
    errors: list[BaseException] = []

    def sender(batch: list[ExportMetricsServiceRequest]) -> None:
        try:
            for request in batch:
                send(exporter, request)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=sender, args=(batch,)) for batch in requests]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        scrape(exporter.url)
    for thread in threads:
        thread.join(10)
    assert not errors
    got = scrape(exporter.url)
    for i in range(4):
        assert got.value("work_total", instance=f"pod-{i}") == sum(n + i for n in range(30))


# -- the real Prometheus tools -----------------------------------------------------------------------------------


def _everything(exporter: PrometheusExporter) -> None:
    app = make_app()
    meter = app.meter
    meter.create_counter("http.requests", unit="{request}").add(3, {"route": "/a"})
    meter.create_histogram("http.server.duration", unit="s",
                           explicit_bucket_boundaries_advisory=[0.1, 1.0]).record(0.3, {"route": "/a"})
    meter.create_up_down_counter("queue.depth").add(4)
    meter.create_gauge("cpu.utilization", unit="1").set(0.25)
    send(exporter, app.request())


def test_the_exposition_passes_promtool_lint(exporter_factory) -> None:
    exporter, _ = exporter_factory()
    _everything(exporter)
    with urllib.request.urlopen(exporter.url, timeout=10) as response:
        text = response.read()
    done = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60)
    received_problems = [line for line in done.stdout.decode().splitlines() + done.stderr.decode().splitlines()
                         if any(name in line for name in ("http_requests", "http_server_duration", "queue_depth",
                                                          "cpu_utilization", "target_info"))]
    assert received_problems == []
    assert b"http_requests_total" in text  # the lint saw the received families


def test_a_real_prometheus_scrapes_the_received_metrics_with_their_job_and_instance(exporter_factory,
                                                                                  tmp_path) -> None:
    exporter, _ = exporter_factory()
    _everything(exporter)
    prometheus = PrometheusServer(tmp_path, {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "flowtel", "honor_labels": True,
                            "static_configs": [{"targets": [exporter.url.split("/")[2]]}]}],
    }).start()
    try:
        deadline = time.monotonic() + 30
        while not prometheus.query("http_requests_total") and time.monotonic() < deadline:
            time.sleep(0.2)
        [requests] = prometheus.query("http_requests_total")
        assert requests["metric"]["job"] == "prod/shop" and requests["metric"]["instance"] == "pod-1"
        assert requests["value"][1] == "3"
        [p50] = prometheus.query('histogram_quantile(0.5, http_server_duration_seconds_bucket{route="/a"})')
        assert 0.1 < float(p50["value"][1]) <= 1.0
        assert prometheus.query("queue_depth")[0]["value"][1] == "4"
        assert prometheus.query("cpu_utilization_ratio")[0]["value"][1] == "0.25"
        [info] = prometheus.query("target_info")
        assert info["metric"]["deployment_environment"] == "test"
        # The collector's own metrics come from the scrape target itself.
        assert prometheus.query('otelcol_exporter_sent_metric_points_total{exporter="prometheus"}')
    finally:
        prometheus.stop()


def test_the_duplicate_policy_ignores_the_case_of_instrument_names(exporter_factory) -> None:
    exporter, self_metrics = exporter_factory()
    exporter.add_producer(FlowtelMetrics(FlowtelConfig(), self_metrics))

    def fill(sm: Any) -> None:  # an SDK that keeps the case it was given (the Python SDK lowercases)
        total = sm.metrics.add(name="Flow_Request").sum
        total.is_monotonic, total.aggregation_temporality = True, 2
        total.data_points.add(time_unix_nano=T0, as_int=1)

    send(exporter, _request_with(fill))
    assert not scrape(exporter.url).find("Flow_Request_total")
    assert self_metrics.count("otelcol.exporter.send_failed.metric_points", exporter="prometheus",
                              reason="derived_duplicate") == 1


def test_point_attributes_named_like_the_exposition_labels_are_renamed_and_the_scrape_parses(exporter_factory) -> None:
    """Found by fuzzing: a histogram point's ``le`` attribute was overwritten on its buckets and kept on its
    ``_count`` / ``_sum`` (two points differing only in it exposed the same bucket twice); a summary's ``quantile``
    likewise; an attribute key ``""`` or ``__name__`` made the whole scrape unparsable."""
    exporter, _ = exporter_factory()
    app = make_app()
    latency = app.meter.create_histogram("latency", unit="s")
    for le in ("a", "b"):
        latency.record(0.2, {"le": le, "__name__": "x"})  # (the SDK drops a "" key)
    send(exporter, app.request())
    served = scrape(exporter.url)  # parses (prometheus_client raises on an unparsable exposition)
    buckets = served.find("latency_seconds_bucket", le="+Inf")
    assert sorted(b.labels["key_le"] for b in buckets) == ["a", "b"]
    assert all(b.value == 1 and b.labels["key__name__"] == "x" for b in buckets)
    assert served.value("latency_seconds_count", key_le="a") == 1
