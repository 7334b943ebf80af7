"""Shared fixtures: a local OpenAI-compatible server and a freshly configured flowtel per test."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("PF_DISABLE_TRACING", "false")

import flowtel  # noqa: E402
from flowtel.exporters.prometheus import PrometheusSettings  # noqa: E402

from fake_llm import FakeLLMServer  # noqa: E402


def reset_otel_globals() -> None:
    """The API sets global providers once per process; tests need a fresh pair each (as OTel's own tests do)."""
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace._TRACER_PROVIDER = None
    metrics._internal._METER_PROVIDER_SET_ONCE._done = False
    metrics._internal._METER_PROVIDER = None


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@dataclass
class Scrape:
    samples: list  # prometheus_client Sample tuples

    def value(self, name: str, **labels: str) -> float:
        """Sum of samples named ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(s.labels) for s in self.samples if s.name == name]

    def find(self, name: str, **labels: str) -> list:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def scrape(url: str, openmetrics: bool = False) -> Scrape:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        body = response.read().decode()
        content_type = response.headers.get("Content-Type", "")
    if openmetrics:
        assert content_type.startswith("application/openmetrics-text"), content_type
        families = parse_openmetrics(body)
    else:
        assert content_type.startswith("text/plain"), content_type
        families = parse_text(body)
    return Scrape([s for f in families for s in f.samples])


@dataclass
class Harness:
    handle: flowtel.Flowtel
    exporter: InMemorySpanExporter

    def flush(self) -> None:
        assert self.handle.span_processor.force_flush(10_000)

    def spans(self) -> list:
        self.flush()
        return list(self.exporter.get_finished_spans())

    def scrape(self, openmetrics: bool = False) -> Scrape:
        self.flush()
        assert self.handle.prometheus is not None
        return scrape(self.handle.prometheus.url, openmetrics)


@pytest.fixture
def make_harness() -> Iterator:
    made: list[Harness] = []

    def make(environ: dict[str, str] | None = None, **config_overrides: object) -> Harness:
        reset_otel_globals()
        exporter = InMemorySpanExporter()
        config = flowtel.FlowtelConfig.from_env(environ or {}, **config_overrides)
        handle = flowtel.configure(config=config, span_exporters=[exporter], metric_exporters=[],
                                   prometheus=PrometheusSettings(port=0))
        harness = Harness(handle, exporter)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.handle.shutdown()
    reset_otel_globals()


@pytest.fixture
def harness(make_harness) -> Harness:  # type: ignore[no-untyped-def]
    return make_harness()
