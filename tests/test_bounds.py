"""Bounded, linear, fail-closed work per request and per trace (issue "hardened under attack", items 5-8, 13).

Each attack is sent to the real collector over loopback; afterwards it must still serve a good client, its own
metrics must account for every span (accepted == forwarded to the sink), and its log must hold no traceback.
Where "linear" is the claim, the test counts work (span reads, bytes handed to zlib) instead of timing it.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from attacked_collector import Collector, started
from attacks import deep_json, flow_trace, long_flow_names, many_roots, nested_calls, new_span_id, new_trace_id, request
from opentelemetry import trace as trace_api
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from flowtel import otlp
from flowtel.collector.receivers import otlp_http
from flowtel.config import FlowtelConfig
from flowtel.processors import pipeline as pipeline_module
from flowtel.processors.analysis import API_CALL_MAX_CHARS, API_CALL_MAX_DEPTH
from flowtel.processors.assembly import TraceAssembler
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.pipeline import TracePipeline
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import SpanData

from conftest import Scrape

CANARY = "CANARY-7f3e-never-leaves"
LABEL_LIMIT = 256  # the default label_value_max_bytes



@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    yield from started(tmp_path_factory.mktemp("bounds"))


def _label_values(text: str) -> list[str]:
    return re.findall(r'="((?:[^"\\]|\\.)*)"', text)


# --- item 5: label bytes ------------------------------------------------------------------------------------------


def test_long_flow_names_are_cut_to_the_label_byte_limit_and_counted(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    flows = 30
    assert collector.post(long_flow_names(flows, 2048)).status_code == 200
    collector.proc.wait_for(lambda: collector.scrape().value("flowtel_metric_labels_cut_total",
                                                             metric="flow_request") >= flows)
    text = collector.scrape_text()
    assert max(len(v.encode()) for v in _label_values(text)) <= LABEL_LIMIT
    metrics = collector.scrape()
    cut_flows = {s["flow"] for s in metrics.series("flow_request_total") if s["flow"].startswith("0000")}
    assert len(cut_flows) == flows  # distinct within the limit: still one series each
    assert all(len(f.encode()) == LABEL_LIMIT for f in cut_flows)
    assert metrics.value("flowtel_metric_labels_cut_total", metric="token_consumption") >= flows
    collector.accounted(log_from)


def test_label_cut_keeps_utf8_whole_and_merges_into_one_series() -> None:
    config = FlowtelConfig(label_value_max_bytes=10)
    self_metrics = SelfMetrics()
    metrics = FlowtelMetrics(config, self_metrics)
    from flowtel.processors import catalog
    for suffix in ("a", "b"):  # differ past the limit: one series
        metrics.record(catalog.FLOW_REQUEST, 1, ("ééééé" + "x" + suffix, "200", "", "False"), {})
    (point,) = [p for m in metrics.produce(metrics.consumer()) for p in m.data.data_points]
    assert point.attributes["flow"] == "ééééé" and point.value == 2  # 10 bytes, no half character
    assert self_metrics.count("flowtel.metric.labels.cut", metric="flow_request") == 2


# --- item 6: api_call names ---------------------------------------------------------------------------------------


def test_deeply_nested_calls_get_bounded_api_call_names(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    depth = 1500
    assert collector.post(nested_calls(depth)).status_code == 200

    def counted() -> Scrape | None:
        metrics = collector.scrape()
        return metrics if metrics.value("rpc_request_total", flow="nested") == depth else None
    metrics = collector.proc.wait_for(counted)
    names = {s["api_call"] for s in metrics.series("rpc_request_total") if s["flow"] == "nested"}
    assert len(names) == API_CALL_MAX_DEPTH + 1  # one per depth kept, and one for every deeper call
    assert max(len(n) for n in names) <= API_CALL_MAX_CHARS + 4
    deepest = max(names, key=len)
    assert deepest.endswith("_...") and deepest.count("_c") == API_CALL_MAX_DEPTH - 1
    assert metrics.value("rpc_request_total", flow="nested", api_call=deepest) == depth - API_CALL_MAX_DEPTH
    collector.accounted(log_from)


# --- item 7: assembly ---------------------------------------------------------------------------------------------

_PARENT_SLOT = SpanData.__dict__["parent_span_id"]


class _CountingSpan(SpanData):
    """A span that counts how often anything reads its parent id: the work assembly does per span."""

    __slots__ = ()
    reads = 0

    @property  # type: ignore[override]
    def parent_span_id(self) -> int:
        _CountingSpan.reads += 1
        return _PARENT_SLOT.__get__(self)  # type: ignore[no-any-return]

    @parent_span_id.setter
    def parent_span_id(self, value: int) -> None:
        _PARENT_SLOT.__set__(self, value)


def _span(trace_id: int, span_id: int, parent: int) -> SpanData:
    return _CountingSpan(trace_id, span_id, parent, False, "s", 0, 0, 0, 0, "", {}, ())


def test_assembly_is_linear_in_the_spans_it_holds() -> None:
    held, roots = 20_000, 2_000
    assembler = TraceAssembler(10**12, 10**6)
    for i in range(held):  # children of parents that never arrive, all in one trace
        assembler.add_child(_span(1, 10 + i, 10**9 + i), 0)
    _CountingSpan.reads = 0
    for i in range(roots):
        reason, spans = assembler.add_root(_span(1, 10**8 + i, 0))
        assert reason == "complete" and len(spans) == 1
    # the first root indexes the held spans once; every later root reads only its own: was roots x held (4e7)
    assert _CountingSpan.reads <= 2 * held + 4 * roots, _CountingSpan.reads
    assert assembler.held_spans == held
    # a root that does find descendants takes exactly them, and the rest stay held
    assembler.add_child(_span(1, 7, 5), 0)
    assembler.add_child(_span(1, 8, 7), 0)
    reason, taken = assembler.add_root(_span(1, 5, 0))
    assert reason == "complete" and [s.span_id for s in taken] == [5, 7, 8]
    assert assembler.held_spans == held
    released = list(assembler.drain())
    assert [len(spans) for _, spans in released] == [held]
    assert [s.span_id for s in released[0][1]] == [10 + i for i in range(held)]  # arrival order kept


def test_many_roots_over_many_held_spans_are_accounted(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    orphans, roots = many_roots(5_000, 1_000)
    for body in (orphans, roots):
        assert collector.post(body).status_code == 200
    collector.accounted(log_from)  # the orphans are released at the trace timeout, and forwarded
    assert collector.scrape().value("flowtel_traces_released_total", reason="timeout") >= 1


# --- item 8: content removal fails closed -------------------------------------------------------------------------


def test_deeply_nested_json_inputs_neither_leak_content_nor_stop_enrichment(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    spans = flow_trace("deep-json", inputs=deep_json(50_000), canary=CANARY)
    assert collector.post(request(spans)).status_code == 200
    ids = {s.span_id for s in spans}
    collector.proc.wait_for(lambda: ids <= {s.span_id for s in collector.forwarded()})
    assert CANARY.encode() not in collector.forwarded_bytes()
    (llm,) = [s for s in collector.forwarded() if s.span_id == spans[0].span_id]
    attributes = {kv.key: kv.value for kv in llm.attributes}
    assert "inputs" not in attributes and "output" not in attributes
    assert attributes["gen_ai.usage.input_tokens"].int_value == 7  # still enriched from everything else
    assert collector.scrape().value("flow_request_total", flow="deep-json") == 1
    collector.accounted(log_from)


def _otlp_spans(canary: str) -> list[SpanData]:
    adapted = otlp.adapt(request(flow_trace("failing", canary=canary)))
    return adapted.spans


def _forwarded_otlp(out: list[Any]) -> bytes:
    return otlp.encode_request(out)


@pytest.mark.parametrize("stage", ["analyze", "enrich", "derive"])
def test_collector_host_removes_content_when_flowtel_fails(monkeypatch: pytest.MonkeyPatch, stage: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("flowtel's logic failed")
    if stage == "derive":
        monkeypatch.setattr(pipeline_module.Deriver, "derive", boom)
    else:
        monkeypatch.setattr(pipeline_module, stage, boom)
    self_metrics = SelfMetrics()
    config = FlowtelConfig()
    pipe = TracePipeline(config, FlowtelMetrics(config, self_metrics), self_metrics, otlp.apply_to_otlp_span)
    for _ in range(2):
        out = pipe.process(_otlp_spans(CANARY), 0)
        assert len(out) == 3
        forwarded = ExportTraceServiceRequest.FromString(_forwarded_otlp(out))
        assert CANARY.encode() not in forwarded.SerializeToString()
        names = {s.name for rs in forwarded.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert names == {"openai_chat", "answer", "failing"}
    stage_label = {"analyze": "analysis", "enrich": "enrichment", "derive": "derivation"}[stage]
    assert self_metrics.count("flowtel.processing.errors", stage=stage_label) == 6
    assert sum("stage failed" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_a_span_whose_content_cannot_be_removed_is_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("flowtel's logic failed")
    monkeypatch.setattr(pipeline_module, "analyze", boom)
    self_metrics = SelfMetrics()
    config = FlowtelConfig()
    pipe = TracePipeline(config, FlowtelMetrics(config, self_metrics), self_metrics, boom)
    assert pipe.process(_otlp_spans(CANARY), 0) == []
    assert self_metrics.count("flowtel.spans.dropped", reason="content_removal_failed") == 3


def test_in_process_host_removes_content_when_flowtel_fails(make_harness: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("flowtel's logic failed")
    monkeypatch.setattr(pipeline_module, "analyze", boom)
    harness = make_harness()
    tracer = trace_api.get_tracer("bounds-test")
    with tracer.start_as_current_span("flow", attributes={"framework": "promptflow", "span_type": "Flow",
                                                          "inputs": json.dumps({"q": CANARY})}) as flow:
        flow.add_event("promptflow.function.inputs", {"payload": CANARY})
        with tracer.start_as_current_span("openai_chat", attributes={
                "framework": "promptflow", "span_type": "LLM", "inputs": deep_json(50_000),
                "gen_ai.prompt.0.content": CANARY, "llm.usage.prompt_tokens": 3}):
            pass
    spans = harness.spans()
    assert sorted(s.name for s in spans) == ["flow", "openai_chat"]
    for span in spans:
        assert CANARY not in repr(dict(span.attributes)) and not span.events
        assert "inputs" not in span.attributes
    assert harness.handle.self_metrics.count("flowtel.processing.errors", stage="analysis") == 2


def test_in_process_fallback_is_rebuilt_from_what_flowtel_read(make_harness: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An enrichment that fails after taking content out of flowtel's copy of the attributes: the span that
    leaves is rebuilt from that copy, not the SDK span as it came (which still holds the content)."""
    def half_done(role: Any, capture: bool) -> Any:
        role.span.attributes.pop("inputs", None)
        raise RuntimeError("failed half way")
    monkeypatch.setattr(pipeline_module, "enrich", half_done)
    harness = make_harness()
    with trace_api.get_tracer("bounds-test").start_as_current_span("flow", attributes={
            "framework": "promptflow", "span_type": "Flow", "inputs": json.dumps({"q": CANARY})}):
        pass
    (span,) = harness.spans()
    assert "inputs" not in span.attributes and span.attributes["span_type"] == "Flow"
    assert harness.handle.self_metrics.count("flowtel.processing.errors", stage="enrichment") == 1


def test_deep_json_is_not_json_to_flowtel_but_the_span_is_still_read() -> None:
    from flowtel.processors.vocabulary import pf_inputs, token_usage
    span = otlp.adapt(request(flow_trace("f", inputs=deep_json(100_000)))).spans[0]
    assert pf_inputs(span) == {}
    assert token_usage(span) == (7, 3)


# --- item 13: repeated resource, gzip members, negative token counts ----------------------------------------------


def _kv(key: str, value: str) -> KeyValue:
    kv = KeyValue(key=key)
    kv.value.string_value = value
    return kv


def test_a_repeated_resource_field_merges_as_upb_reads_it() -> None:
    trace_id, span_id = new_trace_id(), new_span_id()
    first, second = ResourceSpans(), ResourceSpans()
    first.resource.attributes.append(_kv("service.name", "svc"))
    first.scope_spans.add().spans.add(trace_id=trace_id, span_id=span_id, name="s")
    second.resource.attributes.append(_kv("deployment", "blue"))
    resource_spans = first.SerializeToString() + second.SerializeToString()  # two resource fields: one message
    raw = b"\x0a" + otlp.w.encode_varint(len(resource_spans)) + resource_spans
    upb = ExportTraceServiceRequest.FromString(raw)
    assert {kv.key for kv in upb.resource_spans[0].resource.attributes} == {"service.name", "deployment"}
    (span,) = otlp.adapt(raw).spans
    assert dict(span.resource) == {"service.name": "svc", "deployment": "blue"}
    forwarded = ExportTraceServiceRequest.FromString(otlp.encode_request([span.native]))
    assert forwarded.resource_spans[0].resource == upb.resource_spans[0].resource


class _CountingZlib:
    """``zlib`` as ``_decompress`` uses it, counting the compressed bytes handed to inflate calls."""

    MAX_WBITS = zlib.MAX_WBITS
    error = zlib.error
    given = 0

    class _Inflater:
        def __init__(self, wbits: int) -> None:
            self._inner = zlib.decompressobj(wbits)

        def decompress(self, data: Any, max_length: int) -> bytes:
            _CountingZlib.given += len(data)
            return self._inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    @staticmethod
    def decompressobj(wbits: int) -> Any:
        return _CountingZlib._Inflater(wbits)


def test_gzip_members_decompress_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    members = 3_000
    payload = b"span bytes " * 10
    body = b"".join(gzip.compress(payload if i % 2 else b"") for i in range(members))
    monkeypatch.setattr(otlp_http, "zlib", _CountingZlib)
    assert otlp_http._decompress(body, "gzip", 1 << 20) == payload * (members // 2)
    assert _CountingZlib.given <= 4 * len(body) + 256 * members  # was sum of what is left after each member
    too_many = gzip.compress(b"") * (otlp_http.MAX_GZIP_MEMBERS + 1)
    with pytest.raises(otlp_http._Reject, match="gzip members"):
        otlp_http._decompress(too_many, "gzip", 1 << 20)


def test_many_gzip_members_are_refused_and_counted(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    response = collector.post(gzip.compress(b"") * 200_000, **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert collector.scrape().value("flowtel_receiver_refused_requests_total", reason="malformed") >= 1
    collector.accounted(log_from)


def test_negative_and_fractional_token_counts_are_ignored_and_counted(collector: Collector) -> None:
    log_from = len(collector.proc.lines)
    before = collector.scrape().value("flowtel_token_counts_ignored_total")
    spans = flow_trace("bad-tokens", prompt_tokens=-1_000_000) + flow_trace("bad-tokens", prompt_tokens="12.5")
    assert collector.post(request(spans)).status_code == 200
    collector.proc.wait_for(lambda: collector.scrape().value("flow_request_total", flow="bad-tokens") == 2)
    metrics = collector.scrape()
    assert metrics.value("token_consumption_total", flow="bad-tokens", token_type="prompt_tokens") == 0
    assert metrics.value("token_consumption_total", flow="bad-tokens", token_type="completion_tokens") == 6
    assert metrics.value("flowtel_token_counts_ignored_total") - before == 2
    collector.accounted(log_from)


def test_scrape_after_the_attacks_is_bounded(collector: Collector) -> None:
    """After every attack above, one scrape stays small: each label value is within the limit."""
    text = collector.scrape_text()
    assert max(len(v.encode()) for v in _label_values(text)) <= LABEL_LIMIT
    assert len(text) < 4 << 20
