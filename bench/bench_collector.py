"""How many spans/s the flowtel collector sustains on one core, against a decode-only gRPC server.

Method. The collector runs as its own process (``python -m flowtel.cli collector --config ...``)
pinned to one CPU (``taskset -c 0``, or ``os.sched_setaffinity`` in a wrapper where taskset is
missing), with an ``otlp`` gRPC receiver, the ``flowtel`` and ``batch`` processors, and two
exporters: ``prometheus`` (derived and self metrics) and ``otlp`` to a downstream sink. This
process runs the load generator and the sink, pinned to the other CPUs.

The workload is the prompt flow DAG run of ``bench_inprocess.py`` (a ``Flow`` span, two
``Function`` node spans and an ``openai_chat`` ``LLM`` span), recorded with the OpenTelemetry
SDK and encoded as its OTLP exporter encodes it. A request carries ``--traces-per-request``
such traces (4 spans each). The serialized request is built once; every request sent gets
fresh trace ids by patching 8 bytes of each span's trace id in a copy of it. Client threads
send over raw unary-unary gRPC channels (bytes in, bytes out: no client-side serialisation).

Load is open-loop: request ``i`` is due at ``t0 + i * spans_per_request / rate``. A rate is
*sustained* when, over the whole trial, the collector refused nothing (no 503/UNAVAILABLE),
dropped nothing and failed no export (its own counters on its Prometheus endpoint, as deltas),
the clients kept the schedule, the backlog (spans accepted but not yet at the sink, sampled
every 0.2 s) did not trend up, and every accepted span reached the sink within ``--drain-s``
of the load stopping. The highest sustained rate is searched for with short trials (up by
25 % while trials pass, down while they fail, then bisection) and then confirmed by a long run
(5 % lower after each failure: short trials are optimistic), in which the sink's arrival rate
is the headline figure, with the collector's CPU use (``/proc/<pid>/stat``) and resident
memory (``VmRSS`` at the start, middle and end of the window).

The baseline is a minimal grpcio server, pinned the same way, that only parses each
``ExportTraceServiceRequest`` (as the collector's receiver does, from raw bytes, on the same
thread-pool size) and counts its spans. Its handler is synchronous, so closed-loop load (a
fixed number of requests in flight) measures its maximum; it is run before and after the
collector and the mean is used. The ratio collector / decode-only says how much of one core's
decode capacity the collector keeps. If the decode-only server did not use its whole core, the
load generator was the limit and the ratio is an upper bound (it says so).

Timings are reported, never asserted: the exit code is 0 unless something crashes.

    .venv/bin/python bench/bench_collector.py [--duration 20] [--traces-per-request 64] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.id_generator import IdGenerator

GOAL_SPANS_PER_S = 20_000
# A sustained rate's backlog (accepted, not yet at the sink) does not trend up. Batches leave the collector every
# 0.2 s or more, so the backlog is a saw-tooth and its fitted slope wanders by a few % of the rate in a short
# window; less in the long one.
MAX_BACKLOG_GROWTH_PCT = {"trial": 5.0, "long": 3.0}
NOISY_PCT = 5.0
FINAL_TRIES = 6  # other processes using more of the pinned core than this make a window suspect
SPANS_PER_TRACE = 4
MIB = 1 << 20
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENT_WORDS = (b"capital", b"famous")  # 7 and 6 letters: the lengths Workload.request patches
_SUFFIXES = tuple(f"{i:03x}".encode() for i in range(16**3))

# The collector's own counters that must not move during a sustained run.
LOSS_COUNTERS = ("flowtel_spans_dropped_total", "otelcol_receiver_refused_spans_total",
                 "otelcol_exporter_send_failed_spans_total", "otelcol_exporter_enqueue_failed_spans_total")
INFO_COUNTERS = ("otelcol_receiver_accepted_spans_total", "otelcol_exporter_sent_spans_total",
                 "flowtel_spans_processed_total", "flow_request_total")

# ---------------------------------------------------------------------------------------------
# Workload: bench_inprocess.py's prompt flow DAG run, recorded by the SDK and OTLP-encoded once.


class _MarkedIds(IdGenerator):
    """Trace ids ``marker << 64 | n`` (n = 1, 2, ...), so the high 8 bytes of every trace id in the
    serialized request are the marker, found and patched per request. Span ids count from 1."""

    def __init__(self, marker: int) -> None:
        self._marker = marker
        self._trace = itertools.count(1)
        self._span = itertools.count(1)

    def generate_trace_id(self) -> int:
        return (self._marker << 64) | next(self._trace)

    def generate_span_id(self) -> int:
        return next(self._span)

    def is_trace_id_random(self) -> bool:
        return False


@dataclass
class Workload:
    template: bytes
    offsets: tuple[int, ...]  # where the 8 patched bytes of each span's trace id start
    spans: int  # per request
    traces: int  # per request
    salt: int
    content: tuple[tuple[int, int], ...] = ()  # (offset, length) of each word patched in prompts and answers

    def request(self, seq: int, vary_content: bool = True) -> bytes:
        """Request number ``seq``: the template with trace ids no other request of this run has, and prompt
        and answer text that differs from every other trace's in thousands of requests (real traffic
        repeats neither, and the collector remembers short attribute fields it has seen). The decode-only
        baseline, whose cost does not depend on the text, skips the text."""
        buf = bytearray(self.template)
        key = ((self.salt + seq) & 0xFFFF_FFFF_FFFF_FFFF or 1).to_bytes(8, "big")
        for off in self.offsets:
            buf[off:off + 8] = key
        if vary_content:  # the request's number, then the word's number within the request (3 hex digits)
            prefixes = {n: f"{seq % 16 ** (n - 3):0{n - 3}x}".encode() for n in (6, 7)}
            for (off, length), suffix in zip(self.content, _SUFFIXES, strict=False):  # checked in build_workload
                buf[off:off + length] = prefixes[length] + suffix
        return bytes(buf)


def build_workload(traces: int) -> Workload:
    from bench_inprocess import FLOW_ATTRS, run_trace  # the same DAG run as the in-process benchmark
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    while True:
        marker = int.from_bytes(secrets.token_bytes(8), "big")
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": "chat-flow-app",
                                                            "service.instance.id": "bench-0"}),
                                  id_generator=_MarkedIds(marker), shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(memory))  # export order = end order, as batching sends
        tracer = provider.get_tracer("promptflow")
        for _ in range(traces):
            run_trace(tracer, FLOW_ATTRS)
        spans = memory.get_finished_spans()
        provider.shutdown()
        template = encode_spans(spans).SerializeToString()
        needle = b"\x0a\x10" + marker.to_bytes(8, "big")  # field 1 (trace_id), 16 bytes, high half first
        offsets = [m.start() + 2 for m in re.finditer(re.escape(needle), template)]
        if len(offsets) == len(spans) and template.count(marker.to_bytes(8, "big")) == len(spans):
            # Every prompt (the question) and answer of the workload holds one of these words.
            content = tuple((m.start(), len(word)) for word in CONTENT_WORDS
                            for m in re.finditer(re.escape(word), template))
            if len(content) > len(_SUFFIXES):
                raise SystemExit(f"--traces-per-request {traces} puts {len(content)} words to vary in a request; "
                                 f"at most {len(_SUFFIXES)} can each get their own number")
            return Workload(template, tuple(offsets), len(spans), traces,
                            int.from_bytes(secrets.token_bytes(8), "big"), content)
        # the marker also matched elsewhere by chance: draw another


# ---------------------------------------------------------------------------------------------
# Processes: pinning, /proc readings, the collector and the decode-only server.


def pinned(cmd: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    wrapper = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execvp(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", wrapper, str(cpu), *cmd]


class ProcStats:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        """utime + stime of the whole process (all threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)

    def status_kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self.status_kib("VmRSS") / 1024

    def hwm_mib(self) -> float:
        return self.status_kib("VmHWM") / 1024

    def affinity(self) -> list[int]:
        return sorted(os.sched_getaffinity(self.pid))


def cpu_busy_s(cpu: int) -> float:
    """Seconds CPU ``cpu`` spent busy (any process) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait; guest time is in user
    return 0.0


def _busy(cpus: Sequence[int]) -> float:
    return sum(cpu_busy_s(c) for c in cpus)


class Child:
    """A child process whose start-up lines are read until ``ready`` matches; the rest is kept as a log."""

    def __init__(self, cmd: list[str], ready: str, listen: re.Pattern[str], timeout_s: float = 60) -> None:
        self.lines: list[str] = []
        self.found: dict[str, str] = {}
        self._listen = listen
        self._ready_text = ready
        self._ready = threading.Event()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{cmd!r} did not start:\n{self.log}")
        self.stats = ProcStats(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = self._listen.search(line)
            if m:
                self.found[m.group(1)] = m.group(2)
            if self._ready_text in line:
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


_COLLECTOR_LISTEN = re.compile(r"(?:receiver|exporter) (\S+): (?:OTLP/gRPC listening|Prometheus metrics) on (\S+)")

COLLECTOR_CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  flowtel: {{}}
  batch: {{}}
exporters:
  prometheus:
    endpoint: 127.0.0.1:0
  otlp:
    endpoint: "{sink}"
    compression: {compression}
    tls: {{insecure: true}}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [flowtel, batch]
      exporters: [prometheus, otlp]
"""


def start_collector(config_path: Path, cpu: int) -> Child:
    cmd = pinned([sys.executable, "-m", "flowtel.cli", "collector", "--config", str(config_path)], cpu)
    child = Child(cmd, "flowtel collector ready", _COLLECTOR_LISTEN)
    if "otlp" not in child.found or "prometheus" not in child.found:
        child.stop()
        raise RuntimeError("collector did not log its ports:\n" + child.log)
    return child


def start_decode_server(mode: str, cpu: int) -> Child:
    cmd = pinned([sys.executable, os.path.abspath(__file__), "--serve", mode], cpu)
    return Child(cmd, "decode-only server ready", re.compile(r"(decode-only) server listening on (\S+)"))


def serve(mode: str) -> int:
    """The baseline server (run in a child): the collector's gRPC transport minus everything after decoding."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    adapt = None
    if mode == "adapt":
        from flowtel.otlp import adapt
    lock = threading.Lock()
    total = [0]

    def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
        request = ExportTraceServiceRequest.FromString(raw)
        n = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
        if adapt is not None:
            adapt(raw)
        with lock:
            total[0] += n
        return b""  # ExportTraceServiceResponse().SerializeToString(), as the collector answers

    # As flowtel.collector.receivers.otlp_grpc.GRPCTransport builds its server.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="decode-grpc"),
                         options=[("grpc.max_receive_message_length", 4 * MIB), ("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(export)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"decode-only server listening on 127.0.0.1:{port} (mode {mode})", flush=True)
    print("decode-only server ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()  # parent gone: stop
    stop.wait()
    server.stop(1).wait()
    print(f"decode-only server counted {total[0]} spans", flush=True)
    return 0


def scrape(url: str) -> dict[str, float]:
    """Sum of every series of each metric family named in LOSS_COUNTERS / INFO_COUNTERS, plus the queue gauge."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = {*LOSS_COUNTERS, *INFO_COUNTERS, "flowtel_queue_size", "flowtel_spans_held"}
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


# ---------------------------------------------------------------------------------------------
# The sink (downstream OTLP backend) and the load generator, in this process.


class Sink:
    """Counts the spans the collector delivers; keeps the first request for the sanity check."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self._parse = ExportTraceServiceRequest.FromString
        self._cond = threading.Condition()
        self.spans = 0
        self.requests = 0
        self.first: bytes | None = None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sink"),
                                  options=[("grpc.max_receive_message_length", 64 * MIB)])
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _export(self, raw: bytes, context: Any) -> bytes:
        request = self._parse(raw)
        n = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
        with self._cond:
            if self.first is None:
                self.first = raw
            self.spans += n
            self.requests += 1
            self._cond.notify_all()
        return b""

    def wait_for(self, spans: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.spans >= spans, timeout_s)

    def stop(self) -> None:
        self.server.stop(0).wait()


@dataclass
class LoadStats:
    sent_requests: int = 0
    accepted_spans: int = 0
    refused_spans: int = 0  # UNAVAILABLE / RESOURCE_EXHAUSTED: backpressure
    error_spans: int = 0  # any other failure
    errors: dict[str, int] = field(default_factory=dict)
    max_late_s: float = 0.0  # open loop: how far behind schedule a request went out
    latencies_s: list[float] = field(default_factory=list)


class Load:
    """``clients`` threads, each with its own channel, sending requests of ``workload`` to ``target``.

    Open loop (``rate`` spans/s): request i is due at t0 + i * spans / rate. Closed loop
    (``rate`` None): every thread sends back to back, so ``clients`` requests are in flight.
    """

    def __init__(self, target: str, workload: Workload, clients: int, seq: itertools.count[int],
                 vary_content: bool = True) -> None:
        import grpc

        self._grpc = grpc
        self._workload = workload
        self._seq = seq  # shared by every Load of the run, so no two requests carry the same trace ids
        self._vary = vary_content
        self._channels = [grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
                          for _ in range(clients)]
        self._calls = [c.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
                       for c in self._channels]
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0
        self.t_end = 0.0

    def warm(self) -> None:
        """One request per channel, so connections are up before anything is timed."""
        for call in self._calls:
            with contextlib.suppress(self._grpc.RpcError):
                call(self._workload.request(next(self._seq), self._vary), timeout=30)

    def start(self, duration_s: float, rate: float | None) -> Load:
        self.t0 = time.monotonic() + 0.05
        self.t_end = self.t0 + duration_s
        index = itertools.count()
        interval = self._workload.spans / rate if rate else 0.0
        for call in self._calls:
            t = threading.Thread(target=self._run, args=(call, index, interval), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, call: Callable[..., Any], index: itertools.count[int], interval: float) -> None:
        grpc = self._grpc
        spans = self._workload.spans
        stats = self.stats
        backpressure = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        while True:
            if interval:
                due = self.t0 + next(index) * interval
                if due >= self.t_end:
                    return
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                    late = 0.0
                else:
                    late = now - due
            else:
                if time.monotonic() >= self.t_end:
                    return
                late = 0.0
            payload = self._workload.request(next(self._seq), self._vary)
            started = time.monotonic()
            try:
                call(payload, timeout=30)
                code = None
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
            took = time.monotonic() - started
            with self._lock:
                stats.sent_requests += 1
                stats.latencies_s.append(took)
                stats.max_late_s = max(stats.max_late_s, late)
                if code is None:
                    stats.accepted_spans += spans
                elif code in backpressure:
                    stats.refused_spans += spans
                else:
                    stats.error_spans += spans
                    stats.errors[code.name] = stats.errors.get(code.name, 0) + 1

    def snapshot(self) -> LoadStats:
        with self._lock:
            s = self.stats
            return LoadStats(s.sent_requests, s.accepted_spans, s.refused_spans, s.error_spans, dict(s.errors),
                             s.max_late_s, [])

    def join(self) -> None:
        for t in self._threads:
            t.join()
        self._threads = []

    def close(self) -> None:
        for c in self._channels:
            c.close()


# ---------------------------------------------------------------------------------------------
# Trials.


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@dataclass
class Trial:
    target_spans_per_s: float
    warmup_s: float
    window_s: float
    passed: bool
    why: str  # what failed, or "" when passed
    offered_spans_per_s: float  # accepted by the collector inside the window / window
    delivered_spans_per_s: float  # reached the sink inside the window / window
    backlog_growth_pct: float  # slope of (accepted - delivered) over the window, % of the offered rate
    backlog_max_s: float  # largest backlog seen in the window, in seconds of offered load
    collector_cpu_pct: float  # of one core, inside the window
    other_cpu_pct: float  # the collector's core busy with anything else (other processes), inside the window
    accepted_spans: int  # whole trial
    delivered_spans: int  # whole trial, after the drain
    refused_spans: int  # client-side: answered UNAVAILABLE
    client_errors: dict[str, int]
    drain_s: float | None  # load stopped -> every accepted span at the sink (None: not within the limit)
    max_late_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    collector_counters: dict[str, float]  # deltas over the trial
    bench_cpu_pct: float  # this process (load generator and sink), % of one core
    bench_other_cpu_pct: float  # other processes on this process's cores
    rss_mib: dict[str, float] = field(default_factory=dict)


@dataclass
class Context:
    workload: Workload
    sink: Sink
    collector: Child
    metrics_url: str
    target: str
    clients: int
    seq: itertools.count[int]
    drain_limit_s: float
    cpu: int
    bench_cpus: list[int]


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over t."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def run_trial(ctx: Context, rate: float, warmup_s: float, window_s: float, long: bool = False) -> Trial:
    sample_rss = long
    stats = ctx.collector.stats
    before = scrape(ctx.metrics_url)
    sink0 = ctx.sink.spans
    load = Load(ctx.target, ctx.workload, ctx.clients, ctx.seq)
    rss: dict[str, float] = {}
    backlog: list[tuple[float, float]] = []  # (t, accepted - delivered) through the window
    try:
        load.start(warmup_s + window_s, rate)
        _sleep_until(load.t0 + warmup_s)
        t1, cpu1, sink1, sent1 = time.monotonic(), stats.cpu_s(), ctx.sink.spans, load.snapshot()
        busy1, own1, obusy1 = cpu_busy_s(ctx.cpu), ProcStats(os.getpid()).cpu_s(), _busy(ctx.bench_cpus)
        if sample_rss:
            rss["start"] = stats.rss_mib()
        middle = t1 + window_s / 2
        while True:  # every 0.2 s until the load stops: accepted minus delivered (this process's counters only)
            now = time.monotonic()
            backlog.append((now, load.snapshot().accepted_spans - (ctx.sink.spans - sink0)))
            if sample_rss and "middle" not in rss and now >= middle:
                rss["middle"] = stats.rss_mib()
            if now >= load.t_end:
                break
            time.sleep(min(0.2, max(0.0, load.t_end - now)))
        load.join()
        t2, cpu2, sink2, sent2 = time.monotonic(), stats.cpu_s(), ctx.sink.spans, load.snapshot()
        busy2, own2, obusy2 = cpu_busy_s(ctx.cpu), ProcStats(os.getpid()).cpu_s(), _busy(ctx.bench_cpus)
        if sample_rss:
            rss["end"] = stats.rss_mib()
    finally:
        load.join()
        load.close()
    expected = sink0 + sent2.accepted_spans
    drained = ctx.sink.wait_for(expected, ctx.drain_limit_s)
    drain_s = time.monotonic() - t2 if drained else None
    if not drained:
        ctx.sink.wait_for(expected, 30)  # let the backlog clear before the next trial
    if sample_rss:
        rss["after_drain"] = stats.rss_mib()
        rss["peak_hwm"] = stats.hwm_mib()
    after = scrape(ctx.metrics_url)
    deltas = {k: after[k] - before[k] for k in (*LOSS_COUNTERS, *INFO_COUNTERS)}
    window = t2 - t1
    offered = (sent2.accepted_spans - sent1.accepted_spans) / window
    delivered = (sink2 - sink1) / window
    growth_pct = _slope(backlog) / offered * 100 if offered else 0.0
    lat = sorted(load.stats.latencies_s) or [0.0]
    problems = []
    if sent2.refused_spans:
        problems.append(f"{sent2.refused_spans} spans refused (UNAVAILABLE)")
    if sent2.error_spans:
        problems.append(f"client errors {sent2.errors}")
    lost = {k: v for k, v in deltas.items() if k in LOSS_COUNTERS and v}
    if lost:
        problems.append(f"collector counted losses {lost}")
    if not drained:
        problems.append(f"sink short of {expected - ctx.sink.spans} spans {ctx.drain_limit_s:g}s after the load "
                        "stopped (backlog)")
    if offered < 0.97 * rate and not sent2.refused_spans:
        problems.append(f"clients fell behind the schedule (offered {offered:,.0f}/s)")
    if growth_pct > MAX_BACKLOG_GROWTH_PCT["long" if long else "trial"] and not sent2.refused_spans:
        problems.append(f"backlog grew by {growth_pct:.1f} % of the offered rate (falling behind)")
    return Trial(rate, warmup_s, window, not problems, "; ".join(problems), offered, delivered, growth_pct,
                 max(b for _, b in backlog) / offered if offered and backlog else 0.0,
                 (cpu2 - cpu1) / window * 100, max(0.0, (busy2 - busy1) - (cpu2 - cpu1)) / window * 100,
                 sent2.accepted_spans, ctx.sink.spans - sink0, sent2.refused_spans,
                 sent2.errors, drain_s, sent2.max_late_s, lat[len(lat) // 2] * 1e3,
                 lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, deltas,
                 (own2 - own1) / window * 100, max(0.0, (obusy2 - obusy1) - (own2 - own1)) / window * 100, rss)


def trial_line(label: str, t: Trial) -> str:
    return (f"   {label} {t.target_spans_per_s:>7,.0f} spans/s: {'pass' if t.passed else 'FAIL'}  delivered "
            f"{t.delivered_spans_per_s:>7,.0f}/s  backlog trend {t.backlog_growth_pct:+5.1f} %  collector CPU "
            f"{t.collector_cpu_pct:5.1f} % (others {t.other_cpu_pct:4.1f} %)  p99 {t.latency_p99_ms:4.0f} ms"
            + (f"  drain {t.drain_s:.2f} s" if t.drain_s is not None else "") + (f"  ({t.why})" if t.why else ""))


def search(ctx: Context, start: float, trial_s: float, warmup_s: float, steps: int,
           out: Callable[[str], None]) -> tuple[float | None, list[Trial]]:
    """Highest passing rate: x1.25 up while passing (down while failing), then ``steps`` bisections."""
    trials: list[Trial] = []

    def attempt(rate: float) -> bool:
        t = run_trial(ctx, rate, warmup_s, trial_s)
        trials.append(t)
        out(trial_line("trial", t))
        time.sleep(1.0)
        return t.passed

    good: float | None = None
    bad: float | None = None
    rate = start
    for _ in range(12):
        if attempt(rate):
            good = rate
            if bad is not None:
                break
            rate *= 1.25
        else:
            bad = rate
            if good is not None:
                break
            rate /= 1.25
            if rate < 500:
                break
    if good is not None and bad is not None:
        for _ in range(steps):
            mid = (good + bad) / 2
            if attempt(mid):
                good = mid
            else:
                bad = mid
    return good, trials


@dataclass
class Baseline:
    mode: str
    spans_per_s: float
    server_cpu_pct: float
    other_cpu_pct: float
    clients: int
    window_s: float
    rss_mib: float
    latency_p50_ms: float
    errors: int


def run_baseline(workload: Workload, mode: str, cpu: int, clients: int, warmup_s: float, window_s: float,
                 seq: itertools.count[int]) -> Baseline:
    server = start_decode_server(mode, cpu)
    load = None
    try:
        load = Load(server.found["decode-only"], workload, clients, seq, vary_content=False)
        load.warm()
        load.start(warmup_s + window_s, None)
        _sleep_until(load.t0 + warmup_s)
        t1, cpu1, sent1, busy1 = time.monotonic(), server.stats.cpu_s(), load.snapshot(), cpu_busy_s(cpu)
        load.join()
        t2, cpu2, sent2, busy2 = time.monotonic(), server.stats.cpu_s(), load.snapshot(), cpu_busy_s(cpu)
        rss = server.stats.rss_mib()
    finally:
        if load is not None:
            load.join()
            load.close()
        server.stop()
    lat = sorted(load.stats.latencies_s) or [0.0]
    window = t2 - t1
    return Baseline(mode, (sent2.accepted_spans - sent1.accepted_spans) / window, (cpu2 - cpu1) / window * 100,
                    max(0.0, (busy2 - busy1) - (cpu2 - cpu1)) / window * 100, clients, window, rss,
                    lat[len(lat) // 2] * 1e3, sent2.error_spans + sent2.refused_spans)


def sanity(sink: Sink, metrics: dict[str, float], accepted_total: int) -> tuple[bool, str]:
    """The collector took flowtel's real path: LLM spans enriched, content removed, every trace derived."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from flowtel.otlp import decode_attributes

    if sink.first is None:
        return False, "the sink received nothing"
    problems = []
    request = ExportTraceServiceRequest.FromString(sink.first)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    llm = [decode_attributes(s.attributes) for s in spans if s.name == "openai_chat"]
    if not llm or llm[0].get("gen_ai.request.model") != "gpt-4o-mini" or llm[0].get("gen_ai.usage.input_tokens") != 42:
        problems.append("LLM span not enriched")
    if any(kv.key in ("inputs", "output") for s in spans for kv in s.attributes):
        problems.append("content not removed")
    traces = accepted_total // SPANS_PER_TRACE
    if metrics.get("flow_request_total") != traces:
        problems.append(f"flow_request_total {metrics.get('flow_request_total'):.0f} != {traces} traces accepted")
    if problems:
        return False, "; ".join(problems)
    return True, (f"LLM spans enriched (gen_ai.request.model=gpt-4o-mini, input_tokens=42), inputs/output removed, "
                  f"flow_request_total = {traces:,} = traces accepted")


# ---------------------------------------------------------------------------------------------
# Run and report.


@dataclass
class Report:
    environment: dict[str, Any]
    workload: dict[str, Any]
    pinning: dict[str, Any]
    sanity_ok: bool
    sanity: str
    sustained_spans_per_s: float | None  # delivered to the sink, final window
    offered_spans_per_s: float | None
    collector_cpu_pct: float | None
    collector_cpu_us_per_span: float | None
    collector_rss_mib: dict[str, float]
    no_drops: bool
    final: dict[str, Any] | None
    decode_only_spans_per_s: float
    decode_only_cpu_us_per_span: float
    decode_only: list[dict[str, Any]]
    decode_only_saturated: bool
    ratio_to_decode_only: float | None
    adapt_only: dict[str, Any] | None
    other_cpu_pct_max: float  # other processes on the pinned core during any measured window
    goal_spans_per_s: int = GOAL_SPANS_PER_S
    goal_met: bool = False
    search_trials: list[dict[str, Any]] = field(default_factory=list)
    final_attempts: list[dict[str, Any]] = field(default_factory=list)


def _git_state() -> str:
    """Commit of the flowtel checkout measured, with ``+dirty`` when its sources differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "src", "processors", "exporters"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty.strip() else "")


def _baseline_line(b: Baseline) -> str:
    return (f"   {b.spans_per_s:>10,.0f} spans/s   server CPU {b.server_cpu_pct:5.1f} % (other processes on its core "
            f"{b.other_cpu_pct:4.1f} %)   p50 {b.latency_p50_ms:.2f} ms")


def run(args: argparse.Namespace, out: Callable[[str], None]) -> Report:
    cpus = sorted(os.sched_getaffinity(0))
    collector_cpu = args.cpu
    mine = [c for c in cpus if c != collector_cpu]
    if mine:
        os.sched_setaffinity(0, mine)  # load generator and sink off the collector's core (before any gRPC thread)
    pin = {"collector_cpu": collector_cpu, "bench_cpus": mine or cpus, "pinned_with": "taskset" if shutil.which(
        "taskset") else "os.sched_setaffinity wrapper", "exclusive": bool(mine)}
    env = {"python": platform.python_version(), "grpcio": metadata.version("grpcio"),
           "protobuf": metadata.version("protobuf"), "cpus": os.cpu_count(), "platform": platform.platform(),
           "flowtel_git": _git_state(), "loadavg_at_start": os.getloadavg()[0]}
    workload = build_workload(args.traces_per_request)
    wl = {"traces_per_request": workload.traces, "spans_per_request": workload.spans,
          "request_bytes": len(workload.template), "clients": args.clients, "compression": args.compression}
    out(f"flowtel collector throughput: {workload.spans} spans ({workload.traces} prompt flow traces) per "
        f"{len(workload.template) / 1024:.0f} KiB request, {args.clients} client threads, otlp exporter "
        f"compression {args.compression}")
    out(f"  flowtel {env['flowtel_git']}, python {env['python']}, grpcio {env['grpcio']}, protobuf {env['protobuf']}, "
        f"{env['cpus']} CPUs, load average {env['loadavg_at_start']:.2f}; collector and decode-only server pinned to "
        f"CPU {collector_cpu} ({pin['pinned_with']}), load generator and sink on CPU(s) "
        f"{','.join(map(str, pin['bench_cpus']))}")
    if not mine:
        out("  WARNING: only one CPU available; the load generator shares the collector's core")
    seq = itertools.count(1)

    baselines: list[Baseline] = []
    out("decode-only baseline (closed loop, before the collector)")
    baselines.append(run_baseline(workload, "decode", collector_cpu, args.baseline_clients, 2.0,
                                  args.baseline_s, seq))
    out(_baseline_line(baselines[-1]))
    adapt: Baseline | None = None
    if args.adapt_baseline:
        out("decode + flowtel.otlp.adapt (the receiver's work up to the pipeline queue; closed loop)")
        adapt = run_baseline(workload, "adapt", collector_cpu, args.baseline_clients, 2.0, args.baseline_s, seq)
        out(_baseline_line(adapt))

    sink = Sink()
    tmp = Path(tempfile.mkdtemp(prefix="flowtel-bench-"))
    config_path = tmp / "collector.yaml"
    config_path.write_text(COLLECTOR_CONFIG.format(sink=sink.endpoint, compression=args.compression))
    collector = start_collector(config_path, collector_cpu)
    rss_idle = collector.stats.rss_mib()
    pin["collector_affinity"] = collector.stats.affinity()
    final: Trial | None = None
    finals: list[Trial] = []
    trials: list[Trial] = []
    try:
        ctx = Context(workload, sink, collector, collector.found["prometheus"], collector.found["otlp"], args.clients,
                      seq, args.drain_s, collector_cpu, pin["bench_cpus"])
        warm = Load(ctx.target, workload, args.clients, seq)
        warm.warm()
        warm.close()
        sink.wait_for(args.clients * workload.spans, 10)
        out(f"collector (pid {collector.proc.pid}, affinity {pin['collector_affinity']}) idle RSS {rss_idle:.0f} MiB")
        if args.rate:
            best: float | None = args.rate
        else:
            out(f"searching for the highest sustained rate ({args.trial_s:g} s trials after {args.warmup_s:g} s "
                "warm-up)")
            best, trials = search(ctx, args.start_rate, args.trial_s, args.warmup_s, args.search_steps, out)
        if best is None:
            out("   no rate was sustained")
        else:
            rate = best
            out(f"long run ({args.duration:g} s after {args.warmup_s:g} s warm-up), 5 % lower after a failure")
            for _ in range(FINAL_TRIES):
                t = run_trial(ctx, rate, args.warmup_s, args.duration, long=True)
                finals.append(t)
                out(trial_line("long ", t))
                if t.passed:
                    final = t
                    break
                rate *= 0.95
                time.sleep(1.0)
        time.sleep(0.5)
        metrics = scrape(ctx.metrics_url)
        sane, detail = sanity(sink, metrics, int(metrics["otelcol_receiver_accepted_spans_total"]))
    finally:
        collector.stop()
        sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out("decode-only baseline (closed loop, after the collector)")
    baselines.append(run_baseline(workload, "decode", collector_cpu, args.baseline_clients, 2.0,
                                  args.baseline_s, seq))
    out(_baseline_line(baselines[-1]))
    decode_rate = statistics.mean(x.spans_per_s for x in baselines)
    decode_cpu_us = statistics.mean(x.server_cpu_pct / 100 / x.spans_per_s * 1e6 for x in baselines)

    sustained = final.delivered_spans_per_s if final else None
    no_drops = final is not None and all(v == 0 for k, v in final.collector_counters.items() if k in LOSS_COUNTERS) \
        and final.delivered_spans == final.accepted_spans
    noisy = max([b.other_cpu_pct for b in baselines] + ([final.other_cpu_pct] if final else []))
    report = Report(
        env, wl, pin, sane, detail, sustained, final.offered_spans_per_s if final else None,
        final.collector_cpu_pct if final else None,
        final.collector_cpu_pct / 100 / final.offered_spans_per_s * 1e6 if final else None,
        {"idle": rss_idle, **(final.rss_mib if final else {})},
        no_drops, asdict(final) if final else None, decode_rate, decode_cpu_us, [asdict(x) for x in baselines],
        all(x.server_cpu_pct >= 90 for x in baselines), sustained / decode_rate if sustained else None,
        asdict(adapt) if adapt else None, noisy,
        goal_met=bool(sustained and sustained >= GOAL_SPANS_PER_S),
        search_trials=[asdict(t) for t in trials], final_attempts=[asdict(t) for t in finals])
    _print(report, out)
    return report


def _print(rep: Report, out: Callable[[str], None]) -> None:
    out("")
    out(f"sanity: {'ok' if rep.sanity_ok else 'FAILED'}: {rep.sanity}")
    if rep.other_cpu_pct_max > NOISY_PCT:
        out(f"WARNING: other processes used up to {rep.other_cpu_pct_max:.0f} % of the pinned core during a measured "
            "window; the figures below are low. Rerun on a quiet machine.")
    if rep.final is not None and rep.final["bench_other_cpu_pct"] > 25:
        out(f"WARNING: other processes used {rep.final['bench_other_cpu_pct']:.0f} % of the load generator's core(s) "
            "during the long run; the sink may have lagged.")
    if rep.final is None:
        out("1. sustained throughput: none (no rate passed); see the trials above")
        return
    f = rep.final
    verdict = "meets goal" if rep.goal_met else "MISSES goal"
    out(f"1. sustained throughput, collector pinned to one core: {rep.sustained_spans_per_s:,.0f} spans/s delivered "
        f"to the sink over {f['window_s']:.1f} s (offered {rep.offered_spans_per_s:,.0f}/s)   "
        f"(goal >= {GOAL_SPANS_PER_S:,}: {verdict})")
    counters = f["collector_counters"]
    out(f"   no drops: {'yes' if rep.no_drops else 'NO'}: accepted {f['accepted_spans']:,}, at the sink "
        f"{f['delivered_spans']:,} (all within {f['drain_s']:.2f} s of the load stopping); "
        + ", ".join(f"{k.removesuffix('_total')} {v:.0f}" for k, v in counters.items() if k in LOSS_COUNTERS)
        + f"; refused at the client {f['refused_spans']}")
    out(f"   collector CPU {rep.collector_cpu_pct:.1f} % of one core ({rep.collector_cpu_us_per_span:.1f} us per span; "
        f"other processes on that core {f['other_cpu_pct']:.1f} %); request latency p50 {f['latency_p50_ms']:.1f} ms, "
        f"p99 {f['latency_p99_ms']:.1f} ms")
    out(f"   load generator and sink: {f['bench_cpu_pct']:.0f} % of one core (other processes on their core(s) "
        f"{f['bench_other_cpu_pct']:.0f} %); backlog trend {f['backlog_growth_pct']:+.1f} % of the rate, largest "
        f"backlog {f['backlog_max_s']:.2f} s of load")
    rss = rep.collector_rss_mib
    out(f"2. collector memory (VmRSS): idle {rss['idle']:.0f} MiB; window start {rss['start']:.0f}, middle "
        f"{rss['middle']:.0f}, end {rss['end']:.0f} MiB; after drain {rss['after_drain']:.0f} MiB; peak (VmHWM) "
        f"{rss['peak_hwm']:.0f} MiB")
    out(f"3. decode-only baseline: {rep.decode_only_spans_per_s:,.0f} spans/s "
        f"({rep.decode_only_cpu_us_per_span:.2f} us CPU per span; mean of "
        + ", ".join(f"{b['spans_per_s']:,.0f} at {b['server_cpu_pct']:.0f} % CPU" for b in rep.decode_only) + ")")
    if rep.adapt_only:
        a = rep.adapt_only
        us = a["server_cpu_pct"] / 100 / a["spans_per_s"] * 1e6
        out(f"   decode + adapt: {a['spans_per_s']:,.0f} spans/s ({us:.2f} us CPU per span)")
    assert rep.ratio_to_decode_only is not None
    out(f"   collector / decode-only = {rep.ratio_to_decode_only:.3f} (throughput); CPU per span "
        f"{rep.collector_cpu_us_per_span / rep.decode_only_cpu_us_per_span:.0f}x decode-only's"
        + ("" if rep.decode_only_saturated else
           "   NOTE: the decode-only server did not saturate its core (load generator bound): the ratio is an "
           "upper bound"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0, help="final measured window, s (default 20)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="warm-up before each window, s (default 3)")
    parser.add_argument("--trial-s", type=float, default=8.0, help="window of each search trial, s (default 8)")
    parser.add_argument("--start-rate", type=float, default=GOAL_SPANS_PER_S,
                        help=f"first rate the search tries, spans/s (default {GOAL_SPANS_PER_S})")
    parser.add_argument("--search-steps", type=int, default=3, help="bisection steps after bracketing (default 3)")
    parser.add_argument("--rate", type=float, default=0, help="skip the search: long runs from this rate (spans/s)")
    parser.add_argument("--traces-per-request", type=int, default=64,
                        help=f"traces per OTLP request, {SPANS_PER_TRACE} spans each (default 64)")
    parser.add_argument("--clients", type=int, default=4, help="client threads / channels (default 4)")
    parser.add_argument("--baseline-clients", type=int, default=8,
                        help="requests in flight against the decode-only server (default 8)")
    parser.add_argument("--baseline-s", type=float, default=6.0, help="decode-only window, s (default 6)")
    parser.add_argument("--adapt-baseline", action="store_true",
                        help="also measure decode + flowtel.otlp.adapt (the receiver's work before queueing)")
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip",
                        help="the otlp exporter's compression (default gzip, the exporter's default)")
    parser.add_argument("--drain-s", type=float, default=3.0,
                        help="longest wait after the load stops for every accepted span to reach the sink (default 3)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU the collector is pinned to (default 0)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object, last line")
    parser.add_argument("--serve", choices=("decode", "adapt"), help=argparse.SUPPRESS)  # the baseline child
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if args.traces_per_request < 1 or args.clients < 1 or args.duration <= 0:
        parser.error("--traces-per-request, --clients and --duration must be positive")
    report = run(args, lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps(asdict(report), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
