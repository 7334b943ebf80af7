"""Peak memory one crafted request costs the collector, as a multiple of its size, and how that grows with it.

Each shape (builders in ``tests/request_memory.py``, shared with ``tests/test_request_memory.py``) is one
request crafted to be the worst it can be for some stage: many tiny spans, one span with many attributes or a
huge one, deep nesting, held spans and many roots, long flow names, GenAI messages and JSON attributes, many
events, a gzip body inflating 6x, metrics with many points / attributes / buckets / families, logs with big
bodies or content attributes, a feedback body. It goes through an in-process collector built from a real config
by the code path a request takes there (the HTTP receiver's app, intake, the pipelines' worker step, the
exporters' hand-off; for held spans, their release), at sizes N, 2N and 4N.

Printed per shape and size: the bytes sent (``wire``), after decompression (``decoded``), the tracemalloc peak
above what was allocated before the request (``peak``: Python allocations, flowtel's work), ``peak / decoded``,
and ``growth``: the peak at 2N (4N) over the peak at N (2N) divided by how much the request grew; 1.0 is
linear. With ``--rss`` each measure is repeated in a fresh subprocess for the growth of its resident memory
(``VmHWM`` reset through ``/proc/self/clear_refs`` after the request is built), which also counts upb's
arenas (C memory, not in tracemalloc) and the allocator's slack. Figures are printed, never asserted, and all
come from one run; no times.

    .venv/bin/python bench/bench_request_memory.py                 # every shape at N, 2N, 4N (about 1 min)
    .venv/bin/python bench/bench_request_memory.py --rss           # plus the RSS cross-check (a few min)
    .venv/bin/python bench/bench_request_memory.py --only tiny_spans metric_points --scale 4
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import request_memory  # noqa: E402


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def child(name: str, n: int) -> dict[str, Any]:
    """In a fresh process: the resident memory one request adds at its peak."""
    import ctypes
    import logging

    logging.disable(logging.WARNING)
    shape = request_memory.BY_NAME[name]
    collector = request_memory.new_collector()
    request_memory.send(collector, shape.build(max(1, n // 100)))
    crafted = shape.build(n)
    app = request_memory._app(collector, crafted.path)
    gc.collect()
    with contextlib.suppress(OSError):  # glibc only: hand freed memory back, so the base is what is in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    status = request_memory.send(collector, crafted, app)
    return {"status": status, "rss_growth": (_status_kib("VmHWM") - base) << 10}


def rss_growth(name: str, n: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--child", name, str(n)], capture_output=True, text=True,
                         check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rss_growth"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="*", default=[s.name for s in request_memory.SHAPES])
    parser.add_argument("--scale", type=float, default=1.0, help="N is each shape's default times this")
    parser.add_argument("--steps", type=int, default=3, help="sizes N, 2N, ... 2^(steps-1) N")
    parser.add_argument("--rss", action="store_true", help="also the RSS growth, each in a fresh subprocess")
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    import logging
    logging.disable(logging.WARNING)  # the limits the shapes reach are logged once each; not the point here
    results: list[dict[str, Any]] = []
    header = f"{'shape':24} {'N':>8} {'status':8} {'wire':>10} {'decoded':>10} {'peak':>11} {'peak/dec':>8} " \
             f"{'growth':>6}" + (f" {'rss':>11} {'rss/dec':>7}" if args.rss else "")
    if not args.json:
        print(header)
    for name in args.only:
        shape = request_memory.BY_NAME[name]
        last: request_memory.Measured | None = None
        for step in range(args.steps):
            n = max(1, round(shape.n * args.scale)) << step
            got = request_memory.measure(shape, n)
            growth = (got.peak / last.peak) / (got.decoded / last.decoded) if last else None
            row: dict[str, Any] = {"shape": name, "n": n, "status": got.status, "wire": got.wire,
                                   "decoded": got.decoded, "peak": got.peak, "ratio": round(got.ratio, 2),
                                   "growth": round(growth, 2) if growth is not None else None}
            if args.rss:
                rss = rss_growth(name, n)
                row.update(rss_growth=rss, rss_ratio=round(rss / got.decoded, 2))
            results.append(row)
            last = got
            if not args.json:
                line = (f"{name:24} {n:>8} {got.status:8} {got.wire:>10,} {got.decoded:>10,} {got.peak:>11,} "
                        f"{got.ratio:>8.2f} {'' if growth is None else f'{growth:.2f}':>6}")
                if args.rss:
                    line += f" {row['rss_growth']:>11,} {row['rss_ratio']:>7.2f}"
                print(line, flush=True)
    worst = max(results, key=lambda r: r["ratio"])
    if args.json:
        print(json.dumps(results))
    else:
        print(f"worst peak/decoded: {worst['ratio']} ({worst['shape']}, N={worst['n']}); "
              f"largest growth: {max(r['growth'] or 0 for r in results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
