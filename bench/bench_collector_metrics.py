"""How many metric points/s the flowtel collector takes on one core, against a decode-only gRPC server.

Method (the spans benchmark's style, ``bench_collector.py``, simplified to closed-loop load).
The collector runs as its own process (``python -m flowtel.cli collector --config ...``) pinned
to one CPU, with an ``otlp`` gRPC receiver and a ``metrics`` pipeline ``[memory_limiter, batch]``
to two exporters: ``prometheus`` (received metrics translated and kept for scrapes) and ``otlp``
forwarding to a sink in this process (``--forward-only``: the ``otlp`` exporter alone, to
see what receiving and forwarding cost without the translation). This process runs the load
generator and the sink on the other CPUs.

The workload is what the OpenTelemetry SDK's OTLP exporter sends for an app: a counter, a
histogram (the SDK's default 16 buckets), an up-down counter and a gauge, each over
``--series`` label sets, recorded with the SDK and encoded as its exporter encodes them. Each
client is its own app (its own ``service.instance.id``, so its own series) and sends its
request again and again with the points' timestamp advanced by patching its 8 bytes (a
collector drops a point that is not newer than the one it holds). Load is closed-loop:
``--clients`` requests in flight; a refused request (UNAVAILABLE) is retried after 10 ms.

The throughput of the collector is the lower of (a) metric points its ``prometheus`` exporter
translated (``otelcol_exporter_sent_metric_points_total``) and (b) points the sink received,
over a ``--duration`` window after a warm-up, read as deltas; refusals and drops in the window
are reported. The collector's CPU (``/proc/<pid>/stat``) gives µs per point.

The baseline, run in the same invocation on the same pinned CPU, is a grpcio server built as
the collector's gRPC transport builds its own (raw-bytes handler, 8 threads) that only parses
each ``ExportMetricsServiceRequest`` and counts its points. The ratio collector / decode-only
says how much of one core's decode capacity the collector keeps. Timings are reported, never
asserted.

    .venv/bin/python bench/bench_collector_metrics.py [--duration 15] [--series 25] [--clients 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from flowtel.signals import METRICS, count_metric_points

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent


def workload(series: int, instance: str) -> tuple[bytes, bytes, int]:
    """One app's export request, the 8 bytes of its points' timestamp, and its point count."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "bench-app", "service.instance.id": instance}),
                             metric_readers=[reader])
    meter = provider.get_meter("bench")
    counter = meter.create_counter("bench.requests", unit="{request}")
    latency = meter.create_histogram("bench.latency", unit="ms")
    inflight = meter.create_up_down_counter("bench.inflight")
    gauge = meter.create_gauge("bench.temperature", unit="Cel")
    for i in range(series):
        labels = {"route": f"/api/v1/items/{i}", "method": "GET" if i % 2 else "POST", "status": "200"}
        counter.add(i + 1, labels)
        latency.record(12.5 * (i + 1), labels)
        inflight.add(i, labels)
        gauge.set(20.0 + i, labels)
    data = reader.get_metrics_data()
    assert data is not None
    request = encode_metrics(data)
    stamp = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].time_unix_nano
    raw = request.SerializeToString()
    old = struct.pack("<Q", stamp)
    assert raw.count(old) == count_metric_points(request), "timestamp bytes must occur once per point"
    provider.shutdown()
    return raw, old, count_metric_points(request)


def pinned(cmd: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    wrapper = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execvp(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", wrapper, str(cpu), *cmd]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Load:
    """``clients`` threads, each an app re-sending its request with a newer timestamp, closed-loop."""

    def __init__(self, target: str, series: int, clients: int) -> None:
        self.points = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(target, workload(series, f"client-{k}")),
                                          daemon=True) for k in range(clients)]

    def _run(self, target: str, work: tuple[bytes, bytes, int]) -> None:
        raw, old, points = work
        with grpc.insecure_channel(target) as channel:
            export = channel.unary_unary(METRICS.export_method, request_serializer=None, response_deserializer=None)
            stamp = time.time_ns()
            while not self._stop.is_set():
                stamp += 1000
                try:
                    export(raw.replace(old, struct.pack("<Q", stamp)), timeout=10)
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                        raise
                    with self._lock:
                        self.refused += points
                    time.sleep(0.01)
                    continue
                with self._lock:
                    self.points += points

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


# --- the decode-only baseline -----------------------------------------------------------------------------------
DECODE_ONLY = r"""
import sys, threading
from concurrent import futures
import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from flowtel.signals import count_metric_points
points = 0
lock = threading.Lock()
def export(raw, context):
    global points
    n = count_metric_points(ExportMetricsServiceRequest.FromString(raw))
    with lock:
        points += n
    return b""
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                     options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.so_reuseport", 0)])
handler = grpc.unary_unary_rpc_method_handler(export)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.metrics.v1.MetricsService", {"Export": handler}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
for line in sys.stdin:
    with lock:
        print(points, flush=True)
"""


def run_decode_only(args: argparse.Namespace) -> dict[str, float]:
    proc = subprocess.Popen(pinned([sys.executable, "-c", DECODE_ONLY], args.cpu), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())

        def server_points() -> int:
            proc.stdin.write("\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return int(proc.stdout.readline())  # type: ignore[union-attr]

        load = Load(f"127.0.0.1:{port}", args.series, args.clients).start()
        time.sleep(args.warmup)
        p0, c0, t0 = server_points(), cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.duration)
        p1, c1, t1 = server_points(), cpu_seconds(proc.pid), time.monotonic()
        load.stop()
    finally:
        proc.kill()
        proc.wait()
    points = p1 - p0
    return {"points_per_s": points / (t1 - t0), "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "cpu_us_per_point": 1e6 * (c1 - c0) / max(points, 1)}


# --- the collector ----------------------------------------------------------------------------------------------
CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  memory_limiter: {check_interval: 1s, limit_mib: 2048}
  # Requests of at most 8192 points: a joined batch must stay under the sink's 4 MiB gRPC message limit.
  batch: {timeout: 200ms, send_batch_size: 8192, send_batch_max_size: 8192}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}, sending_queue: {queue_size: 5000}}
service:
  pipelines:
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [%(exporters)s]}
    # The collector's own counters are read from the prometheus exporter, which a traces pipeline keeps.
    traces: {receivers: [otlp], exporters: [prometheus]}
"""
LISTEN = re.compile(r"(OTLP/gRPC listening on|Prometheus metrics on) (\S+)")


class Sink:
    def __init__(self) -> None:
        self.points = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(METRICS.grpc_service,
                                                                                   {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, raw: bytes, context: Any) -> bytes:
        n = count_metric_points(metrics_service_pb2.ExportMetricsServiceRequest.FromString(raw))
        with self._lock:
            self.points += n
        return b""


def counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for name in ("otelcol_exporter_sent_metric_points_total", "otelcol_receiver_refused_metric_points_total",
                 "otelcol_exporter_send_failed_metric_points_total", "flowtel_metric_points_dropped_total",
                 "otelcol_receiver_accepted_metric_points_total"):
        out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(name) and ('exporter="otlp/sink"' not in line or "sent" not in name))
    return out


def run_collector(args: argparse.Namespace) -> dict[str, float]:
    sink = Sink()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "collector.yaml"
        exporters = "otlp/sink" if args.forward_only else "prometheus, otlp/sink"
        config.write_text(CONFIG % {"sink": f"127.0.0.1:{sink.port}", "exporters": exporters})
        proc = subprocess.Popen(pinned([sys.executable, "-m", "flowtel.cli", "collector", "--config", str(config)],
                                       args.cpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found: dict[str, str] = {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                m = LISTEN.search(line)
                if m:
                    found[m.group(1)] = m.group(2)
                if "collector ready" in line:
                    break
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            url = found["Prometheus metrics on"]
            load = Load(found["OTLP/gRPC listening on"], args.series, args.clients).start()
            time.sleep(args.warmup)
            k0, s0, c0, t0 = counters(url), sink.points, cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.duration)
            k1, s1, c1, t1 = counters(url), sink.points, cpu_seconds(proc.pid), time.monotonic()
            load.stop()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            sink.server.stop(0)
    delta = {name: k1[name] - k0[name] for name in k0}
    forwarded = s1 - s0
    translated = forwarded if args.forward_only else delta["otelcol_exporter_sent_metric_points_total"]
    points = min(translated, forwarded)
    return {"points_per_s": points / (t1 - t0), "translated_per_s": translated / (t1 - t0),
            "forwarded_per_s": forwarded / (t1 - t0),
            "accepted_per_s": delta["otelcol_receiver_accepted_metric_points_total"] / (t1 - t0),
            "refused": delta["otelcol_receiver_refused_metric_points_total"],
            "dropped": delta["flowtel_metric_points_dropped_total"],
            "send_failed": delta["otelcol_exporter_send_failed_metric_points_total"],
            "cpu_pct": 100 * (c1 - c0) / (t1 - t0), "cpu_us_per_point": 1e6 * (c1 - c0) / max(points, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per server")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--series", type=int, default=25, help="label sets per instrument (4 instruments)")
    parser.add_argument("--clients", type=int, default=4, help="apps sending, one request in flight each")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the servers are pinned to")
    parser.add_argument("--forward-only", action="store_true",
                        help="no prometheus exporter: what receiving, batching and forwarding alone cost")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _, _, per_request = workload(args.series, "probe")
    before = run_decode_only(args)
    collector = run_collector(args)
    after = run_decode_only(args)
    decode = (before["points_per_s"] + after["points_per_s"]) / 2
    result = {"points_per_request": per_request, "decode_only": [before, after], "collector": collector,
              "decode_only_points_per_s": decode, "ratio_to_decode_only": collector["points_per_s"] / decode,
              "args": vars(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"workload: {per_request} points per request ({args.series} series x 4 instruments), "
          f"{args.clients} clients, {args.duration:.0f} s per server, pinned to CPU {args.cpu}")
    for name, run in (("decode-only (before)", before), ("collector", collector), ("decode-only (after)", after)):
        print(f"  {name:22s} {run['points_per_s']:10,.0f} points/s  CPU {run['cpu_pct']:5.1f} %  "
              f"{run['cpu_us_per_point']:6.2f} us/point")
    c = collector
    print(f"  collector: translated {c['translated_per_s']:,.0f}/s, forwarded {c['forwarded_per_s']:,.0f}/s, "
          f"accepted {c['accepted_per_s']:,.0f}/s; refused {c['refused']:.0f}, dropped {c['dropped']:.0f}, "
          f"send failed {c['send_failed']:.0f} points in the window")
    print(f"collector / decode-only: {result['ratio_to_decode_only']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
