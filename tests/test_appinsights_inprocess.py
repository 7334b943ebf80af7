"""Application Insights in-process: the real Azure Monitor exporters against a validating local ingestion endpoint.

promptflow-tracing + openai run against the fake LLM; flowtel enriches the spans and derives the
metrics; ``azure-monitor-opentelemetry-exporter`` sends them to ``tests/ingestion.py``, which checks
every envelope. The exporter's side traffic (statsbeat, SDK stats, control plane) is switched off
with its own variables.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

import flowtel
from flowtel import _log
from flowtel.config import ConfigError
from flowtel.exporters.azure_monitor import AzureMonitorSettings, AzureMonitorSpanExporter
from flowtel.exporters.prometheus import PrometheusSettings
from flowtel.processors.catalog import HISTOGRAM, STANDARD_METRICS

from conftest import Scrape, reset_otel_globals, scrape
from ingestion import QUIET, IngestionServer, item_key, metric_sums, validate
from producers import (
    QUESTION,
    STREAM_LLM,
    answer_tool,
    broken_tool,
    client,
    retrieve_tool,
    run_dag_flow,
    stream_flow,
    use_promptflow_openai_injection,
)

_DELETE = object()
COMMON_DIMENSIONS = '{"deployment": "blue", "variant": "b"}'


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the batch span processor sends every 0.2 s
    monkeypatch.setenv("PF_SERVING_METRICS_COMMON_DIMENSIONS", COMMON_DIMENSIONS)
    use_promptflow_openai_injection(True)
    # "logged once per reason" is process-wide; each test starts with a clean slate for the exporter's reasons
    with _log._lock:
        for key in [k for k in _log._seen if "azuremonitor" in k]:
            _log._seen.discard(key)


@pytest.fixture
def ingestion() -> Iterator[IngestionServer]:
    with IngestionServer() as server:
        yield server


@dataclass
class App:
    handle: flowtel.Flowtel
    memory: InMemorySpanExporter | None  # every span flowtel exported, enriched: the ground truth
    ingestion: IngestionServer
    storage: Path

    def flush(self) -> None:
        assert self.handle.span_processor.force_flush(30_000)

    def span_keys(self) -> set[tuple[Any, ...]]:
        assert self.memory is not None
        return {("span", f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
                for s in self.memory.get_finished_spans()}

    def scrape(self) -> Scrape:
        assert self.handle.prometheus is not None
        return scrape(self.handle.prometheus.url)

    def count(self, name: str, **labels: str) -> int:
        assert self.handle.self_metrics is not None
        return self.handle.self_metrics.count(name, **labels)

    def stored_blobs(self, signal: str) -> list[Path]:
        return [p for p in (self.storage / signal).glob("*") if ".blob" in p.name]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def make(ingestion: IngestionServer, storage: Path | None = None, **overrides: Any) -> App:
        reset_otel_globals()
        storage = storage or tmp_path / "azure"
        options: dict[str, Any] = dict(storage_directory=str(storage), metric_export_interval_s=1.0,
                                       storage_retry_interval_s=1.0, retry_backoff_s=0.2, read_timeout_s=1.0)
        options.update(overrides)
        settings = AzureMonitorSettings(connection_string=ingestion.connection_string, **options)
        memory = InMemorySpanExporter()
        handle = flowtel.configure(config=flowtel.FlowtelConfig.from_env(), span_exporters=[memory],
                                   metric_exporters=[], prometheus=PrometheusSettings(port=0), azure_monitor=settings)
        app = App(handle, memory, ingestion, storage)
        made.append(app)
        return app

    yield make
    for app in made:
        app.handle.shutdown()
    reset_otel_globals()


def _chat(base_url: str) -> None:
    run_dag_flow("chat_flow", {"question": QUESTION},
                 [("retrieve", retrieve_tool(base_url)), ("answer", answer_tool(base_url))])


def _failing(base_url: str, i: int) -> None:
    """Alternately an LLM call answering 500 and a tool raising."""
    nodes = [("answer", answer_tool(base_url, "fail-500"))] if i % 2 == 0 else [("retrieve", retrieve_tool(base_url)),
                                                                             ("broken", broken_tool)]
    with pytest.raises(Exception):  # noqa: B017 - openai.InternalServerError or ValueError
        run_dag_flow("chat_flow" if i % 2 == 0 else "broken_flow", {"question": QUESTION}, nodes)


def _props(row: dict[str, Any]) -> dict[str, str]:
    return row["data"]["baseData"].get("properties") or {}


def _prometheus_series(m: Scrape, name: str, kind: str) -> dict[frozenset[tuple[str, str]], tuple[float, float]]:
    """{label set: (value or sum, count)} for one of the eight metrics in a scrape."""
    if kind == HISTOGRAM:
        sums = {frozenset(s.labels.items()): s.value for s in m.samples if s.name == f"{name}_sum"}
        counts = {frozenset(s.labels.items()): s.value for s in m.samples if s.name == f"{name}_count"}
        return {k: (sums[k], counts[k]) for k in sums}
    return {frozenset(s.labels.items()): (s.value, s.value) for s in m.samples if s.name == f"{name}_total"}


def _azure_series(rows: list[dict[str, Any]], name: str, kind: str,
                  ) -> dict[frozenset[tuple[str, str]], tuple[float, float]]:
    out = {}
    for labels, acc in metric_sums(rows, name).items():
        out[frozenset(labels)] = (acc["value"], acc["count"] if kind == HISTOGRAM else acc["value"])
    return out


def _assert_metrics_match_prometheus(app: App) -> dict[str, int]:
    """Each of the eight metrics: Azure rows summed over all export intervals == Prometheus's cumulative values."""
    m = app.scrape()
    rows = app.ingestion.metric_rows()
    rows_per_metric = {}
    for spec in STANDARD_METRICS:
        azure = _azure_series(rows, spec.name, spec.kind)
        prometheus = _prometheus_series(m, spec.name, spec.kind)
        assert prometheus, spec.name
        assert azure.keys() == prometheus.keys(), (spec.name, azure.keys() ^ prometheus.keys())
        for labels, (value, count) in prometheus.items():
            assert azure[labels][0] == pytest.approx(value, rel=1e-9, abs=1e-9), (spec.name, labels)
            assert azure[labels][1] == count, (spec.name, labels)
        rows_per_metric[spec.name] = len([r for r in rows if r["data"]["baseData"]["metrics"][0]["name"] == spec.name])
    return rows_per_metric


def _wait_until_delivered(app: App, timeout: float) -> None:
    """Flush, then wait (bounded) until both storage directories are empty and every span arrived (no load)."""
    def done() -> bool:
        app.flush()
        delivered = set(app.ingestion.deliveries())
        return (not app.stored_blobs("traces") and not app.stored_blobs("metrics")
                and app.span_keys() <= delivered)
    assert app.ingestion.wait_for(done, timeout, interval=0.25), (
        len(app.stored_blobs("traces")), len(app.stored_blobs("metrics")),
        len(app.span_keys() - set(app.ingestion.deliveries())))


def test_rows_a_user_sees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ingestion: IngestionServer,
                          fake_llm) -> None:  # type: ignore[no-untyped-def]
    """Only APPLICATIONINSIGHTS_CONNECTION_STRING set: requests, GenAI dependencies and the eight metrics arrive."""
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string)
    monkeypatch.setenv("FLOWTEL_AZURE_STORAGE_DIRECTORY", str(tmp_path / "azure"))
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1000")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "0")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    reset_otel_globals()
    handle = flowtel.configure()
    try:
        assert handle.azure_monitor is not None
        assert [type(e) for e in handle.span_exporters] == [AzureMonitorSpanExporter]
        app = App(handle, None, ingestion, tmp_path / "azure")
        for round_ in range(3):  # three rounds, more than an export interval apart
            for _ in range(2):
                _chat(fake_llm.base_url)
            _failing(fake_llm.base_url, round_)
            STREAM_LLM[:] = [client(fake_llm.base_url)]
            assert "".join(stream_flow(QUESTION)) == "Hello from the fake model"
            app.flush()
            time.sleep(1.2)
        app.flush()
        assert handle.meter_provider.force_flush(10_000)
        # per round: 2 chat flows of 5 spans, 1 failing flow (3 or 4 spans), 1 streamed flex flow of 4 spans
        expected_spans = 3 * (2 * 5 + 4) + 3 + 4 + 3
        assert ingestion.wait_for(lambda: len(ingestion.span_rows()) >= expected_spans, 10)
        assert ingestion.invalid == []
        assert max(ingestion.deliveries().values()) == 1
        rows = ingestion.span_rows()
        assert len(rows) == expected_spans

        def of(name: str) -> list[dict[str, Any]]:
            return [r for r in rows.values() if r["data"]["baseData"]["name"] == name]

        chats = of("openai_chat")
        assert len(chats) == 3 * 2 + 2 + 3 * 2  # DAG answers, the failing ones, two per streamed flex flow
        ok_chats = [r for r in chats if r["data"]["baseData"]["success"]]
        assert len(ok_chats) == 3 * 2 + 3 * 2
        for row in chats:
            assert row["data"]["baseType"] == "RemoteDependencyData"
            assert row["data"]["baseData"]["type"] == "GenAI | openai"
            props = _props(row)
            assert props["gen_ai.operation.name"] == "chat"
            assert props["gen_ai.system"] == props["gen_ai.provider.name"] == "openai"
            assert "inputs" not in props and "output" not in props  # content capture is off
        dag_ok = [r for r in ok_chats if _props(r).get("node_name") == "answer"]
        assert len(dag_ok) == 6
        for row in dag_ok:
            props = _props(row)
            assert props["gen_ai.request.model"] == props["gen_ai.response.model"] == "gpt-4o-mini"
            assert (props["gen_ai.usage.input_tokens"], props["gen_ai.usage.output_tokens"]) == ("4", "5")
            assert props["gen_ai.request.temperature"] == "0.3"
        failed_chats = [r for r in chats if not r["data"]["baseData"]["success"]]
        assert len(failed_chats) == 2 and all(_props(r)["gen_ai.request.model"] == "fail-500" for r in failed_chats)
        embeds = of("openai_embeddings")
        assert len(embeds) == 3 * 2 + 1
        assert {(r["data"]["baseData"]["type"], _props(r)["gen_ai.operation.name"]) for r in embeds} == {
            ("GenAI | openai", "embeddings")}

        # flow roots are the operations: Request rows, 200 / 500 as flow_request counts them
        flows = [r for r in rows.values() if _props(r).get("gen_ai.operation.name") == "invoke_workflow"]
        assert {r["data"]["baseType"] for r in flows} == {"RequestData"}
        outcomes = sorted((r["data"]["baseData"]["name"], r["data"]["baseData"]["responseCode"],
                           r["data"]["baseData"]["success"]) for r in flows)
        assert outcomes == sorted([("chat_flow", "200", True)] * 6 + [("stream_flow", "200", True)] * 3
                                  + [("chat_flow", "500", False)] * 2 + [("broken_flow", "500", False)])
        assert all("ai.operation.parentId" not in r["tags"] for r in flows)
        # everything else hangs below its flow, in the flow's operation
        flow_ids = {r["data"]["baseData"]["id"] for r in flows}
        for span_id, row in rows.items():
            if span_id in flow_ids:
                continue
            parent = rows[row["tags"]["ai.operation.parentId"]]
            assert parent["tags"]["ai.operation.id"] == row["tags"]["ai.operation.id"], span_id
        nodes = of("answer") + of("retrieve") + of("broken")
        assert len(nodes) == 8 + 7 + 1
        assert {(r["data"]["baseType"], r["data"]["baseData"]["type"]) for r in nodes} == {
            ("RemoteDependencyData", "InProc")}
        assert [r["data"]["baseData"]["success"] for r in of("broken")] == [False]
        exceptions = ingestion.rows("ExceptionData")
        assert {e["data"]["baseData"]["exceptions"][0]["typeName"] for e in exceptions} == {
            "openai.InternalServerError", "ValueError"}
        assert {e["tags"]["ai.operation.parentId"] for e in exceptions} <= set(rows)

        # the eight metrics: exact names, their dimensions plus the common ones, values == Prometheus
        per_metric = _assert_metrics_match_prometheus(app)
        assert set(per_metric) == {s.name for s in STANDARD_METRICS}
        metric_rows = ingestion.metric_rows()
        for spec in STANDARD_METRICS:
            keysets = {frozenset(_props(r)) for r in metric_rows
                       if r["data"]["baseData"]["metrics"][0]["name"] == spec.name}
            assert keysets == {frozenset({*spec.dimensions, "deployment", "variant"})}, spec.name
        # DELTA: several export intervals carried flow_request rows, and they add up (checked above)
        assert len({r["time"] for r in ingestion.metric_rows("flow_request")}) >= 2
        assert sum(r["data"]["baseData"]["metrics"][0]["value"] for r in ingestion.metric_rows("flow_request")) == 12
        tokens = metric_sums(metric_rows, "token_consumption", ("flow", "node", "llm_engine", "token_type"))
        answer = (("flow", "chat_flow"), ("node", "answer"), ("llm_engine", "gpt-4o-mini"))
        assert tokens[(*answer, ("token_type", "prompt_tokens"))]["value"] == 6 * 4
        assert tokens[(*answer, ("token_type", "completion_tokens"))]["value"] == 6 * 5
        names = {r["data"]["baseData"]["metrics"][0]["name"] for r in metric_rows}
        assert {"flowtel.spans.processed", "otelcol.exporter.sent.spans"} <= names  # flowtel's own metrics too
        assert app.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == len(rows)
        print(f"\n{len(rows)} span rows ({len(flows)} requests, {len(chats) + len(embeds)} GenAI dependencies), "
              f"{len(exceptions)} exception rows, {len(metric_rows)} metric rows: {per_metric}")
    finally:
        handle.shutdown()
        reset_otel_globals()


@dataclass
class Load:
    """Steady traffic on a thread: a flow every ``pause`` seconds; every 7th fails, every 5th is streamed."""

    base_url: str
    pause: float = 0.05
    flows: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.flows % 7 == 6:
                    _failing(self.base_url, self.flows)
                elif self.flows % 5 == 4:
                    STREAM_LLM[:] = [client(self.base_url)]
                    assert "".join(stream_flow(QUESTION)) == "Hello from the fake model"
                else:
                    _chat(self.base_url)
            except BaseException as error:  # reported by the test
                self.errors.append(error)
                return
            self.flows += 1
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_outage_under_load_delivers_every_span_and_metric_exactly_once(make_app, ingestion: IngestionServer,
                                                                        fake_llm) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ingestion)
    phases: list[tuple[str, float]] = []
    with Load(fake_llm.base_url) as load:
        time.sleep(2)
        assert ingestion.wait_for(lambda: bool(ingestion.span_rows()), 5)
        start = time.monotonic()
        for name, setup, seconds in (
                ("429 Retry-After: 1", lambda: ingestion.respond(429, retry_after="1"), 4),
                ("503", lambda: ingestion.respond(503), 8),
                ("read timeout", ingestion.hang, 5),
                ("down", ingestion.down, 8)):
            ingestion.reset()
            setup()
            phase_start = time.monotonic()
            time.sleep(seconds)
            phases.append((name, time.monotonic() - phase_start))
        outage = time.monotonic() - start
        assert ingestion.refuses_connections()
        stored = len(app.stored_blobs("traces")), len(app.stored_blobs("metrics"))
        ingestion.recover()
        recovered_at = time.monotonic()
        # the load keeps exporting, and each successful export drains stored batches
        assert ingestion.wait_for(lambda: not app.stored_blobs("traces") and not app.stored_blobs("metrics"), 20)
        drained_in = time.monotonic() - recovered_at
        load.stop()
    assert load.errors == []
    _wait_until_delivered(app, 10)
    assert app.handle.meter_provider.force_flush(10_000)
    assert ingestion.wait_for(lambda: not app.stored_blobs("metrics"), 10)

    assert ingestion.invalid == []
    statuses = ingestion.statuses()
    assert statuses[429] >= 1 and statuses[503] >= 2 and statuses[0] >= 1  # every kind of failure was met
    assert stored[0] >= 5 and stored[1] >= 5  # batches of both signals waited on disk
    deliveries = ingestion.deliveries()
    spans = app.span_keys()
    assert len(spans) >= 3 * load.flows and load.flows >= 100
    assert {k: deliveries[k] for k in spans if deliveries[k] != 1} == {}  # every span exactly once
    assert max(deliveries.values()) == 1  # every metric row and span event exactly once too
    _assert_metrics_match_prometheus(app)
    flow_requests = sum(r["data"]["baseData"]["metrics"][0]["value"] for r in ingestion.metric_rows("flow_request"))
    assert flow_requests == load.flows
    assert app.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == len(spans)
    for reason in ("rejected", "storage_full", "storage_error", "error"):
        assert app.count("otelcol.exporter.send_failed.spans", exporter="azuremonitor", reason=reason) == 0
        assert app.count("otelcol.exporter.send_failed.metric_points", exporter="azuremonitor", reason=reason) == 0
    print(f"\noutage {outage:.1f} s ({', '.join(f'{n} {s:.1f} s' for n, s in phases)}); {load.flows} flows, "
          f"{len(spans)} spans, {len(ingestion.metric_rows())} metric rows; requests by status {dict(statuses)}; "
          f"stored blobs at recovery: {stored[0]} span, {stored[1]} metric; all delivered {drained_in:.1f} s "
          f"after recovery")


def test_partial_success_retries_exactly_the_failed_items(make_app, ingestion: IngestionServer,
                                                          fake_llm) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ingestion, metrics=False)
    ingestion.partial({1: 500, 3: 503, 5: 400})  # index 0 is the exporter's _OTELRESOURCE_ row
    for _ in range(3):
        _chat(fake_llm.base_url)
    app.flush()
    first = ingestion.requests[0]
    assert first.status == 206 and len(first.keys) >= 6
    retried = {first.keys[1], first.keys[3]}
    assert {k[0] for k in (first.keys[1], first.keys[3], first.keys[5])} == {"span"}
    time.sleep(1.2)  # the stored items' lease (storage_retry_interval_s) runs out
    _chat(fake_llm.base_url)  # the next successful export drains the stored batch
    app.flush()
    assert ingestion.wait_for(lambda: any(set(r.keys) == retried for r in ingestion.requests[1:]), 10)

    assert ingestion.invalid == []
    retry = next(r for r in ingestion.requests[1:] if set(r.keys) == retried)
    assert retry.status == 200 and len(retry.keys) == 2  # exactly the two failed items, nothing else
    deliveries = ingestion.deliveries()
    assert deliveries[first.keys[5]] == 0  # the 400 item is dropped ...
    assert {k: deliveries[k] for k in app.span_keys() - {first.keys[5]} if deliveries[k] != 1} == {}
    assert app.count("flowtel.spans.dropped", reason="azuremonitor_rejected") == 1  # ... and counted
    assert app.count("otelcol.exporter.send_failed.spans", exporter="azuremonitor", reason="rejected") == 1
    assert app.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == len(app.span_keys()) - 1


def test_rejected_batch_is_counted_and_logged_once(make_app, ingestion: IngestionServer, fake_llm,
                                                   caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ingestion, metrics=False)
    ingestion.respond(400, times=2)
    with caplog.at_level(logging.WARNING, logger="flowtel"):
        _chat(fake_llm.base_url)
        app.flush()
        _chat(fake_llm.base_url)
        app.flush()
        rejected = [k for r in ingestion.requests[:2] for k in r.keys if k[0] == "span"]
        assert [r.status for r in ingestion.requests] == [400, 400] and len(rejected) == 10
        _chat(fake_llm.base_url)
        app.flush()
    assert app.count("flowtel.spans.dropped", reason="azuremonitor_rejected") == 10
    assert app.count("otelcol.exporter.send_failed.spans", exporter="azuremonitor", reason="rejected") == 10
    assert app.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == 5
    deliveries = ingestion.deliveries()
    assert all(deliveries[k] == 0 for k in rejected) and len(ingestion.span_rows()) == 5
    m = app.scrape()
    assert m.value("flowtel_spans_dropped_total", reason="azuremonitor_rejected") == 10
    assert m.value("otelcol_exporter_send_failed_spans_total", exporter="azuremonitor", reason="rejected") == 10
    lost_logs = [r for r in caplog.records if "reason: rejected" in r.getMessage()]
    assert len(lost_logs) == 1 and "answered 400" in lost_logs[0].getMessage()  # once, with the cause
    assert not app.stored_blobs("traces")  # a 400 is not retried


def test_full_storage_loses_only_what_it_counts(make_app, ingestion: IngestionServer,
                                                fake_llm) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ingestion, metrics=False, storage_max_size=1)  # room for one batch, then full
    ingestion.down()
    for _ in range(3):
        _chat(fake_llm.base_url)
        app.flush()
    assert len(app.stored_blobs("traces")) == 1
    full = app.count("flowtel.spans.dropped", reason="azuremonitor_storage_full")
    assert full == 10
    ingestion.recover()
    time.sleep(1.2)
    _chat(fake_llm.base_url)
    app.flush()
    assert ingestion.wait_for(lambda: not app.stored_blobs("traces"), 10)
    assert ingestion.invalid == []
    delivered = len(ingestion.span_rows())
    assert delivered == 5 + 5 and max(ingestion.deliveries().values()) == 1
    assert delivered + full == len(app.span_keys()) == 20  # nothing vanished uncounted
    assert app.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == delivered
    assert app.count("otelcol.exporter.send_failed.spans", exporter="azuremonitor", reason="storage_full") == full


def test_batches_stored_by_a_stopped_app_are_sent_by_the_next_one(make_app, tmp_path: Path, ingestion: IngestionServer,
                                                                   fake_llm) -> None:  # type: ignore[no-untyped-def]
    storage = tmp_path / "persistent"
    first = make_app(ingestion, storage=storage)
    ingestion.down()
    for _ in range(4):
        _chat(fake_llm.base_url)
    first.flush()
    first.handle.shutdown()  # the final metric export fails too: everything waits on disk
    first_spans = first.span_keys()
    assert first.stored_blobs("traces") and first.stored_blobs("metrics")
    ingestion.recover()
    time.sleep(1.2)  # the blobs' lease

    second = make_app(ingestion, storage=storage)  # an idle app: no span of its own to trigger a resend
    assert ingestion.wait_for(lambda: not second.stored_blobs("traces") and not second.stored_blobs("metrics"), 10)
    deliveries = ingestion.deliveries()
    assert ingestion.invalid == []
    assert len(first_spans) == 20 and {k: deliveries[k] for k in first_spans if deliveries[k] != 1} == {}
    assert max(deliveries.values()) == 1
    flow_requests = sum(r["data"]["baseData"]["metrics"][0]["value"] for r in ingestion.metric_rows("flow_request"))
    assert flow_requests == 4  # all from the stopped app's disk
    assert second.count("otelcol.exporter.sent.spans", exporter="azuremonitor") == 20


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token is needed here")


def test_settings_from_environment_and_their_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = "00000000-0000-4000-8000-000000000001"
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={key};IngestionEndpoint=https://x.example/",
           "FLOWTEL_AZURE_CREDENTIAL": "managed_identity", "AZURE_CLIENT_ID": "client-1",
           "FLOWTEL_AZURE_STORAGE_DIRECTORY": "/var/lib/flowtel", "FLOWTEL_AZURE_STORAGE_MAX_SIZE": "1048576",
           "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"}
    settings = AzureMonitorSettings.from_env(env)
    assert (settings.instrumentation_key, settings.ingestion_endpoint) == (key, "https://x.example/")
    assert settings.self_telemetry is False
    kwargs = settings.exporter_kwargs("traces")
    assert kwargs["storage_directory"] == "/var/lib/flowtel/traces" and kwargs["storage_max_size"] == 1048576
    assert type(kwargs["credential"]).__name__ == "ManagedIdentityCredential"
    passed = _Credential()
    assert AzureMonitorSettings.from_env(env, credential=passed).exporter_kwargs("metrics")["credential"] is passed

    with pytest.raises(ConfigError, match="APPLICATIONINSIGHTS_CONNECTION_STRING"):
        AzureMonitorSettings.from_env({})
    with pytest.raises(ConfigError, match="APPLICATIONINSIGHTS_CONNECTION_STRING: expected InstrumentationKey"):
        AzureMonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=not-a-uuid"})
    with pytest.raises(ConfigError, match="FLOWTEL_AZURE_CREDENTIAL: expected one of"):
        AzureMonitorSettings.from_env({**env, "FLOWTEL_AZURE_CREDENTIAL": "password"})
    with pytest.raises(ConfigError, match="FLOWTEL_AZURE_STORAGE_MAX_SIZE: expected an integer"):
        AzureMonitorSettings.from_env({**env, "FLOWTEL_AZURE_STORAGE_MAX_SIZE": "50MB"})
    # Built in code, the model's own (pydantic) error, still a ValueError naming the key.
    with pytest.raises(ValidationError, match=r"credential\n.*https IngestionEndpoint"):  # never a token over http
        AzureMonitorSettings(connection_string=f"InstrumentationKey={key};IngestionEndpoint=http://127.0.0.1:1/",
                             credential_kind="default")

    # the exporter's own entry-point name in OTEL_TRACES_EXPORTER means the same fan-out, not a second, raw one
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", f"InstrumentationKey={key}")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "azure_monitor_opentelemetry_exporter")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    monkeypatch.setenv("FLOWTEL_AZURE_STORAGE_DIRECTORY", str(tmp_path))
    reset_otel_globals()
    handle = flowtel.configure(prometheus=False)
    try:
        assert [type(e) for e in handle.span_exporters] == [AzureMonitorSpanExporter]  # one, with accounting
        assert [type(e).__name__ for e in handle.metric_exporters] == ["AzureMonitorMetricExporter"]
    finally:
        handle.shutdown()
        reset_otel_globals()


def test_the_ingestion_double_refuses_what_ingestion_would(ingestion: IngestionServer) -> None:
    """The double is only worth its checks if they fail: a valid envelope passes, each defect is named."""
    good = {"name": "Microsoft.ApplicationInsights.RemoteDependency", "time": "2025-01-01T00:00:00.123456Z",
            "iKey": ingestion.ikey, "tags": {"ai.operation.id": "cd" * 16, "ai.operation.parentId": "ef" * 8},
            "data": {"baseType": "RemoteDependencyData", "baseData": {
                "ver": 2, "id": "ab" * 8, "name": "openai_chat", "duration": "0.00:00:00.015", "success": True,
                "type": "GenAI | openai", "resultCode": "0", "properties": {"gen_ai.system": "openai"}}}}
    assert validate(good, ingestion.ikey) == []
    assert item_key(good) == ("span", "cd" * 16, "ab" * 8)

    def broken(path: str, value: Any) -> dict[str, Any]:
        envelope = copy.deepcopy(good)
        *parents, last = path.split(".")
        target = envelope
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
        return envelope

    cases = {
        "iKey": broken("iKey", "00000000-0000-4000-8000-000000000000"),
        "time": broken("time", "2025-01-01 00:00:00"),
        "ai.operation.id": broken("tags", {"ai.operation.id": "not-a-trace-id"}),
        "unknown tag": broken("tags", {"ai.operation.id": "cd" * 16, "ai.custom": "x"}),
        "baseType": broken("data.baseType", "SpanData"),
        "does not match": broken("name", "Microsoft.ApplicationInsights.Request"),
        "RemoteDependencyData.duration": broken("data.baseData.duration", "15ms"),
        "RemoteDependencyData.success: required": broken("data.baseData.success", _DELETE),
        "RemoteDependencyData.type: required": broken("data.baseData.type", _DELETE),
        "key of 151": broken("data.baseData.properties", {"k" * 151: "v"}),
        "<= 8192": broken("data.baseData.properties", {"gen_ai.response.id": "v" * 8193}),
    }
    for expected, envelope in cases.items():
        problems = validate(envelope, ingestion.ikey)
        assert any(expected in p for p in problems), (expected, problems)
    long_content = broken("data.baseData.properties", {"gen_ai.input.messages": "v" * 200_000})
    assert validate(long_content, ingestion.ikey) == []  # gen_ai content keys may be up to 256 KiB

    body = json.dumps([good, cases["time"], broken("data.baseData.id", "12" * 8)]).encode()
    request = urllib.request.Request(f"{ingestion.endpoint}v2.1/track", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
        assert response.status == 206
    assert (answer["itemsReceived"], answer["itemsAccepted"]) == (3, 2)
    assert [(e["index"], e["statusCode"]) for e in answer["errors"]] == [(1, 400)]
    assert len(ingestion.span_rows()) == 2 and any("envelope.time" in p for p in ingestion.invalid)


def test_root_flows_can_stay_dependencies(make_app, ingestion: IngestionServer,
                                          fake_llm) -> None:  # type: ignore[no-untyped-def]
    app = make_app(ingestion, metrics=False, root_flows_as_requests=False)
    _chat(fake_llm.base_url)
    app.flush()
    assert ingestion.wait_for(lambda: len(ingestion.span_rows()) == 5, 10)
    flow = next(r for r in ingestion.span_rows().values() if r["data"]["baseData"]["name"] == "chat_flow")
    assert (flow["data"]["baseType"], flow["data"]["baseData"]["type"]) == ("RemoteDependencyData", "InProc")
    assert ingestion.rows("RequestData") == [] and ingestion.invalid == []


class _Blocking(InMemorySpanExporter):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.first_batch = 0

    def export(self, spans: Any) -> Any:
        if not self.entered.is_set():
            self.first_batch = len(spans)
        self.entered.set()
        self.release.wait(10)
        return super().export(spans)


def test_a_full_export_queue_counts_what_it_pushes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind flowtel each exporter has a batch queue; when a slow exporter lets it fill, the loss is counted."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    reset_otel_globals()
    blocking = _Blocking()
    handle = flowtel.configure(config=flowtel.FlowtelConfig.from_env({}), span_exporters=[blocking],
                               metric_exporters=[], prometheus=PrometheusSettings(port=0), azure_monitor=False)
    try:
        tracer = handle.tracer_provider.get_tracer("test")
        for i in range(40):
            with tracer.start_as_current_span(f"op{i}"):
                pass
            if i == 3:  # a first batch goes to the exporter, which hangs; then the queue (8) fills up
                handle.span_processor._drain_once()
                assert blocking.entered.wait(5)
        handle.span_processor._drain_once()  # hand the rest to the batch processor now
        blocking.release.set()
        assert handle.span_processor.force_flush(10_000)
        assert handle.self_metrics is not None
        dropped = handle.self_metrics.count("flowtel.spans.dropped", reason="export_queue_full")
        first = blocking.first_batch  # 4, unless the worker woke up in the middle of the first four
        assert 1 <= first <= 4
        assert (dropped, len(blocking.get_finished_spans())) == (40 - first - 8, first + 8)
        assert handle.self_metrics.count("otelcol.exporter.enqueue_failed.spans", exporter="_Blocking") == dropped
        assert scrape(handle.prometheus.url).value("flowtel_spans_dropped_total", reason="export_queue_full") == dropped
    finally:
        handle.shutdown()
        reset_otel_globals()


def test_spans_read_back_from_otlp_make_the_same_rows(make_app, tmp_path: Path, ingestion: IngestionServer,
                                                      fake_llm) -> None:  # type: ignore[no-untyped-def]
    """The collector's view: enriched spans as OTLP, read back as SDK spans, give the rows in-process gives."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from flowtel.exporters.azure_monitor import build_trace_exporter
    from flowtel.otlp import readable_spans
    from flowtel.selfmetrics import SelfMetrics

    app = make_app(ingestion, metrics=False)
    _chat(fake_llm.base_url)
    _failing(fake_llm.base_url, 0)
    app.flush()
    assert ingestion.wait_for(lambda: len(ingestion.span_rows()) == 8, 10)
    assert app.memory is not None
    request = ExportTraceServiceRequest.FromString(
        encode_spans(list(app.memory.get_finished_spans())).SerializeToString())
    with IngestionServer(ingestion.ikey) as second:
        settings = AzureMonitorSettings(connection_string=second.connection_string,
                                        storage_directory=str(tmp_path / "second"))
        self_metrics = SelfMetrics()
        exporter = build_trace_exporter(settings, self_metrics, exporter_id="azuremonitor/second",
                                        tracer_provider=app.handle.tracer_provider)
        try:
            exporter.export(readable_spans(request))
        finally:
            exporter.shutdown()
        assert second.invalid == []
        assert second.span_rows() == ingestion.span_rows()
        assert [e["data"] for e in second.rows("ExceptionData")] == [e["data"] for e in ingestion.rows("ExceptionData")]
        assert self_metrics.count("otelcol.exporter.sent.spans", exporter="azuremonitor/second") == 8
