"""Cost of the crafted requests that once took the collector down (label bytes, nested calls, many roots, gzip).

Each attack runs against a fresh real collector (``flowtel collector``) on loopback, forwarding to a local OTLP
sink; the script reports what the attack cost the collector: the size and time of one /metrics scrape, the
collector's peak resident memory (VmHWM), and the CPU seconds it spent (all threads) until the attack's spans
reached the sink. It also replays an ordinary workload through the pipeline stage (adapt, process, encode) in a
child process of the same interpreter, for the per-span cost of ordinary traffic.

Run it with another checkout's interpreter to get the "before" figures from the same script:

    .venv/bin/python bench/bench_attacks.py                                  # this checkout
    .venv/bin/python bench/bench_attacks.py --python /path/to/main/.venv/bin/python   # before

Figures are printed, never asserted. The defaults are smaller than the issue's attacks so the "before" run stays
within a shared machine's memory; the issue's sizes are
``--flows 2000 --depth 2000 --rss-depth 8000 --held 50000 --roots 4000``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402
from attacks import long_flow_names, many_roots, nested_calls  # noqa: E402

from collector_proc import CollectorProcess  # noqa: E402
from otlp_sink import OTLPSink  # noqa: E402

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0", max_request_body_size: 67108864}}}
processors:
  flowtel: {trace_timeout: 10m}
  batch: {timeout: 20ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [flowtel, batch], exporters: [prometheus, otlp/sink]}
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Run:
    def __init__(self, python: str, tmp: Path) -> None:
        self.sink = OTLPSink().start()
        self.proc = CollectorProcess(CONFIG % {"sink": self.sink.endpoint}, tmp, python=python).start()
        assert self.proc.proc is not None
        self.pid = self.proc.proc.pid
        self.url = self.proc.http["otlp"] + "/v1/traces"

    def post(self, body: bytes, **headers: str) -> int:
        return requests.post(self.url, data=body, timeout=600,
                             headers={"Content-Type": "application/x-protobuf", **headers}).status_code

    def forwarded(self) -> int:
        return len(self.sink.spans())

    def wait_forwarded(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.forwarded() >= n:
                return True
            time.sleep(0.2)
        return False

    def scrape(self, timeout: float) -> tuple[int, float]:
        start = time.monotonic()
        size = 0
        with urllib.request.urlopen(self.proc.prometheus["prometheus"], timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                size += len(chunk)
        return size, time.monotonic() - start

    def stop(self) -> None:
        self.proc.stop()
        self.sink.stop()


def attack(name: str, python: str, bodies: list[bytes], spans: int, scrape: bool, timeout: float,
           **headers: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(python, Path(tmp))
        try:
            before = cpu_s(run.pid)
            statuses = [run.post(body, **headers) for body in bodies]
            done = run.wait_forwarded(spans, timeout) if spans else True
            result: dict[str, Any] = {
                "attack": name, "request_bytes": sum(len(b) for b in bodies), "statuses": sorted(set(statuses)),
                "cpu_s": round(cpu_s(run.pid) - before, 2), "forwarded": f"{run.forwarded()}/{spans}",
                "done": done}
            if scrape:
                try:
                    size, seconds = run.scrape(timeout)
                    result.update(scrape_mib=round(size / (1 << 20), 2), scrape_s=round(seconds, 2))
                except OSError as error:
                    result.update(scrape_error=str(error))
            result["peak_rss_mib"] = round(peak_rss_mib(run.pid), 1)
            return result
        finally:
            run.stop()


REPLAY = """
import sys, time
sys.path.insert(0, {tests!r})
from attacks import flow_trace, request
from flowtel.config import FlowtelConfig
from flowtel.otlp import adapt, apply_to_otlp_span, encode_request
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.pipeline import TracePipeline
from flowtel.selfmetrics import SelfMetrics
bodies = [request([s for i in range(64) for s in flow_trace("flow%d" % (i % 4))]) for _ in range({batches})]
config = FlowtelConfig()
best = []
for _ in range({rounds}):
    self_metrics = SelfMetrics()
    pipe = TracePipeline(config, FlowtelMetrics(config, self_metrics), self_metrics, apply_to_otlp_span)
    n = 0
    start = time.process_time_ns()
    for body in bodies if {process} else ():
        spans = adapt(body).spans
        n += len(spans)
        encode_request(pipe.process(spans, 0))
    best.append((time.process_time_ns() - start) / max(n, 1) / 1000)
print(min(best) if best and best[0] else 0)
"""


def replay_us_per_span(python: str, batches: int, rounds: int) -> float:
    code = REPLAY.format(tests=str(ROOT / "tests"), batches=batches, rounds=rounds, process=True)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def replay_instructions_per_span(python: str, batches: int) -> float:
    """Instructions per span under callgrind (counted, so the machine's noise does not move it): replays of
    ``batches`` and ``2 * batches`` requests, minus the same runs building the requests only, which cancels
    start-up, imports and building."""
    counts = []
    for n, process in ((batches, True), (2 * batches, True), (batches, False), (2 * batches, False)):
        code = REPLAY.format(tests=str(ROOT / "tests"), batches=n, rounds=1, process=process)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", code],
                           capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
            summary = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
            counts.append(int(summary[0].split()[1]))
    return ((counts[1] - counts[0]) - (counts[3] - counts[2])) / (batches * 64 * 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose flowtel runs the collector")
    parser.add_argument("--flows", type=int, default=1000, help="item 5: flows with long names (issue: 2000)")
    parser.add_argument("--name-bytes", type=int, default=2048, help="item 5: bytes per flow name")
    parser.add_argument("--depth", type=int, default=1000,
                        help="items 5 and 6: nested calls in one request, then one scrape (issue: 2000, 3 GB)")
    parser.add_argument("--rss-depth", type=int, default=4000,
                        help="item 6: nested calls in one request, memory and CPU only (issue: 8000)")
    parser.add_argument("--held", type=int, default=20000, help="item 7: held spans (issue: 50000)")
    parser.add_argument("--roots", type=int, default=2000, help="item 7: roots of the same trace (issue: 4000)")
    parser.add_argument("--gzip-members", type=int, default=200_000, help="item 13: empty gzip members")
    parser.add_argument("--timeout", type=float, default=300, help="per attack, s")
    parser.add_argument("--replay-batches", type=int, default=40, help="ordinary workload: 64-trace requests")
    parser.add_argument("--replay-rounds", type=int, default=5)
    parser.add_argument("--callgrind", type=int, default=0, metavar="BATCHES",
                        help="also count instructions per span of the ordinary workload under callgrind")
    parser.add_argument("--only", nargs="*", default=["labels", "nested", "roots", "gzip", "replay"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []

    def report(result: dict[str, Any]) -> None:
        results.append(result)
        if not args.json:
            print(", ".join(f"{k}={v}" for k, v in result.items()), flush=True)

    if "labels" in args.only:
        per = 100
        bodies = [long_flow_names(min(per, args.flows - i), args.name_bytes, i) for i in range(0, args.flows, per)]
        report(attack("item5_long_flow_names", args.python, bodies, 3 * args.flows, True, args.timeout))
    if "nested" in args.only:
        report(attack("item6_nested_calls", args.python, [nested_calls(args.depth)], args.depth + 2, True,
                      args.timeout))
    if "nested" in args.only:
        report(attack("item6_nested_calls_memory", args.python, [nested_calls(args.rss_depth)], args.rss_depth + 2,
                      False, args.timeout))
    if "roots" in args.only:
        held, roots = many_roots(args.held, args.roots)
        # the held spans stay held (trace timeout 10 min): what is forwarded is the roots
        report(attack("item7_many_roots", args.python, [held, roots], args.roots, False, args.timeout))
    if "gzip" in args.only:
        body = gzip.compress(b"") * args.gzip_members
        report(attack("item13_gzip_members", args.python, [body], 0, False, args.timeout,
                      **{"Content-Encoding": "gzip"}))
    if "replay" in args.only:
        report({"attack": "none: ordinary traffic (adapt + process + encode, best of rounds)",
                "us_per_span": round(replay_us_per_span(args.python, args.replay_batches, args.replay_rounds), 2)})
    if args.callgrind:
        report({"attack": "none: ordinary traffic under callgrind",
                "instructions_per_span": round(replay_instructions_per_span(args.python, args.callgrind))})
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
