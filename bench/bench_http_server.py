"""Compare HTTP servers for flowtel's endpoints: throughput and p99 at 200 concurrent OTLP/HTTP clients,
memory, threads and slow-client (slowloris) behaviour; and flowtel's endpoint before/after.

    .venv/bin/python bench/bench_http_server.py                      # every candidate, ~10 min on 2 cores
    .venv/bin/python bench/bench_http_server.py --servers wsgiref flowtel --rounds 1 --no-stall-phase

Each server runs in its own process on 127.0.0.1 and serves the same OTLP/HTTP app: read the
body, parse it as ``ExportTraceServiceRequest`` (upb), answer the protobuf response. Candidates:
``wsgiref`` (what flowtel used before: ``flowtel._wsgi`` as it was), ``waitress``, ``cheroot``,
``uvicorn-h11``, ``uvicorn-httptools``, ``hypercorn`` and ``flowtel`` (``flowtel._wsgi``, the server
flowtel uses now, with its connection cap, head deadline and buffered-bytes budget). The load
client is one asyncio process with 200 keep-alive connections (it reconnects when the server closes,
as an HTTP/1.0 server makes it do), so the client's own cost is the same for every server; load
rounds go through the servers in turn and medians are printed.

Figures, one line per server (req/s also as a ratio to wsgiref measured in the same run; the machine is noisy):
  req/s, p50 / p99 / max latency, connection errors (resets, timeouts), server RSS after the load,
  then under ``--slow`` slow connections (heads sent one byte per second): the server's thread
  count and RSS, and how often a good client was served (and its latency); then 20 MiB bodies sent
  at 512 KiB/s: RSS growth; finally (wsgiref and flowtel) bodies that stop half-way: the answers,
  and the tracebacks in the server's output.
Nothing is asserted; the exit code is 0 unless something crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = 20100
CANDIDATES = ("wsgiref", "waitress", "cheroot", "uvicorn-h11", "uvicorn-httptools", "hypercorn", "flowtel")
RESPONSE = ExportTraceServiceResponse().SerializeToString()


def request_body(spans: int = 20) -> bytes:
    scope = ScopeSpans(spans=[Span(trace_id=bytes([1 + i % 200]) * 16, span_id=bytes([1 + i % 200]) * 8,
                                   name=f"span-{i}", start_time_unix_nano=1, end_time_unix_nano=2)
                              for i in range(spans)])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[scope])]).SerializeToString()


# ---------------------------------------------------------------- the servers (child processes)

def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        ExportTraceServiceRequest.FromString(environ["wsgi.input"].read(length))
    except DecodeError:  # a body cut short by a client that went away
        start_response("400 Bad Request", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "application/x-protobuf"), ("Content-Length", str(len(RESPONSE)))])
    return [RESPONSE]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        return
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        ExportTraceServiceRequest.FromString(bytes(body))
    except DecodeError:  # a body cut short by a client that went away
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf"),
                            (b"content-length", str(len(RESPONSE)).encode())]})
    await send({"type": "http.response.body", "body": RESPONSE})


def serve(name: str, port: int) -> None:
    if name == "wsgiref":
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # as flowtel had it

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            allow_reuse_address = True

        class Handler(WSGIRequestHandler):
            timeout = 30

            def log_message(self, *args: Any) -> None:
                pass

        make_server("127.0.0.1", port, wsgi_app, server_class=Server, handler_class=Handler).serve_forever()
    elif name == "waitress":
        import waitress

        waitress.serve(wsgi_app, host="127.0.0.1", port=port, threads=8, connection_limit=1000, backlog=1024,
                       _quiet=True)
    elif name == "cheroot":
        from cheroot import wsgi

        server = wsgi.Server(("127.0.0.1", port), wsgi_app, numthreads=16, request_queue_size=1024)
        server.keep_alive_conn_limit = 1000
        server.start()
    elif name.startswith("uvicorn"):
        import uvicorn

        uvicorn.run(asgi_app, host="127.0.0.1", port=port, http=name.split("-")[1], backlog=1024,
                    log_level="error", lifespan="off")
    elif name == "hypercorn":
        from hypercorn.asyncio import serve as hserve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.backlog = 1024
        config.loglevel = "ERROR"
        asyncio.run(hserve(asgi_app, config))  # type: ignore[arg-type]
    elif name == "flowtel":
        sys.path.insert(0, str(ROOT / "src"))
        import threading

        from flowtel._wsgi import ServerLimits, WSGIEndpoint

        WSGIEndpoint(wsgi_app, "127.0.0.1", port, name="bench", limits=ServerLimits(max_body_bytes=20 * 2**20)).start()
        threading.Event().wait()
    else:
        raise SystemExit(f"unknown server {name}")


# ---------------------------------------------------------------- the client side (this process)

def proc_stat(pid: int) -> tuple[int, float]:
    """(threads, RSS MiB) of a process."""
    threads, rss = 0, 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return threads, rss


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return int(status), keep


async def one_request(port: int, body: bytes, timeout: float = 30) -> float:
    """A fresh connection, one request; returns its latency in seconds (raises on failure)."""
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(post(body))
        status, _ = await asyncio.wait_for(read_response(reader), timeout)
        if status != 200:
            raise RuntimeError(f"status {status}")
        return time.perf_counter() - start
    finally:
        writer.close()


def post(body: bytes) -> bytes:
    return (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def load(port: int, clients: int, seconds: float, body: bytes) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    non_200 = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors, non_200
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                reader, writer = conn
                writer.write(post(body))
                status, keep = await asyncio.wait_for(read_response(reader), 30)
                latencies.append(time.perf_counter() - start)
                non_200 += status != 200
                if not keep:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                errors += 1
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / wall, "ok": len(latencies), "errors": errors, "non_200": non_200,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            "max": latencies[-1] if latencies else float("nan")}


async def open_many(port: int, n: int) -> list[asyncio.StreamWriter | None]:
    """``n`` connections opened 100 at a time (a server with a short backlog makes each wait); None: refused."""
    gate = asyncio.Semaphore(100)

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                return (await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3))[1]
            except (OSError, asyncio.TimeoutError):
                return None

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def slowloris(port: int, pid: int, connections: int, seconds: float, body: bytes) -> dict[str, Any]:
    """``connections`` clients send a request head one byte per second; a good client tries meanwhile."""
    head = post(b"x" * 10)
    opened = await open_many(port, connections)
    writers = [w for w in opened if w is not None]
    refused = len(opened) - len(writers)
    closed_by_server = 0
    good: list[float] = []
    good_failed = 0
    peak_threads, peak_rss = proc_stat(pid)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        for w in writers:
            if not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(head[i:i + 1])
        i += 1
        try:
            good.append(await one_request(port, body, timeout=3))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError, ValueError):
            good_failed += 1
        threads, rss = proc_stat(pid)
        peak_threads, peak_rss = max(peak_threads, threads), max(peak_rss, rss)
        await asyncio.sleep(max(0.0, 1 - (good[-1] if good else 0)))
    for w in writers:
        if w.transport.is_closing() or w.is_closing():
            closed_by_server += 1
        w.close()
    return {"opened": len(writers), "refused": refused, "threads": peak_threads, "rss": peak_rss,
            "good_ok": len(good), "good_failed": good_failed,
            "good_p50": statistics.median(good) if good else float("nan")}


async def stalled_bodies(port: int, pid: int, connections: int, seconds: float) -> dict[str, Any]:
    """Heads announcing 20 MiB bodies, then 256 KiB of body per connection every 0.5 s: what the server holds."""
    _, rss_before = proc_stat(pid)
    writers = [w for w in await open_many(port, connections) if w is not None]
    for writer in writers:
        writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: 20971520\r\n\r\n" + b"\0" * 65536)
    peak = rss_before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for w in writers:
            if not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(b"\0" * 262144)
        await asyncio.sleep(0.5)
        peak = max(peak, proc_stat(pid)[1])
    for w in writers:
        w.close()
    return {"rss_growth": peak - rss_before}


async def stalled_answers(port: int, connections: int, wait_s: float) -> dict[str, Any]:
    """Item 2: bodies that stop half-way (10 of 1000 bytes). What does each client get back, and when?"""
    started = time.perf_counter()

    async def one() -> str:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
        except (OSError, asyncio.TimeoutError):
            return "refused"
        writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: 1000\r\n\r\n" + bytes(10))
        try:
            status, _ = await asyncio.wait_for(read_response(reader), wait_s)
            return str(status)
        except asyncio.TimeoutError:
            return "none"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return "closed"
        finally:
            writer.close()

    counts: dict[str, int] = {}
    for status in await asyncio.gather(*(one() for _ in range(connections))):
        counts[status] = counts.get(status, 0) + 1
    return {"stalled_statuses": counts, "stalled_after_s": time.perf_counter() - started}


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def attacks(name: str, port: int, pid: int, args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {}
    result["threads_load"], result["rss_load"] = proc_stat(pid)
    result.update(asyncio.run(slowloris(port, pid, args.slow, args.slow_seconds, body)))
    result.update(asyncio.run(stalled_bodies(port, pid, args.stalled, args.slow_seconds)))
    if args.stall_phase and name in ("wsgiref", "flowtel"):
        result.update(asyncio.run(stalled_answers(port, 40, 40.0)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="*", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0, help="of load per server and round")
    parser.add_argument("--rounds", type=int, default=3, help="load rounds, servers in turn (medians reported)")
    parser.add_argument("--slow", type=int, default=1000, help="slow connections in the slowloris phase")
    parser.add_argument("--slow-seconds", type=float, default=8.0)
    parser.add_argument("--stalled", type=int, default=40, help="connections stalling 20 MiB bodies")
    parser.add_argument("--no-stall-phase", dest="stall_phase", action="store_false",
                        help="skip item 2 (40 bodies stalled half-way; ~30 s each for wsgiref and flowtel)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    body = request_body()
    print(f"{args.clients} keep-alive clients, {len(body)}-byte OTLP requests, {args.rounds} rounds of "
          f"{args.seconds:.0f} s per server in turn (medians); then {args.slow} slowloris connections and "
          f"{args.stalled} 20 MiB bodies sent at 512 KiB/s for {args.slow_seconds:.0f} s")
    with contextlib.ExitStack() as stack:
        logs = {name: stack.enter_context(tempfile.TemporaryFile()) for name in args.servers}
        report(args, body, logs)


def report(args: argparse.Namespace, body: bytes, logs: dict[str, Any]) -> None:
    ports = {name: PORT_BASE + i for i, name in enumerate(args.servers)}
    procs = {name: subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(ports[name])],
                                    stdout=logs[name], stderr=logs[name]) for name in args.servers}
    try:
        for name in args.servers:
            wait_listening(ports[name])
            asyncio.run(load(ports[name], args.clients, 1.0, body))  # warm-up
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
        for _ in range(args.rounds):
            for name in args.servers:
                rounds[name].append(asyncio.run(load(ports[name], args.clients, args.seconds, body)))
        results: dict[str, dict[str, Any]] = {}
        for name in args.servers:
            r = {key: statistics.median(x[key] for x in rounds[name]) for key in ("rps", "p50", "p99", "max")}
            r["errors"] = sum(x["errors"] + x["non_200"] for x in rounds[name])
            r.update(attacks(name, ports[name], procs[name].pid, args, body))
            results[name] = r
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    header = (f"{'server':<18} {'req/s':>7} {'x wsgiref':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} "
              f"{'RSS MiB':>7} | {'slow: threads':>13} {'RSS':>5} {'good ok/fail':>12} {'good ms':>7} | "
              f"{'stalled +MiB':>12}")
    print(header)
    baseline = results["wsgiref"]["rps"] if "wsgiref" in results else None
    for name, r in results.items():
        ratio = f"{r['rps'] / baseline:.2f}" if baseline else "-"
        print(f"{name:<18} {r['rps']:>7.0f} {ratio:>9} {r['p50'] * 1e3:>7.1f} {r['p99'] * 1e3:>7.0f} "
              f"{r['max'] * 1e3:>7.0f} {r['errors']:>6} {r['rss_load']:>7.0f} | "
              f"{r['threads']:>13} {r['rss']:>5.0f} {r['good_ok']:>5}/{r['good_failed']:<6} "
              f"{r['good_p50'] * 1e3:>7.0f} | {r['rss_growth']:>12.0f}")
    for name, r in results.items():
        if "stalled_statuses" in r:
            logs[name].seek(0)
            tracebacks = logs[name].read().count(b"Traceback")
            print(f"stalled half-way bodies, {name}: answers {r['stalled_statuses']} after "
                  f"{r['stalled_after_s']:.1f} s, {tracebacks} tracebacks in the server's output")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
