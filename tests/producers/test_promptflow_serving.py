"""Prompt flow serving, run as users run it, through the flowtel collector: every figure flowtel derives equals what
the fake model returned, what the client sent, and what prompt flow serving's own metrics say.

``pf flow serve`` (promptflow 1.18.5, its own venv: see ``pf_serving/harness.py``) serves a DAG flow with a python
node and an LLM node on prompt flow's LLM tool. Serving is given only ``OTEL_EXPORTER_OTLP_ENDPOINT`` with
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` (its http/protobuf exporters fail on SDK 1.3x); ``pf_serving/otlp_tee.py`` is that
endpoint, forwarding traces to the collector and keeping serving's own metrics, exported once at exit. The seed 000
client scores and then posts feedback with the same ``traceparent``; some requests are streamed
(``Accept: text/event-stream``) and one fails in the python node (prompt flow answers 400).

The ``direct`` run gives serving the collector itself as that endpoint: the collector takes traces, metrics and logs,
and its duplicate policy leaves one series per label set for prompt flow's eight metrics (``drop``: flowtel's;
``prefix``: serving's copies next to them under ``received_``).

Known differences from serving's own metrics, by design (README, "Prompt flow serving"): its ``flow`` label is
``default_flow_id``, flowtel's the flow's name; its ``llm_engine`` is only a ``deployment_name`` input ("" on an
OpenAI connection), flowtel's the model asked for; its node ``exception`` is the error code (``ToolExecutionError``),
flowtel's the exception the node raised (``ValueError``).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pf_serving.harness import Serving, create_connection, free_port, venv_bin
from pf_serving.otlp_tee import OTLPTee

from flowtel.collector.log_content import NODE_OUTPUT_REMOVED

from collector_proc import CollectorProcess
from conftest import Scrape, scrape
from fake_llm import REPLY, FakeLLMServer, _words
from feedback_client import post, seed_client
from otlp_sink import OTLPSink

CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel: {}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [flowtel, batch], exporters: [prometheus, otlp/sink]}
"""
PLAIN, STREAMED = 3, 2
CHUNK_DELAY_S = 0.1  # each streamed chunk waits this long: the stream outlasts everything else in a request
FLOW = "flow"  # prompt flow names a DAG flow's span after its folder
CANARY = "canary-7f3a9c"  # sent in a question: with content capture off it must leave in no exported byte


@dataclass
class Run:
    flowtel: Scrape
    serving: dict[str, list[tuple[dict[str, str], Any]]]
    llm_requests: list[tuple[str, dict[str, Any]]]
    streamed_bodies: list[bytes]
    statuses: list[int]
    sent_by_serving: list[Any]  # spans as serving sent them
    exported: list[Any]  # spans as flowtel forwarded them


def _stream_request(url: str) -> tuple[int, bytes]:
    status, _, body = post(url, json.dumps({"question": f"how are streams counted {CANARY}",
                                            "chat_history": []}).encode(),
                           {"Content-Type": "application/json", "Accept": "text/event-stream"})
    return status, body


def _workload(url: str) -> tuple[list[int], list[bytes]]:
    """The seed client PLAIN times (score, then feedback), STREAMED streamed requests, one failing request."""
    statuses, bodies = [], []
    for _ in range(PLAIN):
        exchange = seed_client(url + "/score", url + "/feedback")
        assert exchange.answer == {"answer": REPLY} and exchange.feedback_status == 200
        statuses.append(200)
    for _ in range(STREAMED):
        status, body = _stream_request(url + "/score")
        statuses.append(status)
        bodies.append(body)
    status, _, body = post(url + "/score", json.dumps({"question": f"raise {CANARY}"}).encode(),
                           {"Content-Type": "application/json"})
    assert json.loads(body)["error"]["code"] == "UserError"
    statuses.append(status)
    return statuses, bodies


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("pfserving")
    with FakeLLMServer(chunk_delay_s=CHUNK_DELAY_S) as llm:
        create_connection(tmp, llm.base_url.removesuffix("/v1"))
        sink = OTLPSink().start()
        collector = CollectorProcess(CONFIG % {"sink": sink.endpoint}, tmp).start()
        tee = OTLPTee(collector.grpc["otlp"])
        serving = Serving(tmp, {"OTEL_EXPORTER_OTLP_ENDPOINT": tee.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        try:
            statuses, bodies = _workload(serving.url)
        finally:
            assert serving.stop() == 0, serving.log[-3000:]
        url = collector.prometheus["prometheus"]
        try:
            collector.wait_for(lambda: scrape(url).value("flow_request_total") == PLAIN + STREAMED + 1
                               and scrape(url).value("feedback_total") == PLAIN
                               and len(sink.spans()) == len(tee.spans()))
            yield Run(scrape(url), tee.metric_points(), list(llm.requests), bodies, statuses, tee.spans(),
                      [span for span, _ in sink.spans()])
        finally:
            collector.stop()
            tee.stop()
            sink.stop()


def _serving_value(run: Run, name: str, **labels: str) -> float:
    """Sum (counters) or count (histograms) of serving's own data points whose attributes include ``labels``."""
    total = 0.0
    for attributes, point in run.serving.get(name, []):
        if all(attributes.get(k) == v for k, v in labels.items()):
            total += point.count if hasattr(point, "bucket_counts") else point.as_int
    return total


def test_answers_as_a_client_sees_them(run: Run) -> None:
    assert run.statuses == [200] * (PLAIN + STREAMED) + [400]
    for body in run.streamed_bodies:
        chunks = [json.loads(line[6:])["answer"] for line in body.decode().splitlines() if line.startswith("data: ")]
        assert "".join(chunks) == REPLY


def test_tokens_equal_what_the_fake_model_returned(run: Run) -> None:
    chats = [request for path, request in run.llm_requests if path.endswith("/chat/completions")]
    plain = [r for r in chats if not r.get("stream")]
    assert (len(plain), len(chats) - len(plain)) == (PLAIN, STREAMED)
    prompt = sum(_words(r["messages"]) for r in plain)
    completion = len(REPLY.split()) * PLAIN
    # Streamed calls: prompt flow counts their tokens with tiktoken, which cannot download its encoding offline,
    # so neither prompt flow nor flowtel has a count for them.
    for token_type, expected in (("prompt_tokens", prompt), ("completion_tokens", completion)):
        assert run.flowtel.value("token_consumption_total", flow=FLOW, node="chat", llm_engine="gpt-fake",
                                 token_type=token_type) == expected
        assert run.flowtel.value("token_consumption_total", token_type=token_type) == expected
        assert _serving_value(run, "token_consumption", node="chat", token_type=token_type) == expected


@pytest.mark.parametrize(("code", "streaming", "exception", "count"), [
    ("200", "False", "", PLAIN), ("200", "True", "", STREAMED), ("400", "False", "ToolExecutionError", 1)])
def test_requests_per_status_equal_servings(run: Run, code: str, streaming: str, exception: str,
                                            count: int) -> None:
    labels = {"response_code": code, "streaming": streaming, "exception": exception}
    assert run.flowtel.value("flow_request_total", flow=FLOW, **labels) == count
    assert _serving_value(run, "flow_request", **labels) == count


@pytest.mark.parametrize(("code", "streaming", "response_type", "count"), [
    ("200", "False", "default", PLAIN), ("200", "True", "firstbyte", STREAMED),
    ("200", "True", "lastbyte", STREAMED), ("400", "False", "default", 1)])
def test_latency_counts_equal_servings(run: Run, code: str, streaming: str, response_type: str,
                                       count: int) -> None:
    labels = {"response_code": code, "streaming": streaming, "response_type": response_type}
    assert run.flowtel.value("flow_latency_count", flow=FLOW, **labels) == count
    assert _serving_value(run, "flow_latency", **labels) == count


def test_node_and_call_counts_equal_servings(run: Run) -> None:
    for node, status, n in (("prepare", "Completed", PLAIN + STREAMED), ("prepare", "Failed", 1),
                            ("chat", "Completed", PLAIN + STREAMED)):
        assert run.flowtel.value("node_latency_count", flow=FLOW, node=node, run_status=status) == n
        assert run.flowtel.value("node_request_total", flow=FLOW, node=node, run_status=status) == n
        assert _serving_value(run, "node_latency", node=node, run_status=status) == n
        assert _serving_value(run, "node_request", node=node, run_status=status) == n
    assert run.flowtel.value("node_request_total", node="prepare", exception="ValueError") == 1
    assert _serving_value(run, "node_request", node="prepare", exception="ToolExecutionError") == 1
    calls = PLAIN + STREAMED
    assert run.flowtel.value("rpc_request_total", flow=FLOW, node="chat", api_call="openai_chat", exception="") == calls
    assert run.flowtel.value("rpc_latency_count", flow=FLOW, node="chat", api_call="openai_chat") == calls
    assert _serving_value(run, "rpc_request", node="chat", api_call="openai_chat") == calls
    assert run.flowtel.value("rpc_request_total") == calls  # nothing counted outside the flow


def _sum(scrape_: Scrape, name: str, **labels: str) -> float:
    return scrape_.value(name, **labels)


def _serving_sum(run: Run, name: str, **labels: str) -> float:
    return sum(p.sum for a, p in run.serving.get(name, []) if all(a.get(k) == v for k, v in labels.items()))


def test_streaming_first_and_last_byte_match_servings_figures(run: Run) -> None:
    """flowtel's definition (no first-chunk signal in serving's spans): firstbyte is the end of the flow span, when
    the flow handed the stream to the server; lastbyte the end of the request's last span, the one that wraps the
    stream. Each stream takes several CHUNK_DELAY_S, so both figures are checked against serving's own to a
    fraction of the stream's duration, whatever the machine's speed."""
    streamed = {"flow": FLOW, "response_code": "200", "streaming": "True"}
    first = _sum(run.flowtel, "flow_latency_sum", **streamed, response_type="firstbyte") / STREAMED
    last = _sum(run.flowtel, "flow_latency_sum", **streamed, response_type="lastbyte") / STREAMED
    duration = _sum(run.flowtel, "flow_streaming_response_duration_sum", flow=FLOW) / STREAMED
    assert _sum(run.flowtel, "flow_streaming_response_duration_count", flow=FLOW) == STREAMED
    pf = {"response_code": "200", "streaming": "True"}
    pf_first = _serving_sum(run, "flow_latency", **pf, response_type="firstbyte") / STREAMED
    pf_last = _serving_sum(run, "flow_latency", **pf, response_type="lastbyte") / STREAMED
    pf_duration = _serving_sum(run, "flow_streaming_response_duration") / STREAMED
    stream_ms = CHUNK_DELAY_S * 1000 * len(REPLY.split())
    assert pf_duration >= 0.9 * stream_ms and duration >= 0.9 * stream_ms  # the stream itself is measured
    assert abs(duration - pf_duration) < 0.25 * pf_duration
    assert abs(first - pf_first) < 0.25 * pf_duration
    assert abs(last - pf_last) < 0.25 * pf_duration
    assert first < last


def test_feedback_is_joined_to_the_request_it_judges(run: Run) -> None:
    assert run.flowtel.value("feedback_total", flow=FLOW, correlated="true") == PLAIN


def test_no_content_leaves_the_collector(run: Run) -> None:
    """Capture is off by default: the canary serving put in its spans (flow and node inputs, the prompt) is in no
    byte the collector forwards, and every span is forwarded once."""
    assert any(CANARY.encode() in span.SerializeToString() for span in run.sent_by_serving)
    assert sorted(s.span_id for s in run.exported) == sorted(s.span_id for s in run.sent_by_serving)
    assert not [s.name for s in run.exported if CANARY.encode() in s.SerializeToString()]


def test_response_code_without_a_server_span_is_what_serving_answered(tmp_path: Path) -> None:
    """Under ``--engine fastapi`` there is no SERVER span (no FastAPI instrumentation is installed): the code comes
    from prompt flow's own spans, a node raising being a user error that serving answers 400."""
    with FakeLLMServer() as llm:
        create_connection(tmp_path, llm.base_url.removesuffix("/v1"))
        sink = OTLPSink().start()
        collector = CollectorProcess(CONFIG % {"sink": sink.endpoint}, tmp_path).start()
        tee = OTLPTee(collector.grpc["otlp"])
        try:
            serving = Serving(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": tee.endpoint,
                                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, engine="fastapi")
            try:
                headers = {"Content-Type": "application/json"}
                ok = post(serving.url + "/score", json.dumps({"question": "hello there"}).encode(), headers)
                failed = post(serving.url + "/score", json.dumps({"question": "raise please"}).encode(), headers)
                assert (ok[0], failed[0]) == (200, 400)
            finally:
                serving.stop()
            url = collector.prometheus["prometheus"]
            collector.wait_for(lambda: scrape(url).value("flow_request_total") == 2)
            assert not [s for s in tee.spans() if s.kind == 2], "a SERVER span was sent: the premise is gone"
            for code, exception in (("200", ""), ("400", "ToolExecutionError")):
                labels = {"response_code": code, "exception": exception, "streaming": "False"}
                assert scrape(url).value("flow_request_total", flow=FLOW, **labels) == 1
                assert _serving_value(Run(scrape(url), tee.metric_points(), [], [], [], [], []), "flow_request",
                                      **labels) == 1
        finally:
            collector.stop()
            tee.stop()
            sink.stop()


# -- direct: serving's one endpoint is the collector, which takes all three signals ---------------------------------

DIRECT_CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel: {}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  prometheus/prefix: {endpoint: "127.0.0.1:0", duplicate_derived_metrics: prefix}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [flowtel, batch], exporters: [prometheus, prometheus/prefix, otlp/sink]}
    metrics: {receivers: [otlp], processors: [batch], exporters: [prometheus, prometheus/prefix, otlp/sink]}
    logs: {receivers: [otlp], processors: [batch], exporters: [otlp/sink]}
"""
#: prompt flow's eight standard metrics, as serving names them
STANDARD = ("token_consumption", "flow_latency", "node_latency", "flow_request", "node_request", "rpc_latency",
            "rpc_request", "flow_streaming_response_duration")
EXPORT_ERROR = re.compile(r"Failed to export|encountered while exporting|Exception while exporting|"
                          r"StatusCode\.(UNIMPLEMENTED|UNAVAILABLE|INVALID_ARGUMENT|RESOURCE_EXHAUSTED)")


@dataclass
class Direct:
    dropping: Scrape  # the shipped policy: serving's copies of the eight dropped
    prefixed: Scrape  # duplicate_derived_metrics: prefix
    serving_log: str
    sink: OTLPSink  # what the collector forwarded: serving's spans, metrics and logs
    collector: CollectorProcess


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    """Serving given nothing but ``OTEL_EXPORTER_OTLP_ENDPOINT`` (gRPC), pointing at the collector itself; stopped
    with SIGINT, so its meter provider exports the metrics it holds at exit (its interval is a fixed 60 s)."""
    tmp = tmp_path_factory.mktemp("pfserving-direct")
    with FakeLLMServer(chunk_delay_s=CHUNK_DELAY_S) as llm, OTLPSink() as sink:
        create_connection(tmp, llm.base_url.removesuffix("/v1"))
        collector = CollectorProcess(DIRECT_CONFIG % {"sink": sink.endpoint}, tmp).start()
        try:
            serving = Serving(tmp, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc['otlp']}",
                                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
            try:
                _workload(serving.url)
            finally:
                assert serving.stop() == 0, serving.log[-3000:]
            dropping, prefixed = collector.prometheus["prometheus"], collector.prometheus["prometheus/prefix"]

            def arrived() -> bool:
                sent = _standard_points(sink)
                return bool(sent and sink.log_records()) and all(
                    scrape(url).value("flow_request_total") == PLAIN + STREAMED + 1
                    and scrape(url).value("feedback_total") == PLAIN for url in (dropping, prefixed)) and (
                    scrape(dropping).value("otelcol_exporter_send_failed_metric_points_total",
                                           reason="derived_duplicate") == sent)

            collector.wait_for(arrived)
            yield Direct(scrape(dropping), scrape(prefixed), serving.log, sink, collector)
        finally:
            assert collector.stop() == 0, collector.log[-3000:]


def _standard_points(sink: OTLPSink) -> int:
    """Points of the eight standard metrics serving sent (all its exports: each repeats the cumulative totals)."""
    return sum(len(points) for name, points in sink.metrics().items() if name in STANDARD)


def _family(sample_name: str) -> str:
    for suffix in ("_total", "_created", "_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def _last_points(sink: OTLPSink, name: str) -> dict[frozenset[tuple[str, str]], Any]:
    """Serving's totals of one metric per label set: its last export's point (exports are cumulative)."""
    last: dict[frozenset[tuple[str, str]], Any] = {}
    for point in sink.metrics().get(name, []):
        last[frozenset((kv.key, kv.value.string_value) for kv in point.attributes)] = point
    return last


def test_direct_nothing_serving_sends_is_refused_or_lost(direct: Direct) -> None:
    """Traces, metrics and logs all taken: no export error in serving's output, nothing refused, and every span,
    metric point and log record the collector accepted reached the sink behind it."""
    errors = [line for line in direct.serving_log.splitlines() if EXPORT_ERROR.search(line)]
    assert not errors, errors[:3]
    own = direct.dropping
    for unit in ("spans", "metric_points", "log_records"):
        assert own.value(f"otelcol_receiver_refused_{unit}_total") == 0, unit
    assert own.value("flowtel_receiver_refused_requests_total") == 0
    spans, records = len(direct.sink.spans()), len(direct.sink.log_records())
    points = sum(len(p) for p in direct.sink.metrics().values())
    assert spans and points and records
    assert own.value("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == spans
    assert own.value("otelcol_receiver_accepted_metric_points_total", receiver="otlp", transport="grpc") == points
    assert own.value("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="grpc") == records
    assert own.value("otelcol_exporter_sent_log_records_total", exporter="otlp/sink") == records


def test_direct_one_series_per_label_set_the_derived_ones(direct: Direct, run: Run) -> None:
    """The shipped policy (``duplicate_derived_metrics: drop``): the eight are flowtel's, with the figures the tee
    run above checks against serving's own; serving's copies are not served, each of their points counted."""
    served = direct.dropping
    keys = [(s.name, frozenset(s.labels.items())) for s in served.samples]
    assert len(keys) == len(set(keys)), "a series is served twice"
    assert _counted(served) == _counted(run.flowtel)
    derived = [s for s in served.samples if _family(s.name) in STANDARD]
    assert derived and {s.labels["flow"] for s in derived} == {FLOW}
    assert not [s.name for s in served.samples if s.name.startswith("received_")
                or s.labels.get("flow") == "default_flow_id"]
    sent = _standard_points(direct.sink)
    assert sent >= len(STANDARD) - 1  # every figure but tokens of streams, per label set, at least once
    assert served.value("otelcol_exporter_send_failed_metric_points_total", exporter="prometheus",
                        reason="derived_duplicate") == sent
    logged = "exporter prometheus dropped received metric points (reason: derived_duplicate)"
    direct.collector.wait_for(lambda: logged in direct.collector.log)
    assert direct.collector.log.count("(reason: derived_duplicate)") == 1  # logged once, counted per point
    # serving's other metrics (Flask's) are not derived: served under their own names
    assert served.find("http_server_active_requests", job="promptflow")


def test_direct_prefix_serves_servings_own_copies_next_to_the_derived(direct: Direct) -> None:
    """``duplicate_derived_metrics: prefix``: serving's eight under ``received_``, with exactly its figures (flow
    label ``default_flow_id``), next to flowtel's, which are as on the dropping endpoint; nothing dropped."""
    served = direct.prefixed
    assert _counted(served) == _counted(direct.dropping)
    assert served.value("otelcol_exporter_send_failed_metric_points_total", exporter="prometheus/prefix") == 0
    compared = 0
    for name in STANDARD:
        for labels, point in _last_points(direct.sink, name).items():
            assert dict(labels)["flow"] == "default_flow_id"
            wanted = dict(labels, job="promptflow")
            if hasattr(point, "bucket_counts"):
                assert served.value(f"received_{name}_count", **wanted) == point.count, (name, wanted)
                assert served.value(f"received_{name}_sum", **wanted) == pytest.approx(point.sum), (name, wanted)
            else:
                assert served.value(f"received_{name}_total", **wanted) == point.as_int, (name, wanted)
            compared += 1
    assert compared == len(served.find("received_flow_request_total")) + sum(
        len(served.find(f"received_{n}_total")) for n in ("token_consumption", "node_request", "rpc_request")) + sum(
        len(served.find(f"received_{n}_count")) for n in ("flow_latency", "node_latency", "rpc_latency",
                                                          "flow_streaming_response_duration"))
    assert served.value("received_flow_request_total", flow="default_flow_id") == PLAIN + STREAMED + 1


def test_direct_logs_reach_the_sink_without_content(direct: Direct) -> None:
    """Serving's own log records (prompt flow's loggers) pass the logs pipeline to the OTLP sink: severity, body and
    attributes as sent, and the canary of the requests in none of them."""
    records = direct.sink.log_records()
    bodies = [record.body.string_value for record, _ in records]
    assert {resource["service.name"].string_value for _, resource in records} == {"promptflow"}
    assert sum(body.startswith("Start monitoring new request") for body in bodies) == PLAIN + STREAMED + 1
    failed = [record for record, _ in records if record.body.string_value.startswith("Flow run failed")]
    assert len(failed) == 1 and failed[0].severity_text == "ERROR"
    assert {kv.key for kv in failed[0].attributes} >= {"code.file.path", "code.function.name", "code.line.number"}
    # the prepare node prints its question; prompt flow logs that output: its text is removed, the prefix kept
    printed = [body for body in bodies if body.startswith("[prepare in line ")]
    assert printed == [f"[prepare in line None (index starts from 0)] stdout> {NODE_OUTPUT_REMOVED}"] * (
        PLAIN + STREAMED + 1)
    with direct.sink.lock:
        sent = [request.SerializeToString() for request in direct.sink.log_requests]
    assert not [b for b in sent if CANARY.encode() in b or b"preparing" in b]


def test_sigterm_loses_what_serving_holds(tmp_path: Path) -> None:
    """Why README says to stop serving with SIGINT: on SIGTERM (what ``docker stop`` and Kubernetes send) ``pf flow
    serve`` exits without flushing, and the spans and metrics of a request it answered are never sent. Once serving
    has exited, everything it sent has been received (its exports are synchronous), so the emptiness is final."""
    with FakeLLMServer() as llm, OTLPSink() as sink:
        create_connection(tmp_path, llm.base_url.removesuffix("/v1"))
        serving = Serving(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.endpoint}",
                                     "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        try:
            status, _, _ = post(serving.url + "/score", json.dumps({"question": "hello there"}).encode(),
                                {"Content-Type": "application/json"})
            assert status == 200
        finally:
            code = serving.stop(sig=signal.SIGTERM)
        assert code == -signal.SIGTERM, "serving handled SIGTERM: the README's advice may be obsolete"
        assert (len(sink.spans()), sink.metrics()) == (0, {}), "serving flushed on SIGTERM: revise the README"


# -- in-process: flowtel inside prompt flow serving -----------------------------------------------------------------

COUNTED = ("token_consumption_total", "flow_request_total", "flow_latency_count", "node_request_total",
           "node_latency_count", "rpc_request_total", "rpc_latency_count", "flow_streaming_response_duration_count",
           "feedback_total")


@dataclass
class InProcess:
    flowtel: Scrape
    exported: list[Any]  # spans serving's own exporter sent (behind flowtel)
    serving_metric_points: int
    serving_logs: list[bytes]


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The README recipe: ``opentelemetry-instrument pf flow serve`` with serving's own exporter set-up
    (``OTEL_EXPORTER_OTLP_ENDPOINT``), ``OTEL_TRACES_EXPORTER=none`` so that exporter is the only one (it is put
    behind flowtel and gets enriched spans), flowtel's metrics on its Prometheus endpoint."""
    tmp = tmp_path_factory.mktemp("pfserving-inprocess")
    with FakeLLMServer(chunk_delay_s=CHUNK_DELAY_S) as llm:
        create_connection(tmp, llm.base_url.removesuffix("/v1"))
        tee = OTLPTee("127.0.0.1:1")  # nothing but serving talks to it; no collector behind it
        prometheus_port = free_port()
        serving = Serving(tmp, {"OTEL_EXPORTER_OTLP_ENDPOINT": tee.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus",
                                "OTEL_EXPORTER_PROMETHEUS_PORT": str(prometheus_port)},
                          command=[venv_bin("opentelemetry-instrument")])
        url = f"http://127.0.0.1:{prometheus_port}/metrics"
        try:
            _workload(serving.url)
            deadline = time.monotonic() + 60
            while not (scrape(url).value("flow_request_total") == PLAIN + STREAMED + 1
                       and scrape(url).value("feedback_total") == PLAIN):
                assert time.monotonic() < deadline, serving.log[-3000:]
                time.sleep(0.2)
            flowtel = scrape(url)
        finally:
            assert serving.stop() == 0, serving.log[-3000:]
            tee.stop()
        points = sum(len(p) for p in tee.metric_points().values())
        yield InProcess(flowtel, tee.spans(), points, list(tee.log_bytes))


def _counted(scrape_: Scrape) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for s in scrape_.samples if s.name in COUNTED}


def test_inprocess_metrics_equal_the_collectors(inprocess: InProcess, run: Run) -> None:
    inside, outside = _counted(inprocess.flowtel), _counted(run.flowtel)
    assert inside == outside
    assert inside[("flow_request_total", frozenset({"flow": FLOW, "response_code": "200", "streaming": "True",
                                                     "exception": ""}.items()))] == STREAMED


def test_inprocess_exports_each_span_once_enriched_and_without_content(inprocess: InProcess) -> None:
    spans = inprocess.exported
    assert len({s.span_id for s in spans}) == len(spans)
    names = [s.name for s in spans]
    assert names.count("openai_chat") == PLAIN + STREAMED and names.count("promptflow-feedback") == PLAIN
    for span in spans:
        keys = {kv.key for kv in span.attributes}
        assert not keys & {"inputs", "output", "llm.generated_message"}, (span.name, keys)
        if span.name == "openai_chat":
            assert {"gen_ai.operation.name", "gen_ai.request.model"} <= keys
        assert CANARY.encode() not in span.SerializeToString()
    # serving's own standard metrics went into flowtel's meter provider and were dropped there (flowtel derives
    # them): nothing of them reached the OTLP endpoint, and Prometheus shows only flowtel's series
    assert not [s for s in inprocess.flowtel.samples if s.labels.get("flow") == "default_flow_id"]
    assert inprocess.serving_metric_points == 0
    # serving's logs leave through its own log exporter, not through flowtel: it redacts request data itself, but
    # what a node prints goes as printed (README: point serving at a collector to have it removed)
    assert inprocess.serving_logs
    assert [b for b in inprocess.serving_logs if b"stdout> preparing" in b and CANARY.encode() in b]


def test_readme_comparison_table_names_every_figure_compared() -> None:
    """The README's figure-by-figure table (section "Prompt flow serving") lists every metric these tests compare."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Prompt flow serving", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for name in ("token_consumption", "flow_request", "flow_latency", "flow_streaming_response_duration",
                 "node_request", "node_latency", "rpc_request", "rpc_latency"):
        assert any(f"`{name}`" in row for row in rows), name
