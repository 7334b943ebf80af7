"""Expose flowtel's meter provider to Prometheus, with exemplars and optional auth / TLS.

``PrometheusMetricReader`` is a pull reader: each scrape collects the meter provider
(cumulative temporality) and flowtel's derived metrics (``add_producer``) and converts
them with prometheus-client, which negotiates the
text format or, when the scraper asks for ``application/openmetrics-text``, OpenMetrics
with exemplars (``trace_id``, ``span_id``) on histogram buckets.

Settings: ``PrometheusSettings`` (``exporters/prometheus_config.py``), read from the environment in-process
(defaults): ``OTEL_EXPORTER_PROMETHEUS_HOST`` (127.0.0.1), ``OTEL_EXPORTER_PROMETHEUS_PORT`` (9464),
``FLOWTEL_PROMETHEUS_BEARER_TOKEN`` (none), ``FLOWTEL_PROMETHEUS_TLS_CERT_FILE`` / ``_KEY_FILE`` (none: plain
HTTP) / ``_CLIENT_CA_FILE``; the collector's ``prometheus`` exporter reads the same model from its config file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Metric as OtelMetric
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar

from flowtel._fork import reinit_after_fork
from flowtel._log import logger, warn_once
from flowtel._wsgi import WSGIEndpoint, bearer_auth
from flowtel.processors.catalog import ALL_METRICS, prometheus_name
from flowtel.processors.metrics import Consumer, FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import BearerToken, split_endpoint

from .prometheus_config import PrometheusExporterConfig, PrometheusSettings

if TYPE_CHECKING:  # the collector's modules import the in-process ones, not the other way round
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from .received_metrics import ReceivedMetrics

_CUMULATIVE: dict[type, AggregationTemporality] = {cls: AggregationTemporality.CUMULATIVE for cls in (
    Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)}


def _label_name(key: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)
    return "_" + out if out[:1].isdigit() else out


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_label_value(v) for v in value)
    return str(value)


def _labels(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    return {_label_name(k): _label_value(v) for k, v in (attributes or {}).items()}


class PrometheusMetricReader(MetricReader):
    def __init__(self) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE)
        self._latest: MetricsData | None = None
        self._producers: list[tuple[FlowtelMetrics, Consumer]] = []
        self._collect_lock = threading.Lock()
        reinit_after_fork(self, "_collect_lock")
        # The SDK hands each exemplar to one collection only; keep the last one per bucket so every
        # scrape (and every scraper) sees it. Bounded by series x buckets, which the limit bounds.
        self._exemplars: dict[tuple[str, frozenset[tuple[str, str]]], dict[int, Exemplar]] = {}

    def add_producer(self, metrics: FlowtelMetrics) -> None:
        """Serve flowtel's derived metrics too, cumulative, on every scrape."""
        self._producers.append((metrics, metrics.consumer()))

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._latest = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass

    def families(self) -> list[Metric]:
        with self._collect_lock:
            self._latest = None
            self.collect()
            data = self._latest
            derived = [m for metrics, consumer in self._producers for m in metrics.produce(consumer)]
            return list(self._convert(data, derived))

    def _convert(self, data: MetricsData | None, derived: Iterable[OtelMetric]) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        sdk_metrics = (metric for resource_metrics in (data.resource_metrics if data else ())
                       for scope_metrics in resource_metrics.scope_metrics for metric in scope_metrics.metrics)
        for metric in (*sdk_metrics, *derived):
            _add_metric(merged, metric.name, metric.unit or "", metric.description or "", metric.data,
                        self._exemplars)
        yield from merged.values()


def _family(merged: dict[str, Metric], name: str, doc: str, typ: str) -> Metric:
    family = merged.get(name)
    if family is None:
        family = merged[name] = Metric(name, doc, typ)
    return family


ExemplarCache = dict[tuple[str, frozenset[tuple[str, str]]], dict[int, Exemplar]]


def _add_metric(merged: dict[str, Metric], otel_name: str, unit: str, doc: str, data: Any,
                exemplar_cache: ExemplarCache) -> None:
    name = prometheus_name(otel_name, unit)
    if isinstance(data, Sum):
        typ = "counter" if data.is_monotonic else "gauge"
        family = _family(merged, name, doc, typ)
        sample_name = f"{name}_total" if typ == "counter" else name
        for point in data.data_points:
            family.add_sample(sample_name, _labels(point.attributes), point.value)
    elif isinstance(data, Gauge):
        family = _family(merged, name, doc, "gauge")
        for point in data.data_points:
            family.add_sample(name, _labels(point.attributes), point.value)
    elif isinstance(data, HistogramData):
        family = _family(merged, name, doc, "histogram")
        for histogram_point in data.data_points:
            labels = _labels(histogram_point.attributes)
            exemplars = exemplar_cache.setdefault((name, frozenset(labels.items())), {})
            exemplars.update(_bucket_exemplars(histogram_point.explicit_bounds, histogram_point.exemplars))
            cumulative = 0
            bounds = [*histogram_point.explicit_bounds, float("inf")]
            for i, (bound, count) in enumerate(zip(bounds, histogram_point.bucket_counts, strict=True)):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                family.add_sample(f"{name}_bucket", {**labels, "le": le}, cumulative, exemplar=exemplars.get(i))
            family.add_sample(f"{name}_count", labels, histogram_point.count)
            family.add_sample(f"{name}_sum", labels, histogram_point.sum)


def _bucket_exemplars(bounds: Iterable[float], exemplars: Iterable[Any]) -> dict[int, Exemplar]:
    out: dict[int, Exemplar] = {}
    bounds = list(bounds)
    for ex in exemplars or ():
        if not ex.trace_id:
            continue
        index = next((i for i, b in enumerate(bounds) if ex.value <= b), len(bounds))
        out[index] = Exemplar({"trace_id": f"{ex.trace_id:032x}", "span_id": f"{ex.span_id:016x}"},
                              ex.value, ex.time_unix_nano / 1e9)
    return out


class _Bridge:
    """prometheus-client collector that reads the OpenTelemetry reader on every scrape."""

    def __init__(self, reader: PrometheusMetricReader) -> None:
        self._reader = reader

    def collect(self) -> list[Metric]:
        return self._reader.families()


class PrometheusEndpoint:
    """Serves ``/metrics`` for a ``PrometheusMetricReader`` (any path answers, as prometheus-client does)."""

    def __init__(self, reader: PrometheusMetricReader, settings: PrometheusSettings | None = None,
                 extra_collectors: Iterable[Any] = (), bridge: Any = None, token: BearerToken | None = None) -> None:
        """``token``: the check of a token resolved elsewhere (the collector's ``bearertokenauth`` extension);
        without it, ``settings.bearer_token`` (in-process) if set. Either way one ``BearerToken`` checks it."""
        settings = settings or PrometheusSettings.from_env()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(bridge or _Bridge(reader))
        for collector in extra_collectors:
            self.registry.register(collector)
        app = bearer_auth(make_wsgi_app(self.registry), token if token is not None else settings.bearer_token)
        host, port = split_endpoint(settings.endpoint)
        self._endpoint = WSGIEndpoint(app, host, port, name="flowtel-prometheus",
                                      tls=settings.tls.settings() if settings.tls is not None else None)

    @property
    def url(self) -> str:
        return f"{self._endpoint.url}/metrics"

    @property
    def port(self) -> int:
        return self._endpoint.port

    def start(self) -> PrometheusEndpoint:
        self._endpoint.start()
        return self

    def shutdown(self) -> None:
        self._endpoint.shutdown()


class _ExporterBridge:
    """One scrape: the reader's families (derived and self metrics), then received ones under other names."""

    def __init__(self, reader: PrometheusMetricReader, received: ReceivedMetrics) -> None:
        self._reader = reader
        self._received = received

    def collect(self) -> list[Metric]:
        own = self._reader.families()
        taken = {m.name for m in own} | {s.name for m in own for s in m.samples}
        return [*own, *self._received.families(exclude=taken)]


class PrometheusExporter:
    """The collector's ``prometheus`` exporter: a pull endpoint for derived, received and self metrics.

    In a traces pipeline it takes no spans; every ``flowtel`` processor of the pipelines it is
    listed in adds its derived metrics (``add_producer``), and the collector's own metrics
    are always served. In a metrics pipeline ``export_metrics`` hands the received OTLP
    metrics to its ``ReceivedMetrics`` (``received_metrics``), served on the same endpoint.
    """

    def __init__(self, exporter_id: str, config: PrometheusExporterConfig, token: BearerToken | None = None,
                 self_metrics: SelfMetrics | None = None) -> None:
        """``token``: the running ``bearertokenauth`` extension ``config.auth`` names (none: no token needed)."""
        self.id = exporter_id
        self.reader = PrometheusMetricReader()
        self._self = self_metrics
        from .received_metrics import ReceivedMetrics, reserved_family_names

        self.received = ReceivedMetrics(config, self_metrics, reserved_names=reserved_family_names())
        self._derived_names: set[str] = set()
        self._config = config
        self._token = token
        self._endpoint: PrometheusEndpoint | None = None

    def add_producer(self, metrics: FlowtelMetrics) -> None:
        self.reader.add_producer(metrics)
        self._derived_names.update(spec.name for spec in ALL_METRICS)

    def start(self) -> None:
        bridge = _ExporterBridge(self.reader, self.received)
        self._endpoint = PrometheusEndpoint(self.reader, self._config, bridge=bridge, token=self._token).start()

    @property
    def url(self) -> str:
        return self._endpoint.url if self._endpoint else ""

    def export(self, payload: bytes, spans: int) -> None:
        pass

    def export_metrics(self, request: ExportMetricsServiceRequest, payload: bytes, points: int) -> None:
        """Expose the received metrics; points it cannot expose are counted per reason and logged once."""
        try:
            dropped = self.received.consume(request, derived_names=self._derived_names)
        except Exception:  # a bug costs this request's points, counted, not the pipeline
            logger.exception("exporter %s: failed exposing %d received metric points", self.id, points)
            dropped = {"internal_error": points}
        lost = 0
        for reason, count in dropped.items():
            lost += count
            warn_once(f"prometheus-received:{self.id}:{reason}",
                      "exporter %s dropped received metric points (reason: %s); counted in "
                      "otelcol_exporter_send_failed_metric_points_total", self.id, reason)
            if self._self is not None:
                self._self.add("otelcol.exporter.send_failed.metric_points", count, self.id, reason)
        if self._self is not None and points > lost:
            self._self.add("otelcol.exporter.sent.metric_points", points - lost, self.id)

    def shutdown(self, deadline: float) -> None:
        if self._endpoint is not None:
            self._endpoint.shutdown()
