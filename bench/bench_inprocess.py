"""What flowtel's in-process span processor costs, measured against the bare OpenTelemetry SDK.

Method. Two pipelines are built from scratch for every round:

* baseline: ``TracerProvider`` + ``BatchSpanProcessor(NoOpExporter)``;
* flowtel:  ``TracerProvider`` + ``FlowtelSpanProcessor([BatchSpanProcessor(NoOpExporter)])`` with a
  ``MeterProvider`` read by flowtel's ``PrometheusMetricReader`` (no HTTP server), so the derived
  metrics land on real instruments.

Both run the same deterministic, prompt-flow-shaped workload written against the OTel tracer API:
per trace a ``Flow`` root span, two node spans and, under the second node, an ``openai_chat`` LLM
span with prompt flow's attributes (inputs / output JSON, ``llm.usage.*``) and an event.
Baseline and flowtel rounds alternate (the order flips every round) and every figure is a median,
so drift on a shared, noisy machine hits both sides alike. Per round it records:

1. request-thread CPU (``time.thread_time_ns``) of the loop that creates the spans, per span;
2. process CPU (``time.process_time_ns``, all threads) from the start of that loop until the no-op
   exporter has seen every span (``force_flush`` and then a bounded wait), per span;

and, separately, for a trace whose flow span carries a 1 MB ``inputs`` attribute:

3. request-thread CPU to create and end that trace, flowtel minus bare SDK (paired, median), and
   the CPU the flowtel worker thread spends on it off the request thread (for information).

Extras are medians of per-round paired ratios (flowtel vs the baseline measured next to it).
Both sides use a BatchSpanProcessor queue large enough for a whole round (the SDK default of
2048 would drop spans from the baseline's burst and flatter it). Timings are never asserted:
the exit code is 0 unless something crashes.

    .venv/bin/python bench/bench_inprocess.py [--traces 2000] [--rounds 7] [--large-reps 20] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from flowtel.config import FlowtelConfig
from flowtel.exporters.prometheus import PrometheusMetricReader
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.span_processor import FlowtelSpanProcessor
from flowtel.selfmetrics import SelfMetrics

SPANS_PER_TRACE = 4
WAIT_S = 30.0  # longest wait for the exporter to see a round's spans
GOAL_REQUEST_EXTRA_PCT = 10.0
GOAL_TOTAL_EXTRA_X = 1.0
GOAL_LARGE_ADDED_MS = 1.0
LARGE_INPUTS_BYTES = 1 << 20

# ---------------------------------------------------------------------------------------------
# Workload: one prompt flow DAG run, as promptflow-tracing would record it. Payloads are built
# once so the measured loop is span API work only (the app serialises them either way).

FLOW_NAME = "chat_flow"
_QUESTION = "What is the capital of France, and what is it famous for? Answer briefly, please."
FLOW_INPUTS = json.dumps({"question": _QUESTION, "chat_history": [
    {"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello! How can I help you today?"}}]})
FLOW_OUTPUT = json.dumps({"answer": "Paris. It is famous for the Eiffel Tower, the Louvre and its cafes."})
RETRIEVE_OUTPUT = json.dumps(["Paris is the capital and largest city of France.",
                              "The Eiffel Tower was completed in 1889."])
LLM_INPUTS = json.dumps({
    "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 256, "stream": False,
    "messages": [{"role": "system", "content": "You answer questions about geography."},
                 {"role": "user", "content": _QUESTION}]})
LLM_OUTPUT = json.dumps({
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1735689600,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Paris. It is famous for the Eiffel Tower, the Louvre and its cafes."}}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}})
GENERATED_MESSAGE = json.dumps("Paris. It is famous for the Eiffel Tower, the Louvre and its cafes.")


def _large_inputs(size: int) -> str:
    """A JSON object of about ``size`` bytes, shaped like a flow's inputs with a long document."""
    head = json.dumps({"question": _QUESTION, "document": ""})[:-2]  # ... "document": "
    filler = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[: max(0, size - len(head) - 2)]
    return head + filler + '"}'


Attributes = Mapping[str, AttributeValue]
FLOW_ATTRS: Attributes = {"framework": "promptflow", "span_type": "Flow", "function": FLOW_NAME,
                          "inputs": FLOW_INPUTS}
LARGE_INPUTS = _large_inputs(LARGE_INPUTS_BYTES)
FLOW_ATTRS_LARGE: Attributes = {**FLOW_ATTRS, "inputs": LARGE_INPUTS}
RETRIEVE_ATTRS: Attributes = {"framework": "promptflow", "span_type": "Function", "function": "retrieve",
                              "node_name": "retrieve", "inputs": json.dumps({"question": _QUESTION})}
ANSWER_ATTRS: Attributes = {"framework": "promptflow", "span_type": "Function", "function": "answer",
                            "node_name": "answer", "inputs": json.dumps({"question": _QUESTION, "context": 2})}
LLM_ATTRS: Attributes = {"framework": "promptflow", "span_type": "LLM", "node_name": "answer",
                         "function": "openai.resources.chat.completions.completions.Completions.create",
                         "inputs": LLM_INPUTS}
LLM_RESULT_ATTRS: Attributes = {"output": LLM_OUTPUT, "llm.response.model": "gpt-4o-mini-2024-07-18",
                                "llm.usage.prompt_tokens": 42, "llm.usage.completion_tokens": 17,
                                "llm.usage.total_tokens": 59}
LLM_EVENT_ATTRS: Attributes = {"payload": GENERATED_MESSAGE}


def run_trace(tracer: Tracer, flow_attributes: Attributes) -> None:
    """One local trace of four spans; children end before their parents."""
    with tracer.start_as_current_span(FLOW_NAME, attributes=flow_attributes) as flow:
        with tracer.start_as_current_span("retrieve", attributes=RETRIEVE_ATTRS) as node:
            node.set_attribute("output", RETRIEVE_OUTPUT)
        with tracer.start_as_current_span("answer", attributes=ANSWER_ATTRS) as node:
            with tracer.start_as_current_span("openai_chat", attributes=LLM_ATTRS) as llm:
                llm.add_event("promptflow.llm.generated_message", LLM_EVENT_ATTRS)
                llm.set_attributes(LLM_RESULT_ATTRS)
            node.set_attribute("output", FLOW_OUTPUT)
        flow.set_attribute("output", FLOW_OUTPUT)


# ---------------------------------------------------------------------------------------------
# Pipelines.

class _Count:
    """A counter another thread can wait on."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    @property
    def value(self) -> int:
        return self._n

    def add(self, n: int) -> None:
        with self._cond:
            self._n += n
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n >= n, timeout_s)


class NoOpExporter(SpanExporter):
    """Exports nowhere; counts what it was given so the benchmark knows when a round is out."""

    def __init__(self, keep: bool = False) -> None:
        self.count = _Count()
        self.kept: list[ReadableSpan] = []
        self._keep = keep

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._keep:
            self.kept.extend(spans)
        self.count.add(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _ForwardCounter(SpanProcessor):
    """Placed last behind flowtel: tells when the worker has forwarded a trace downstream."""

    def __init__(self) -> None:
        self.count = _Count()

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.count.add(1)


@dataclass
class Pipeline:
    provider: TracerProvider
    tracer: Tracer
    exporter: NoOpExporter
    meter_provider: MeterProvider | None = None
    reader: PrometheusMetricReader | None = None
    worker_clock: int | None = None  # CPU-time clock id of the flowtel worker thread, where available

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def build_baseline(resource: Resource, queue_size: int, keep: bool = False) -> Pipeline:
    exporter = NoOpExporter(keep)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=queue_size))
    return Pipeline(provider, provider.get_tracer("bench"), exporter)


def build_flowtel(resource: Resource, queue_size: int, keep: bool = False,
                  extra_downstream: Sequence[SpanProcessor] = ()) -> Pipeline:
    """As ``flowtel.configure()`` builds it, minus the HTTP endpoint and the global providers."""
    # From the environment as configure() reads it (e.g. FLOWTEL_PAUSE_GC=true to measure the GC pause).
    config = FlowtelConfig.from_env(max_queue_size=max(FlowtelConfig().max_queue_size, queue_size))
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    self_metrics = SelfMetrics(meter_provider)
    flowtel_metrics = FlowtelMetrics(config, self_metrics)
    reader.add_producer(flowtel_metrics)
    exporter = NoOpExporter(keep)
    before = {t.ident for t in threading.enumerate()}
    processor = FlowtelSpanProcessor([BatchSpanProcessor(exporter, max_queue_size=queue_size), *extra_downstream],
                                     metrics=flowtel_metrics, self_metrics=self_metrics, config=config)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return Pipeline(provider, provider.get_tracer("bench"), exporter, meter_provider, reader,
                    _worker_clock(before))


def _worker_clock(before: set[int | None]) -> int | None:
    """CPU-time clock of the flowtel worker thread started after ``before`` was taken."""
    getclock = getattr(time, "pthread_getcpuclockid", None)
    for t in threading.enumerate():
        if t.name == "flowtel-worker" and t.ident is not None and t.ident not in before and getclock:
            try:
                return int(getclock(t.ident))
            except OSError:
                return None
    return None


Builder = Callable[[Resource, int], Pipeline]
MODES: dict[str, Builder] = {"baseline": build_baseline, "flowtel": build_flowtel}


# ---------------------------------------------------------------------------------------------
# Measurements.

@dataclass
class RoundResult:
    mode: str
    spans: int
    exported: int
    request_thread_ns_per_span: float
    request_wall_ns_per_span: float
    total_cpu_ns_per_span: float


def measure_round(mode: str, traces: int, resource: Resource) -> RoundResult:
    expected = traces * SPANS_PER_TRACE
    pipe = MODES[mode](resource, max(2048, expected))
    tracer = pipe.tracer
    try:
        gc.collect()
        cpu0, thread0, wall0 = time.process_time_ns(), time.thread_time_ns(), time.perf_counter_ns()
        for _ in range(traces):
            run_trace(tracer, FLOW_ATTRS)
        thread1, wall1 = time.thread_time_ns(), time.perf_counter_ns()
        pipe.provider.force_flush()
        pipe.exporter.count.wait_for(expected, WAIT_S)
        cpu1 = time.process_time_ns()
    finally:
        pipe.shutdown()
    return RoundResult(mode, expected, pipe.exporter.count.value, (thread1 - thread0) / expected,
                       (wall1 - wall0) / expected, (cpu1 - cpu0) / expected)


@dataclass
class LargeResult:
    reps: int
    inputs_bytes: int
    baseline_thread_ns: float
    flowtel_thread_ns: float
    added_thread_ms: float  # median of paired (flowtel - baseline)
    added_wall_ms: float
    worker_cpu_ms: float | None
    forwarded_all: bool


def measure_large(reps: int, resource: Resource) -> LargeResult:
    base = build_baseline(resource, 2048)
    forwarded = _ForwardCounter()
    flow = build_flowtel(resource, 2048, extra_downstream=[forwarded])
    thread: dict[str, list[int]] = {"baseline": [], "flowtel": []}
    wall: dict[str, list[int]] = {"baseline": [], "flowtel": []}
    worker: list[int] = []
    target, ok = 0, True
    try:
        for i in range(-1, reps):  # rep -1 warms both pipelines up and is not recorded
            for mode in ("baseline", "flowtel") if i % 2 == 0 else ("flowtel", "baseline"):
                pipe = base if mode == "baseline" else flow
                gc.collect()
                c0 = time.clock_gettime_ns(pipe.worker_clock) if pipe.worker_clock is not None else 0
                t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                run_trace(pipe.tracer, FLOW_ATTRS_LARGE)
                t1, w1 = time.thread_time_ns(), time.perf_counter_ns()
                if mode == "flowtel":
                    target += SPANS_PER_TRACE
                    done = forwarded.count.wait_for(target, 5.0)  # the worker wakes every 0.2 s
                    ok = ok and done
                    if pipe.worker_clock is not None and i >= 0:
                        worker.append(time.clock_gettime_ns(pipe.worker_clock) - c0)
                if i >= 0:
                    thread[mode].append(t1 - t0)
                    wall[mode].append(w1 - w0)
    finally:
        base.shutdown()
        flow.shutdown()
    added_thread = [f - b for f, b in zip(thread["flowtel"], thread["baseline"], strict=True)]
    added_wall = [f - b for f, b in zip(wall["flowtel"], wall["baseline"], strict=True)]
    return LargeResult(
        reps, len(LARGE_INPUTS),
        statistics.median(thread["baseline"]), statistics.median(thread["flowtel"]),
        statistics.median(added_thread) / 1e6, statistics.median(added_wall) / 1e6,
        statistics.median(worker) / 1e6 if worker else None, ok)


def sanity_check(resource: Resource) -> tuple[bool, str]:
    """The workload must take flowtel's real path: enriched LLM span, content removed, metrics derived."""
    pipe = build_flowtel(resource, 2048, keep=True)
    try:
        for _ in range(3):
            run_trace(pipe.tracer, FLOW_ATTRS)
        pipe.provider.force_flush()
        pipe.exporter.count.wait_for(3 * SPANS_PER_TRACE, WAIT_S)
        assert pipe.reader is not None
        families = {f.name: f for f in pipe.reader.families()}
    finally:
        pipe.shutdown()
    problems = []
    llm = [s for s in pipe.exporter.kept if s.name == "openai_chat"]
    attrs = dict(llm[0].attributes or {}) if llm else {}
    if attrs.get("gen_ai.request.model") != "gpt-4o-mini" or attrs.get("gen_ai.usage.input_tokens") != 42:
        problems.append("LLM span not enriched")
    if "inputs" in attrs:
        problems.append("content not removed")
    requests = families.get("flow_request")
    total = sum(s.value for s in requests.samples) if requests else 0
    if total != 3 or "token_consumption" not in families:
        problems.append(f"metrics not derived (flow_request={total})")
    if problems:
        return False, "; ".join(problems)
    return True, ("LLM span enriched (gen_ai.request.model=gpt-4o-mini, gen_ai.usage.input_tokens=42), "
                  "inputs removed, flow_request=3 and token_consumption recorded")


@dataclass
class Report:
    traces: int
    rounds: int
    spans_per_trace: int
    environment: dict[str, Any]
    sanity_ok: bool
    complete: bool  # every span of every round reached the exporter
    request_thread_ns_per_span: dict[str, float]
    request_wall_ns_per_span: dict[str, float]
    request_thread_extra_pct: float  # median of per-round paired ratios
    request_thread_extra_pct_of_medians: float
    total_cpu_ns_per_span: dict[str, float]
    total_cpu_extra_x: float  # median of per-round paired ratios
    total_cpu_extra_x_of_medians: float
    large_trace: dict[str, Any]
    goals: dict[str, Any] = field(default_factory=dict)
    rounds_detail: list[dict[str, Any]] = field(default_factory=list)


def _paired_median(rounds: list[tuple[RoundResult, RoundResult]], key: str) -> float:
    return statistics.median(getattr(f, key) / getattr(b, key) - 1 for b, f in rounds)


def run(traces: int, rounds: int, large_reps: int, out: Callable[[str], None]) -> Report:
    resource = Resource.create({"service.name": "flowtel-bench"})
    env = {"python": platform.python_version(), "opentelemetry_sdk": metadata.version("opentelemetry-sdk"),
           "cpus": os.cpu_count(), "platform": platform.platform()}
    out(f"flowtel in-process benchmark: {traces} traces x {SPANS_PER_TRACE} spans per round, {rounds} rounds, "
        "baseline and flowtel interleaved")
    out(f"  python {env['python']}, opentelemetry-sdk {env['opentelemetry_sdk']}, {env['cpus']} CPUs")
    sane, detail = sanity_check(resource)
    out(f"  sanity: {'ok' if sane else 'FAILED'}: {detail}")

    for mode in MODES:  # warm-up, not recorded
        measure_round(mode, min(traces, 200), resource)
    pairs: list[tuple[RoundResult, RoundResult]] = []
    for r in range(rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        results = {mode: measure_round(mode, traces, resource) for mode in order}
        pairs.append((results["baseline"], results["flowtel"]))
    complete = all(x.exported == x.spans for pair in pairs for x in pair)

    def med(key: str) -> dict[str, float]:
        return {"baseline": statistics.median(getattr(b, key) for b, _ in pairs),
                "flowtel": statistics.median(getattr(f, key) for _, f in pairs)}

    def of_medians(m: dict[str, float]) -> float:
        return m["flowtel"] / m["baseline"] - 1

    large = measure_large(large_reps, resource)
    request, cpu = med("request_thread_ns_per_span"), med("total_cpu_ns_per_span")
    report = Report(
        traces, rounds, SPANS_PER_TRACE, env, sane, complete,
        request, med("request_wall_ns_per_span"),
        _paired_median(pairs, "request_thread_ns_per_span") * 100, of_medians(request) * 100,
        cpu, _paired_median(pairs, "total_cpu_ns_per_span"), of_medians(cpu),
        asdict(large),
        {"request_thread_extra_pct_max": GOAL_REQUEST_EXTRA_PCT, "total_cpu_extra_x_max": GOAL_TOTAL_EXTRA_X,
         "large_trace_added_ms_max": GOAL_LARGE_ADDED_MS},
        [asdict(x) for pair in pairs for x in pair])
    _print(report, out)
    return report


def _verdict(ok: bool) -> str:
    return "meets goal" if ok else "MISSES goal"


def _print(rep: Report, out: Callable[[str], None]) -> None:
    rt, rw, cpu, lg = rep.request_thread_ns_per_span, rep.request_wall_ns_per_span, rep.total_cpu_ns_per_span, \
        rep.large_trace
    if not rep.complete:
        out("  WARNING: some rounds did not export every span within the wait; see rounds_detail in --json")
    out("")
    out(f"1. request-thread CPU per span (median of {rep.rounds} rounds)")
    out(f"   baseline {rt['baseline'] / 1e3:7.2f} us   flowtel {rt['flowtel'] / 1e3:7.2f} us   "
        f"extra {rep.request_thread_extra_pct:+6.1f} %   (goal <= {GOAL_REQUEST_EXTRA_PCT:g} %: "
        f"{_verdict(rep.request_thread_extra_pct <= GOAL_REQUEST_EXTRA_PCT)})")
    out(f"   (extra is the median of per-round paired ratios; from the medians above: "
        f"{rep.request_thread_extra_pct_of_medians:+.1f} %)")
    out(f"   wall time of the same loop: baseline {rw['baseline'] / 1e3:.2f} us, flowtel {rw['flowtel'] / 1e3:.2f} us"
        " per span (includes GIL waits for the background threads)")
    out(f"2. process CPU per span, all threads, until every span is exported (median of {rep.rounds} rounds)")
    out(f"   baseline {cpu['baseline'] / 1e3:7.2f} us   flowtel {cpu['flowtel'] / 1e3:7.2f} us   "
        f"extra {rep.total_cpu_extra_x:5.2f}x baseline   (goal <= {GOAL_TOTAL_EXTRA_X:g}x: "
        f"{_verdict(rep.total_cpu_extra_x <= GOAL_TOTAL_EXTRA_X)})")
    out(f"   (from the medians above: {rep.total_cpu_extra_x_of_medians:.2f}x)")
    out(f"3. request-thread CPU for one trace with a {lg['inputs_bytes'] / 2**20:.1f} MB flow `inputs` attribute "
        f"(median of {lg['reps']})")
    out(f"   baseline {lg['baseline_thread_ns'] / 1e6:.3f} ms   flowtel {lg['flowtel_thread_ns'] / 1e6:.3f} ms   "
        f"added {lg['added_thread_ms']:+.3f} ms   (goal < {GOAL_LARGE_ADDED_MS:g} ms: "
        f"{_verdict(lg['added_thread_ms'] < GOAL_LARGE_ADDED_MS)}); wall added {lg['added_wall_ms']:+.3f} ms")
    worker = lg["worker_cpu_ms"]
    out("   flowtel worker CPU to process that trace, off the request thread: "
        + (f"{worker:.3f} ms" if worker is not None else "n/a (no per-thread CPU clock on this platform)")
        + ("" if lg["forwarded_all"] else "   WARNING: not every trace was forwarded within 5 s"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=int, default=2000, help="traces per round and pipeline (default 2000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of baseline + flowtel (default 7)")
    parser.add_argument("--large-reps", type=int, default=20, help="repetitions of the 1 MB trace (default 20)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object, last line")
    args = parser.parse_args(argv)
    for name in ("traces", "rounds", "large_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    report = run(args.traces, args.rounds, args.large_reps, lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps(asdict(report), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
