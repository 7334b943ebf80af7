"""The Prometheus endpoint end to end: FlowtelMetrics -> PrometheusMetricReader -> HTTP scrape."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from flowtel._wsgi import TLSSettings
from flowtel.config import ConfigError, FlowtelConfig
from flowtel.exporters.prometheus import PrometheusEndpoint, PrometheusMetricReader, PrometheusSettings
from flowtel.processors.catalog import FLOW_LATENCY, FLOW_REQUEST, NODE_REQUEST, RPC_REQUEST, TOKEN_CONSUMPTION
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

from tls_certs import self_signed

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
LATENCY_DIMS = ("chat_flow", "200", "false", "default")
LATENCY_LABELS = {"flow": "chat_flow", "response_code": "200", "streaming": "false", "response_type": "default"}


@dataclass
class Stack:
    metrics: FlowtelMetrics
    self_metrics: SelfMetrics
    endpoint: PrometheusEndpoint

    @property
    def url(self) -> str:
        return self.endpoint.url


Factory = Callable[..., Stack]


@pytest.fixture
def make_stack() -> Iterator[Factory]:
    started: list[tuple[PrometheusEndpoint, MeterProvider]] = []

    def make(config: FlowtelConfig | None = None, **settings: Any) -> Stack:
        config = config or FlowtelConfig()
        reader = PrometheusMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        self_metrics = SelfMetrics(provider)
        metrics = FlowtelMetrics(config, self_metrics)
        reader.add_producer(metrics)
        endpoint = PrometheusEndpoint(reader, PrometheusSettings(host="127.0.0.1", port=0, **settings))
        started.append((endpoint, provider))
        endpoint.start()
        return Stack(metrics, self_metrics, endpoint)

    yield make
    for endpoint, provider in started:
        _stop(endpoint)
        provider.shutdown()


def _stop(endpoint: PrometheusEndpoint) -> None:
    """``shutdown()``, without waiting out serve_forever's 0.5 s poll: connections wake its select()."""
    stopper = threading.Thread(target=endpoint.shutdown)
    stopper.start()
    while stopper.is_alive():
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=0.2).close()
        stopper.join(0.02)


def scrape(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        assert response.status == 200
        return response.read().decode()


Sample = tuple[str, dict[str, str], float]


def text_samples(body: str) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value) for family in parse_text(body) for s in family.samples]


def series(samples: list[Sample], name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, value) for n, labels, value in samples if n == name]


def value_of(samples: list[Sample], name: str, labels: dict[str, str]) -> float:
    found = [value for n, lab, value in samples if n == name and lab == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


# --- text format ---------------------------------------------------------------------------------------------


def test_text_format_histogram_buckets_count_and_sum(make_stack: Factory) -> None:
    stack = make_stack()
    for value in (0.5, 80, 4000):
        stack.metrics.record(FLOW_LATENCY, value, LATENCY_DIMS, resource={}, exemplar=(TRACE_ID, SPAN_ID))
    body = scrape(stack.url)
    samples = text_samples(body)
    buckets = {labels["le"]: value for labels, value in series(samples, "flow_latency_bucket")}
    assert buckets == {
        "1.0": 1, "5.0": 1, "10.0": 1, "25.0": 1, "50.0": 1, "75.0": 1, "100.0": 2, "250.0": 2, "500.0": 2,
        "750.0": 2, "1000.0": 2, "2500.0": 2, "5000.0": 3, "7500.0": 3, "10000.0": 3, "25000.0": 3, "50000.0": 3,
        "75000.0": 3, "100000.0": 3, "300000.0": 3, "+Inf": 3,
    }
    for labels, _ in series(samples, "flow_latency_bucket"):
        assert {k: v for k, v in labels.items() if k != "le"} == LATENCY_LABELS
    assert series(samples, "flow_latency_count") == [(LATENCY_LABELS, 3)]
    assert series(samples, "flow_latency_sum") == [(LATENCY_LABELS, 4080.5)]
    # No exemplars in the classic text format.
    assert "trace_id" not in body
    assert "span_id" not in body
    assert [line for line in body.splitlines() if "#" in line and not line.startswith("#")] == []
    assert "# EOF" not in body


def test_text_format_bucket_edges_are_inclusive(make_stack: Factory) -> None:
    stack = make_stack()
    for value in (1, 100, 300000, 300001):
        stack.metrics.record(FLOW_LATENCY, value, LATENCY_DIMS, resource={})
    samples = text_samples(scrape(stack.url))
    buckets = {labels["le"]: value for labels, value in series(samples, "flow_latency_bucket")}
    assert (buckets["1.0"], buckets["5.0"], buckets["100.0"], buckets["250.0"]) == (1, 1, 2, 2)
    assert (buckets["300000.0"], buckets["+Inf"]) == (3, 4)
    assert series(samples, "flow_latency_sum") == [(LATENCY_LABELS, 600102)]


def test_text_format_counter_sums_per_label_set(make_stack: Factory) -> None:
    stack = make_stack()
    prompt = ("chat_flow", "llm_node", "gpt-4o", "prompt_tokens")
    completion = ("chat_flow", "llm_node", "gpt-4o", "completion_tokens")
    for value in (120, 30, 7):
        stack.metrics.record(TOKEN_CONSUMPTION, value, prompt, resource={})
    stack.metrics.record(TOKEN_CONSUMPTION, 42, completion, resource={})
    samples = text_samples(scrape(stack.url))
    base = {"flow": "chat_flow", "node": "llm_node", "llm_engine": "gpt-4o"}
    assert sorted(series(samples, "token_consumption_total"), key=lambda s: s[0]["token_type"]) == [
        ({**base, "token_type": "completion_tokens"}, 42),
        ({**base, "token_type": "prompt_tokens"}, 157),
    ]


def test_counters_are_cumulative_across_scrapes(make_stack: Factory) -> None:
    stack = make_stack()
    dims = ("f", "200", "", "false")
    labels = {"flow": "f", "response_code": "200", "exception": "", "streaming": "false"}
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={})
    assert value_of(text_samples(scrape(stack.url)), "flow_request_total", labels) == 1
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={})
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={})
    assert value_of(text_samples(scrape(stack.url)), "flow_request_total", labels) == 3


def test_self_metrics_exposed(make_stack: Factory) -> None:
    stack = make_stack()
    stack.self_metrics.dropped("queue_full", 4)
    stack.self_metrics.released("complete", 2)
    stack.self_metrics.released("timeout")
    stack.self_metrics.register_gauge("held_spans", lambda: 12)
    samples = text_samples(scrape(stack.url))
    # Every drop reason is exposed from the start (zero-initialised), so a rate() sees the first drop.
    assert sorted(series(samples, "flowtel_spans_dropped_total"), key=lambda s: s[0]["reason"]) == [
        ({"reason": "internal_error"}, 0), ({"reason": "queue_full"}, 4)]
    assert sorted(series(samples, "flowtel_traces_released_total"), key=lambda s: s[0]["reason"]) == [
        ({"reason": "complete"}, 2), ({"reason": "timeout"}, 1)]
    assert series(samples, "flowtel_spans_held") == [({}, 12)]
    assert series(samples, "flowtel_queue_size") == []  # no gauge registered: no point


# --- OpenMetrics and exemplars -------------------------------------------------------------------------------


def test_openmetrics_bucket_carries_exemplar(make_stack: Factory) -> None:
    stack = make_stack()
    stack.metrics.record(FLOW_LATENCY, 80, LATENCY_DIMS, resource={}, exemplar=(TRACE_ID, SPAN_ID))
    body = scrape(stack.url, {"Accept": OPENMETRICS})
    assert body.rstrip().endswith("# EOF")
    trace_hex, span_hex = f"{TRACE_ID:032x}", f"{SPAN_ID:016x}"
    assert len(trace_hex) == 32
    line = next(line for line in body.splitlines() if line.startswith("flow_latency_bucket") and 'le="100.0"' in line)
    assert f'# {{span_id="{span_hex}",trace_id="{trace_hex}"}} 80.0 ' in line
    families = {f.name: f for f in parse_openmetrics(body)}
    with_exemplar = [s for s in families["flow_latency"].samples if s.exemplar is not None]
    assert len(with_exemplar) == 1
    sample = with_exemplar[0]
    assert (sample.name, sample.labels["le"], sample.value) == ("flow_latency_bucket", "100.0", 1)
    assert sample.exemplar.labels == {"trace_id": trace_hex, "span_id": span_hex}
    assert sample.exemplar.value == 80


def test_openmetrics_one_exemplar_per_bucket_with_its_own_trace(make_stack: Factory) -> None:
    stack = make_stack()
    for i, value in enumerate((0.5, 80, 4000)):
        stack.metrics.record(FLOW_LATENCY, value, LATENCY_DIMS, resource={}, exemplar=(TRACE_ID + i, SPAN_ID + i))
    families = {f.name: f for f in parse_openmetrics(scrape(stack.url, {"Accept": OPENMETRICS}))}
    exemplars = {s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
                 for s in families["flow_latency"].samples if s.exemplar is not None}
    assert exemplars == {"1.0": (f"{TRACE_ID:032x}", 0.5), "100.0": (f"{TRACE_ID + 1:032x}", 80),
                         "5000.0": (f"{TRACE_ID + 2:032x}", 4000)}


def test_no_exemplar_without_span_context(make_stack: Factory) -> None:
    stack = make_stack()
    stack.metrics.record(FLOW_LATENCY, 80, LATENCY_DIMS, resource={})
    body = scrape(stack.url, {"Accept": OPENMETRICS})
    assert "trace_id" not in body


def test_exemplar_survives_an_earlier_scrape(make_stack: Factory) -> None:
    stack = make_stack()
    stack.metrics.record(FLOW_LATENCY, 80, LATENCY_DIMS, resource={}, exemplar=(TRACE_ID, SPAN_ID))
    scrape(stack.url)  # e.g. someone curls the endpoint
    body = scrape(stack.url, {"Accept": OPENMETRICS})
    assert f'trace_id="{TRACE_ID:032x}"' in body


# --- cardinality ---------------------------------------------------------------------------------------------


def test_cardinality_limit_folds_into_overflow_series(make_stack: Factory) -> None:
    stack = make_stack(FlowtelConfig(cardinality_limit=3))
    for i in range(10):
        stack.metrics.record(FLOW_REQUEST, 1, (f"flow{i}", "200", "", "false"), resource={})
    # An existing label set keeps counting after the limit is reached.
    stack.metrics.record(FLOW_REQUEST, 1, ("flow0", "200", "", "false"), resource={})
    samples = text_samples(scrape(stack.url))
    requests = series(samples, "flow_request_total")
    normal = sorted((labels["flow"], value) for labels, value in requests if "otel_metric_overflow" not in labels)
    assert normal == [("flow0", 2), ("flow1", 1), ("flow2", 1)]
    overflow = [(labels, value) for labels, value in requests if "otel_metric_overflow" in labels]
    assert overflow == [({"otel_metric_overflow": "true"}, 7)]
    assert len(requests) == 4
    assert series(samples, "flowtel_metric_overflow_total") == [({"metric": "flow_request"}, 7)]


def test_cardinality_limit_is_per_metric(make_stack: Factory) -> None:
    stack = make_stack(FlowtelConfig(cardinality_limit=2))
    for i in range(3):
        stack.metrics.record(FLOW_REQUEST, 1, (f"flow{i}", "200", "", "false"), resource={})
        stack.metrics.record(NODE_REQUEST, 1, ("f", f"node{i}", "", "Completed"), resource={})
    samples = text_samples(scrape(stack.url))
    for name in ("flow_request_total", "node_request_total"):
        assert sorted(value for labels, value in series(samples, name) if "otel_metric_overflow" in labels) == [1]
        assert len(series(samples, name)) == 3
    assert sorted(series(samples, "flowtel_metric_overflow_total"), key=lambda s: s[0]["metric"]) == [
        ({"metric": "flow_request"}, 1), ({"metric": "node_request"}, 1)]


def test_self_metric_overflow_counter_not_capped_by_derived_limit(make_stack: Factory) -> None:
    stack = make_stack(FlowtelConfig(cardinality_limit=1))
    for spec, dims in ((FLOW_REQUEST, ("f", "200", "", "false")), (NODE_REQUEST, ("f", "n", "", "Completed")),
                       (RPC_REQUEST, ("f", "n", "call", "")), (TOKEN_CONSUMPTION, ("f", "n", "m", "prompt_tokens"))):
        stack.metrics.record(spec, 1, dims, resource={})
        stack.metrics.record(spec, 1, tuple(f"{d}-2" for d in dims), resource={})  # second label set overflows
    samples = text_samples(scrape(stack.url))
    assert sorted(series(samples, "flowtel_metric_overflow_total"), key=lambda s: s[0].get("metric", "")) == [
        ({"metric": "flow_request"}, 1), ({"metric": "node_request"}, 1), ({"metric": "rpc_request"}, 1),
        ({"metric": "token_consumption"}, 1)]


# --- common and resource dimensions --------------------------------------------------------------------------


def test_common_dimensions_on_every_series(make_stack: Factory) -> None:
    stack = make_stack(FlowtelConfig(common_dimensions={"deployment": "blue"}))
    for i in range(3):
        stack.metrics.record(FLOW_REQUEST, 1, (f"flow{i}", "200", "", "false"), resource={})
    stack.metrics.record(FLOW_LATENCY, 10, LATENCY_DIMS, resource={})
    samples = text_samples(scrape(stack.url))
    requests = series(samples, "flow_request_total")
    assert sorted((labels["flow"], labels["deployment"], value) for labels, value in requests) == [
        ("flow0", "blue", 1), ("flow1", "blue", 1), ("flow2", "blue", 1)]
    assert {frozenset(labels) for labels, _ in requests} == {
        frozenset({"flow", "response_code", "exception", "streaming", "deployment"})}
    latency = [labels for n, labels, _ in samples if n.startswith("flow_latency")]
    assert len(latency) == 23
    assert {labels["deployment"] for labels in latency} == {"blue"}


def test_resource_dimensions_become_labels(make_stack: Factory) -> None:
    stack = make_stack(FlowtelConfig(resource_dimensions={"service": "service.name", "zone": "cloud.zone"}))
    dims = ("f", "200", "", "false")
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={"service.name": "svc-a", "cloud.zone": "z1"})
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={"service.name": "svc-a", "cloud.zone": "z1"})
    stack.metrics.record(FLOW_REQUEST, 1, dims, resource={"service.name": "svc-b"})
    samples = text_samples(scrape(stack.url))
    got = sorted(((labels["service"], labels["zone"]), value) for labels, value in
                 series(samples, "flow_request_total"))
    assert got == [(("svc-a", "z1"), 2), (("svc-b", ""), 1)]


# --- bearer token --------------------------------------------------------------------------------------------


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_bearer_token_required(make_stack: Factory) -> None:
    stack = make_stack(bearer_token="s3cret")
    stack.metrics.record(FLOW_REQUEST, 1, ("f", "200", "", "false"), resource={})
    assert _status(stack.url, {}) == 401
    assert _status(stack.url, {"Authorization": "Bearer wrong"}) == 401
    assert _status(stack.url, {"Authorization": "Bearer s3cret2"}) == 401
    assert _status(stack.url, {"Authorization": "Basic czNjcmV0"}) == 401
    assert _status(stack.url, {"Authorization": "Bearer s3cret"}) == 200
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(stack.url, timeout=5)
    assert info.value.headers["WWW-Authenticate"] == "Bearer"
    assert "flow_request" not in info.value.read().decode()
    body = scrape(stack.url, {"Authorization": "Bearer s3cret"})
    assert value_of(text_samples(body), "flow_request_total",
                    {"flow": "f", "response_code": "200", "exception": "", "streaming": "false"}) == 1


def test_no_token_configured_means_open(make_stack: Factory) -> None:
    stack = make_stack()
    assert _status(stack.url, {}) == 200
    assert _status(stack.url, {"Authorization": "Bearer anything"}) == 200


# --- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "server")


def test_tls_scrape(make_stack: Factory, server_cert: tuple[Path, Path]) -> None:
    cert_file, key_file = server_cert
    stack = make_stack(tls=TLSSettings(str(cert_file), str(key_file)))
    stack.metrics.record(FLOW_REQUEST, 1, ("f", "200", "", "false"), resource={})
    assert stack.url == f"https://127.0.0.1:{stack.endpoint.port}/metrics"
    context = ssl.create_default_context(cafile=str(cert_file))
    body = scrape(stack.url, context=context)
    assert value_of(text_samples(body), "flow_request_total",
                    {"flow": "f", "response_code": "200", "exception": "", "streaming": "false"}) == 1
    # Plain HTTP to the TLS port gets no metrics.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{stack.endpoint.port}/metrics", timeout=5)
    # A client that does not trust the certificate is refused.
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(stack.url, timeout=5, context=ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # The server still answers after the failed attempts.
    assert "flow_request_total" in scrape(stack.url, context=context)


def test_tls_with_bearer_token(make_stack: Factory, server_cert: tuple[Path, Path]) -> None:
    cert_file, key_file = server_cert
    stack = make_stack(tls=TLSSettings(str(cert_file), str(key_file)), bearer_token="s3cret")
    context = ssl.create_default_context(cafile=str(cert_file))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(stack.url, timeout=5, context=context)
    assert info.value.code == 401
    scrape(stack.url, {"Authorization": "Bearer s3cret"}, context=context)


def test_tls_idle_connection_does_not_block_scrapes(make_stack: Factory, server_cert: tuple[Path, Path]) -> None:
    cert_file, key_file = server_cert
    stack = make_stack(tls=TLSSettings(str(cert_file), str(key_file)))
    context = ssl.create_default_context(cafile=str(cert_file))
    idle = socket.create_connection(("127.0.0.1", stack.endpoint.port))
    try:
        request = urllib.request.Request(stack.url)
        with urllib.request.urlopen(request, timeout=0.5, context=context) as response:
            assert response.status == 200
    finally:
        idle.close()  # unblocks the server so the fixture can shut it down


# --- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("abc", "a port number"), ("9464.0", "a port number"),
                                               ("70000", "a port number 0-65535"), ("-1", "a port number 0-65535")])
def test_settings_bad_port(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        PrometheusSettings.from_env({"OTEL_EXPORTER_PROMETHEUS_PORT": raw})
    assert str(info.value) == f"environment: OTEL_EXPORTER_PROMETHEUS_PORT: expected {expected}, got {raw!r}"


def test_settings_from_env(server_cert: tuple[Path, Path]) -> None:
    cert, key = map(str, server_cert)  # the files must exist: the settings check them, as the collector's do
    assert PrometheusSettings.from_env({}) == PrometheusSettings("127.0.0.1", 9464, None, None)
    settings = PrometheusSettings.from_env({
        "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0", "OTEL_EXPORTER_PROMETHEUS_PORT": "9100",
        "FLOWTEL_PROMETHEUS_BEARER_TOKEN": "tok", "FLOWTEL_PROMETHEUS_TLS_CERT_FILE": cert,
        "FLOWTEL_PROMETHEUS_TLS_KEY_FILE": key})
    assert settings == PrometheusSettings("0.0.0.0", 9100, "tok", TLSSettings(cert, key, None))
    assert PrometheusSettings.from_env({"FLOWTEL_PROMETHEUS_BEARER_TOKEN": ""}).bearer_token is None


def test_settings_tls_needs_cert_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        PrometheusSettings.from_env({"FLOWTEL_PROMETHEUS_TLS_CERT_FILE": "/c.pem"})
    assert "FLOWTEL_PROMETHEUS_TLS_CERT_FILE" in str(info.value)
    assert "expected both set or neither" in str(info.value)
