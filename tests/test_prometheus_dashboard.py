"""Every PromQL expression of the Grafana dashboard and of the alert rules, against real data.

A real flowtel collector (common dimensions deployment=green, variant=b; a feedback receiver)
is fed real prompt flow traffic: promptflow-tracing + the openai client against the local
fake model, exported with the standard OTLP/HTTP exporter, behind a traced scoring app that
takes seed 000's client and its feedback (thumbup, thumbdown, unscored). Some of the traffic
fails (a node raising, the model answering HTTP 500), one flow streams, and the collector is
made to lose spans each way its alert watches (a receiver refusing, an exporter failing, an
exporter queue full). A real Prometheus server (the Debian package) scrapes it every second
and evaluates the chart's rules, rendered by helm.

The workload runs twice. The first round creates every series; Prometheus scrapes after each
round (at t_a and t_b). Evaluated at t_b over the window [t_a, t_b] exactly, rate() and
increase() then see the second round alone with no extrapolation, so the panels' values can be
compared with what the second round did: the Gen AI tiles with the model calls made, the
thumbs-down ratio with the feedback sent.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flowtel.instrumentation import PromptflowStreamingInstrumentor

from collector_proc import CollectorProcess
from conftest import reset_otel_globals, scrape
from fake_llm import REPLY
from feedback_client import ScoringApp, post, seed_client
from monitoring_tools import CHART, PrometheusServer, alert_rules, free_port, render_rules, run, tool, write_rules
from otlp_sink import OTLPSink
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

DASHBOARD = CHART / "dashboards" / "flowtel.json"
AB = {"deployment": "green", "variant": "b"}
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
  feedback: {endpoint: "127.0.0.1:0"}
  # Refuses everything (resident memory is always above 1 MiB): otelcol_receiver_refused_spans_total.
  otlp/refusing: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  memory_limiter/tiny: {limit_mib: 2, spike_limit_mib: 1}
  flowtel:
    common_dimensions: {deployment: green, variant: b}
    feedback: {wait: 10s}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  # Delivers: otelcol_exporter_sent_spans_total.
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
  # Nothing listens on %(dead)d. No retries: every batch fails (otelcol_exporter_send_failed_spans_total).
  otlphttp/down: {endpoint: "http://127.0.0.1:%(dead)d", retry_on_failure: {enabled: false}}
  # One consumer retrying its first batch for 30 s and room for one more: the rest cannot be queued
  # (otelcol_exporter_enqueue_failed_spans_total).
  otlphttp/stuck:
    endpoint: "http://127.0.0.1:%(dead)d"
    sending_queue: {queue_size: 1, num_consumers: 1}
    retry_on_failure: {initial_interval: 30s}
  debug: {}
service:
  # the stuck exporter would otherwise hold shutdown for the default 30 s
  shutdown_timeout: 2s
  pipelines:
    traces:
      receivers: [otlp, feedback]
      processors: [flowtel, batch]
      exporters: [prometheus, otlp/sink, otlphttp/down, otlphttp/stuck]
    traces/refusing: {receivers: [otlp/refusing], processors: [memory_limiter/tiny], exporters: [debug]}
    # The apps' own metrics and logs: delivered to the sink, failed at the dead backend, refused when over the limit.
    metrics: {receivers: [otlp], processors: [batch], exporters: [prometheus, otlp/sink, otlphttp/down]}
    logs: {receivers: [otlp], processors: [batch], exporters: [otlp/sink, otlphttp/down]}
    metrics/refusing: {receivers: [otlp/refusing], processors: [memory_limiter/tiny], exporters: [debug]}
    logs/refusing: {receivers: [otlp/refusing], processors: [memory_limiter/tiny], exporters: [debug]}
"""
#: What each round sends as feedback, one scoring request each ("meh" is no known word: unscored).
ROUND_FEEDBACK = (["thumbup", "thumbdown", "meh"], ["thumbup", "thumbup", "thumbup", "thumbdown", "meh"])


# ------------------------------------------------------------------------------------------ PromQL
def _split(expr: str) -> list[str]:
    """``expr`` cut at its top-level binary comparison and set operators: [operand, op, operand, ...]."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((o for o in (">=", "<=", "==", "!=", ">", "<") if expr.startswith(o, i)), None)
            word = re.match(r"\s(and|or|unless)\s", expr[i - 1:i + 8]) if ch in "aou" and i else None
            if op or word:
                token = op or word.group(1)  # type: ignore[union-attr]
                parts += [expr[start:i].strip(), token]
                i += len(token)
                start = i
                continue
        i += 1
    return [*parts, expr[start:].strip()]


def _strip(operand: str) -> str:
    """Drop vector-matching modifiers before an operand and parentheses around the whole of it."""
    operand = re.sub(r"^(bool\s+|(on|ignoring|group_left|group_right)\s*\([^)]*\)\s*)+", "", operand.strip())
    while operand.startswith("(") and operand.endswith(")"):
        depth = 0
        for i, ch in enumerate(operand):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(operand) - 1:
                return operand
        operand = operand[1:-1].strip()
    return operand


def operands(expr: str) -> list[str]:
    """Every vector operand of ``expr``'s comparisons and and/or/unless, recursively; numbers left out.

    For an alert such as ``ratio > 0.05`` this is the expression without its final threshold
    comparison (``ratio``); for ``(a > 3 * b) and a >= 1`` it is ``a``, ``3 * b`` and ``a``.
    """
    parts = _split(expr)
    if len(parts) == 1:
        inner = _strip(expr)
        return operands(inner) if inner != expr.strip() and len(_split(inner)) > 1 else [inner]
    out: list[str] = []
    for part in parts[::2]:
        part = _strip(part)
        if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", part):
            continue
        out += operands(part) if len(_split(part)) > 1 else [part]
    return out


def test_operands_split_alert_expressions() -> None:
    assert operands('sum by (a) (rate(x{l=~"p|q"}[5m])) / sum by (a) (rate(x[5m])) > 0.05') == [
        'sum by (a) (rate(x{l=~"p|q"}[5m])) / sum by (a) (rate(x[5m]))']
    assert operands("(a > 3 * sum by (f) (b offset 1h)) and on (f) a >= 1e-2") == [
        "a", "3 * sum by (f) (b offset 1h)", "a"]
    assert operands('up{job=~"x|y"} == 0 or absent(up{job=~"x|y"})') == ['up{job=~"x|y"}', 'absent(up{job=~"x|y"})']
    assert operands('label_replace(increase(d[5m]), "loss", "or", "", "") > 0 or e > 0') == [
        'label_replace(increase(d[5m]), "loss", "or", "", "")', "e"]


# ------------------------------------------------------------------------------------------ dashboard
def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row keeps its panels inside
    return out


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _panels(dashboard) for target in panel.get("targets", [])]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def test_dashboard_model_is_a_grafana_dashboard_for_any_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "flowtel-llm-apps"  # stable: links and provisioning refer to it
    assert dashboard["schemaVersion"] >= 38
    variables = _variables(dashboard)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "deployment", "variant", "flow"):
        variable = variables[name]
        assert variable["type"] == "query" and _variable_query(variable).startswith("label_values("), name
        # "All" must also match series without the label (no common_dimensions configured): .* does.
        assert variable["includeAll"] and variable["allValue"] == ".*", name
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(dashboard)}) == len(_panels(dashboard))
    titles = {p["title"] for p in panels}
    for wanted in ("Prompt tokens", "Completion tokens", "Total tokens", "Total calls", "Request rate",
                   "Flow latency p50 / p95 / p99", "Streaming first-byte latency", "Node latency", "Node failures",
                   "RPC latency by api_call", "RPC errors by api_call", "Tokens per model", "Thumbs-down ratio",
                   "A/B comparison", "Spans accepted / refused", "Spans dropped", "Exporters: sent and failed",
                   "Queues", "Held traces", "Collectors up", "Metric points accepted / refused",
                   "Log records accepted / refused", "Metric points and log records: sent, failed, dropped"):
        assert wanted in titles, wanted
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
    for title, target in _targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        expr = target["expr"]
        # Every derived-metric query follows the deployment / variant selectors; collector health
        # follows the job selector.
        assert 'deployment=~"$deployment", variant=~"$variant"' in expr or 'job=~"$job"' in expr, (title, expr)
    # Panels the alerts' runbook hints send people to exist under those titles.
    for rule in alert_rules(render_rules()).values():
        for cited in re.findall(r'"([^"]+)" panel', rule["annotations"]["runbook"]):
            assert cited in titles, (rule["alert"], cited)


def test_dashboard_configmap_carries_the_dashboard_unchanged() -> None:
    out = run(tool("helm"), "template", "flowtel", str(CHART), "--set", "dashboard.enabled=true",
              "--show-only", "templates/dashboard-configmap.yaml").stdout
    [configmap] = [d for d in yaml.safe_load_all(out) if d]
    assert json.loads(configmap["data"]["flowtel.json"]) == _dashboard()


# ------------------------------------------------------------------------------------------ the live test
def _substitute(expr: str, window: str) -> str:
    """What Grafana does before sending a query: variables at "All" (.*) and the time macros."""
    for name in ("deployment", "variant", "flow", "job"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", window).replace("$__range", window).replace("$__interval", "1s")


def _values(result: list[dict[str, Any]], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(k, "") for k in keys): float(r["value"][1]) for r in result}


def _refused_request(url: str) -> None:
    """One span the memory-limited receiver must refuse. Sent by hand: the standard exporter would
    retry the 503 for its whole timeout."""
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "refused",
            "kind": 1, "startTimeUnixNano": "1", "endTimeUnixNano": "2"}
    body = json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}).encode()
    status, _, _ = post(url + "/v1/traces", body, {"Content-Type": "application/json"})
    assert status == 503
    point = {"asInt": "1", "timeUnixNano": "2"}
    metric = {"name": "refused", "gauge": {"dataPoints": [point]}}
    metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]}
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "refused"}}]}]}]}
    for path, request in (("/v1/metrics", metrics), ("/v1/logs", logs)):
        status, _, _ = post(url + path, json.dumps(request).encode(), {"Content-Type": "application/json"})
        assert status == 503, path


class AppSignals:
    """The app's own metrics and logs, sent with the SDK's OTLP/HTTP exporters: one counter point and one log
    record per round."""

    def __init__(self, endpoint: str) -> None:
        resource = Resource.create({"service.name": "chat-app"})
        self.reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint + "/v1/metrics"),
                                                    export_interval_millis=3_600_000)
        self.meters = MeterProvider(resource=resource, metric_readers=[self.reader])
        self.counter = self.meters.get_meter("chat-app").create_counter("app.rounds")
        self.logs = LoggerProvider(resource=resource)
        self.logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint + "/v1/logs")))

    def round(self) -> None:
        self.counter.add(1)
        assert self.meters.force_flush(10_000)
        self.logs.get_logger("chat-app").emit(body="round done")

    def shutdown(self) -> None:
        self.meters.shutdown()
        self.logs.shutdown()


def _run_round(feedback: list[str], app: ScoringApp, collector: CollectorProcess, provider: TracerProvider,
               llm_url: str, signals: AppSignals) -> None:
    signals.round()
    for body in feedback:
        exchange = seed_client(app.url, collector.feedback["feedback"], body)
        assert exchange.feedback_status == 200
        assert provider.force_flush(10_000)  # the request's spans reach the collector while its feedback waits
    with pytest.raises(ValueError):
        run_dag_flow("broken_flow", {"question": QUESTION}, [("retrieve", retrieve_tool(llm_url)),
                                                             ("broken", broken_tool)])
    with pytest.raises(openai.InternalServerError):
        run_dag_flow("chat_flow", {"question": QUESTION}, [("answer", answer_tool(llm_url, "fail-500"))])
    STREAM_LLM[:] = [client(llm_url)]
    assert "".join(stream_flow(QUESTION)) == REPLY
    assert provider.force_flush(10_000)
    _refused_request(collector.http["otlp/refusing"])


def _settled(collector: CollectorProcess, requests: int, feedback: int, refused: int) -> None:
    """Wait until the collector has counted everything sent so far (feedback joined to its request)."""
    def done() -> bool:
        m = scrape(collector.prometheus["prometheus"])
        return (m.value("flow_request_total") == requests and m.value("feedback_total", correlated="true") == feedback
                and m.value("otelcol_receiver_refused_spans_total") == refused)
    collector.wait_for(done, timeout=30)


def _scraped_after(prometheus: PrometheusServer, moment: float) -> int:
    """Timestamp (ms) of the first scrape of the collector that started after ``moment`` (epoch s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = prometheus.query('timestamp(up{job="flowtel"})')
        if result and float(result[0]["value"][1]) > moment:
            return round(float(result[0]["value"][1]) * 1000)
        time.sleep(0.2)
    raise AssertionError(f"prometheus did not scrape the collector after {moment}:\n{prometheus.log}")


@pytest.fixture
def tracing_to():  # type: ignore[no-untyped-def]
    """Point promptflow-tracing (the global tracer provider) at a collector; first-chunk events on."""
    providers: list[TracerProvider] = []
    streaming = PromptflowStreamingInstrumentor()
    instrumented_here = not streaming.is_instrumented_by_opentelemetry
    if instrumented_here:
        streaming.instrument()

    def connect(endpoint: str) -> TracerProvider:
        reset_otel_globals()
        provider = TracerProvider(resource=Resource.create({"service.name": "chat-app"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces"),
                                                       schedule_delay_millis=200))
        trace.set_tracer_provider(provider)
        use_promptflow_openai_injection(True)
        providers.append(provider)
        return provider

    yield connect
    for provider in providers:
        provider.shutdown()
    reset_otel_globals()
    if instrumented_here:
        streaming.uninstrument()


def test_every_dashboard_and_rule_expression_returns_data(tmp_path: Path, fake_llm, tracing_to) -> None:  # type: ignore[no-untyped-def]
    dashboard = _dashboard()
    (tmp_path / "prometheus").mkdir()
    default_rules = write_rules(render_rules(), tmp_path / "prometheus" / "rules.yaml")
    with OTLPSink() as sink:
        collector = CollectorProcess(CONFIG % {"sink": sink.endpoint, "dead": free_port()}, tmp_path).start()
        metrics_url = collector.prometheus["prometheus"]
        prometheus = PrometheusServer(tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            # The chart's rules, evaluated by this server too: they must load and evaluate cleanly.
            "rule_files": [default_rules.name],
            "scrape_configs": [{
                "job_name": "flowtel",
                "metrics_path": "/metrics",
                # The collector alerts select job and namespace, as a ServiceMonitor of release
                # "flowtel" in namespace "default" labels its targets (the Prometheus operator adds
                # `namespace`); a static label stands in for that here.
                "static_configs": [{"targets": [metrics_url.split("/")[2]], "labels": {"namespace": "default"}}],
            }],
        })
        prometheus.start()
        try:
            provider = tracing_to(collector.http["otlp"])
            signals = AppSignals(collector.http["otlp"])
            with ScoringApp(fake_llm.base_url) as app:
                first, second = ROUND_FEEDBACK
                _run_round(first, app, collector, provider, fake_llm.base_url, signals)
                _settled(collector, requests=len(first) + 3, feedback=len(first), refused=1)
                t_a = _scraped_after(prometheus, time.time())
                calls_before = len(fake_llm.requests)
                _run_round(second, app, collector, provider, fake_llm.base_url, signals)
                calls = [(path, body) for path, body in fake_llm.requests[calls_before:]
                         if not str(body.get("model")).startswith("fail-")]
                failed_calls = len(fake_llm.requests[calls_before:]) - len(calls)
                _settled(collector, requests=len(first) + len(second) + 6, feedback=len(first) + len(second),
                         refused=2)
                t_b = _scraped_after(prometheus, time.time())
            signals.shutdown()
            window = f"{t_b - t_a}ms"
            seconds = (t_b - t_a) / 1000
            at = t_b / 1000

            def query(expr: str) -> list[dict[str, Any]]:
                return prometheus.query(expr, at)

            # ---- every dashboard query returns data (at least one series with a number) ----
            empty = []
            results: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for title, target in _targets(dashboard):
                result = query(_substitute(target["expr"], window))
                results[(title, target["refId"])] = result
                if not any(not math.isnan(float(r["value"][1])) for r in result):
                    empty.append((title, target["refId"], target["expr"]))
            assert not empty, f"dashboard queries without data: {empty}"

            # ---- the variables' label_values queries, as Grafana runs them (the series API) ----
            for name, variable in _variables(dashboard).items():
                if variable["type"] != "query":
                    continue
                metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", _variable_query(variable)).groups()
                values = prometheus.api(f"label/{label}/values", **{"match[]": _substitute(metric, window)})
                expected = {"job": {"flowtel"}, "deployment": {"green"}, "variant": {"b"},
                            "flow": {"chat_flow", "broken_flow", "stream_flow"}}[name]
                assert set(values) == expected, (name, values)

            # ---- values: the second round, exactly ----
            def panel(title: str, ref: str = "A") -> list[dict[str, Any]]:
                return results[(title, ref)]

            chat_calls = sum(path.endswith("/chat/completions") for path, _ in calls)
            prompt_tokens = len(calls) * len(QUESTION.split())  # every call asks QUESTION
            completion_tokens = chat_calls * len(REPLY.split())  # every chat answers REPLY; embeddings none
            assert (len(calls), chat_calls) == (len(second) * 2 + 1 + 2, len(second) + 2)
            # A failed model call is a call too (its duration and error.type are recorded); it has no tokens.
            assert failed_calls == 1
            assert float(panel("Total calls")[0]["value"][1]) == len(calls) + failed_calls
            assert float(panel("Prompt tokens")[0]["value"][1]) == prompt_tokens
            assert float(panel("Completion tokens")[0]["value"][1]) == completion_tokens
            assert float(panel("Total tokens")[0]["value"][1]) == prompt_tokens + completion_tokens

            # Requests per flow in the selected deployment / variant: the scoring app's chat_flow
            # requests and the one whose model call failed; one broken and one streamed flow.
            rate = _values(panel("Request rate"), "flow", "deployment", "variant")
            requests = {"chat_flow": len(second) + 1, "broken_flow": 1, "stream_flow": 1}
            assert {k: round(v * seconds, 6) for k, v in rate.items()} == {
                (flow, "green", "b"): n for flow, n in requests.items()}
            assert _values(panel("Flow error ratio"), "flow") == pytest.approx(
                {("chat_flow",): 1 / requests["chat_flow"], ("broken_flow",): 1.0, ("stream_flow",): 0.0})
            assert set(_values(panel("Flow errors"), "flow", "exception")) == {
                ("chat_flow", "InternalServerError"), ("broken_flow", "ValueError")}
            assert ("stream_flow",) in _values(panel("Streaming first-byte latency"), "flow")
            assert set(_values(panel("Node failures"), "flow", "node", "exception")) == {
                ("chat_flow", "answer", "InternalServerError"), ("broken_flow", "broken", "ValueError")}
            assert set(_values(panel("RPC errors by api_call"), "api_call", "exception")) == {
                ("openai_chat", "InternalServerError")}
            assert {k for k, _ in _values(panel("Tokens per model"), "llm_engine", "token_type").items()} >= {
                ("gpt-4o-mini", "prompt_tokens"), ("gpt-4o-mini", "completion_tokens"),
                ("text-embedding-3-small", "prompt_tokens")}
            # Thumbs-down share of what was sent in round two: 1 thumbdown of 4 scored ("meh" is unscored).
            scored = [b for b in second if b in ("thumbup", "thumbdown")]
            assert _values(panel("Thumbs-down ratio"), "flow", "deployment", "variant") == {
                ("chat_flow", "green", "b"): scored.count("thumbdown") / len(scored)}
            received = _values(panel("Feedback received"), "score_label", "correlated")
            assert {k: round(v * seconds, 6) for k, v in received.items()} == {
                ("thumbup", "true"): second.count("thumbup"), ("thumbdown", "true"): 1, ("unscored", "true"): 1}
            # The A/B table's row for this deployment / variant.
            table = {ref: _values(panel("A/B comparison", ref), "deployment", "variant")[("green", "b")]
                     for ref in "ABCDE"}
            all_requests = sum(requests.values())
            assert table["A"] * seconds == pytest.approx(all_requests)
            assert table["B"] == pytest.approx(2 / all_requests)
            assert table["D"] == pytest.approx((prompt_tokens + completion_tokens) / all_requests)
            assert table["E"] == pytest.approx(0.25)
            # Collector health: one refused span this round; the dead and the stuck exporters' losses.
            refused = _values(panel("Spans accepted / refused", "B"), "receiver", "reason")
            assert refused[("otlp/refusing", "memory_limit")] * seconds == pytest.approx(1)
            assert ("otlp/sink",) in _values(panel("Exporters: sent and failed", "A"), "exporter")
            assert ("otlphttp/down", "permanent_error") in _values(panel("Exporters: sent and failed", "B"),
                                                                   "exporter", "reason")
            assert ("otlphttp/stuck",) in _values(panel("Exporters: sent and failed", "C"), "exporter")
            assert [float(r["value"][1]) for r in panel("Collectors up", "A")] == [1.0]
            # The app's metrics and logs: one point and one record accepted, and one of each refused, this round.
            for title in ("Metric points accepted / refused", "Log records accepted / refused"):
                accepted = _values(panel(title, "A"), "receiver", "transport")
                assert accepted[("otlp", "http")] * seconds == pytest.approx(1), title
                refused = _values(panel(title, "B"), "receiver", "reason")
                assert refused[("otlp/refusing", "memory_limit")] * seconds == pytest.approx(1), title
            exported = "Metric points and log records: sent, failed, dropped"
            for ref in "AB":
                assert _values(panel(exported, ref), "exporter")[("otlp/sink",)] * seconds == pytest.approx(1), ref
            for ref in "CD":
                assert ("otlphttp/down", "permanent_error") in _values(panel(exported, ref), "exporter", "reason")

            # ---- every rule expression, over the same window ----
            rules = alert_rules(render_rules(f"alerts.rateWindow={window}"))
            empty = []
            for name, rule in rules.items():
                # Each operand of the alert's comparisons and and/or: for `ratio > 0.05` that is the
                # expression without its final threshold comparison. `offset 1h` points before this
                # Prometheus existed, so the token spike's baseline is evaluated at offset 0 (same
                # series and labels, only an hour later).
                for operand in operands(rule["expr"]):
                    operand = operand.replace(" offset 1h", "")
                    if operand.startswith("absent("):
                        # absent() answers only when its series are missing: here they must exist.
                        assert query(operand) == [], (name, operand)
                        operand = operand[len("absent("):-1]
                    if not query(operand):
                        empty.append((name, operand))
            assert not empty, f"rule expressions without data: {empty}"

            # (the panel shows flows without a 5xx at 0; the rule has nothing to say about them)
            ratio = operands(rules["FlowtelFlowErrorRatioHigh"]["expr"])[0]
            assert _values(query(ratio), "flow", "deployment", "variant") == pytest.approx({
                ("chat_flow", "green", "b"): 1 / requests["chat_flow"], ("broken_flow", "green", "b"): 1.0})
            thumbs_down = operands(rules["FlowtelFeedbackThumbsDownRatioHigh"]["expr"])[0]
            assert _values(query(thumbs_down), "flow") == {("chat_flow",): 0.25}
            # The whole alert expressions over round two's traffic: which series would alert.
            fired = {name: query(rule["expr"]) for name, rule in rules.items()}
            assert set(_values(fired["FlowtelFlowErrorRatioHigh"], "flow")) == {("chat_flow",), ("broken_flow",)}
            assert set(_values(fired["FlowtelNodeFailureRatioHigh"], "flow", "node")) == {
                ("chat_flow", "answer"), ("broken_flow", "broken")}
            assert {r["metric"]["loss"] for r in fired["FlowtelCollectorDroppingData"]} == {
                "dropped", "refused", "send_failed", "enqueue_failed"}
            for quiet in ("FlowtelFlowLatencyP95High", "FlowtelCollectorDown", "FlowtelTokenRateSpike",
                          "FlowtelFeedbackThumbsDownRatioHigh"):
                # fast flows; scraped; nothing an hour ago to spike from; 25% < 30%
                assert fired[quiet] == [], quiet

            # ---- Prometheus's own evaluation of the rules as installed (5m windows) ----
            groups = prometheus.api("rules")["groups"]
            assert {r["name"] for g in groups for r in g["rules"]} == set(rules)
            assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
            pending: set[str] = set()
            deadline = time.monotonic() + 10
            wanted = {"FlowtelFlowErrorRatioHigh", "FlowtelNodeFailureRatioHigh", "FlowtelCollectorDroppingData"}
            while not wanted <= pending and time.monotonic() < deadline:
                pending = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]
                           if a["state"] == "pending"}
                time.sleep(0.5)
            assert wanted <= pending, pending
            assert not pending & {"FlowtelCollectorDown", "FlowtelFlowLatencyP95High", "FlowtelTokenRateSpike"}
        finally:
            prometheus.stop()
            assert collector.stop() == 0, collector.log
