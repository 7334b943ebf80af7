"""flowtel's HTTP server for every endpoint (OTLP/HTTP, feedback, Prometheus, health): WSGI apps on uvicorn.

uvicorn (httptools parser, asyncio) holds the connections: HTTP/1.1 keep-alive, chunked request
bodies, IPv6, TLS with optional client certificates, a real listen backlog. One event-loop thread
per endpoint holds any number of slow clients without a thread each; the apps run in a small thread
pool, so an app never sees a half-received request. Chosen on measured grounds:
``bench/bench_http_server.py`` (numbers in ``bench/README.md``).

Bounds, each refused request counted through ``on_refused(reason, detail)`` (the collector's
``flowtel_receiver_refused_requests_total{reason}``) and answered, never a traceback:

- ``max_connections`` open connections; one more is answered 503 (Retry-After) and closed;
- the request head (line and headers) must arrive within ``head_timeout_s`` and fit ``max_head_bytes``
  (408 / 431, then closed); an idle kept-alive connection is closed after ``keep_alive_timeout_s``;
- before any body byte is read: the app's own head check (``check_head``: path, method, token,
  content type, size, admission), ``max_body_bytes`` (413), and the announced length against what is
  free of the endpoint's budget of buffered request bytes, ``max_buffered_bytes`` over all requests
  in flight (503 with Retry-After); bytes are charged as they arrive, so the budget is never exceeded
  (503 when it would be) and a client that announces much and stalls holds only what it sent;
- the whole body must arrive within ``body_timeout_s`` (408, not a 500);
- bytes that are not HTTP get uvicorn's 400 (``bad_http``).

The server never installs signal handlers and runs in a background thread, so it can live in a user's app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn

from flowtel._log import warn_once
from flowtel._uvicorn import HeadGuard, guarded_protocol
from flowtel.settings import BearerToken, TLSSettings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: A WSGI-shaped check run on the request head before the body is read: ``None`` to go on, or the answer
#: (``start_response`` called) to refuse with, in the endpoint's own format.
HeadCheck = Callable[[dict[str, Any], Callable[..., Any]], "Iterable[bytes] | None"]
RefusalHook = Callable[[str, str], None]
KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per endpoint; the defaults are documented in collector-config/README.md (``otlp`` receiver)."""

    max_connections: int = 1000
    max_body_bytes: int = 64 * KIB
    max_buffered_bytes: int = 64 * MIB
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 15.0
    max_head_bytes: int = 64 * KIB
    workers: int = 4
    backlog: int = 1024


def bearer_auth(app: WSGIApp, token: str | BearerToken | None) -> WSGIApp:
    """Require ``Authorization: Bearer <token>`` (``BearerToken``, constant-time); 401 otherwise."""
    if not token:
        return app
    check = BearerToken(token) if isinstance(token, str) else token

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if check.check(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token\n"]

    return guarded


def _log_refusal(name: str) -> RefusalHook:
    def hook(reason: str, detail: str) -> None:
        warn_once(f"http:{name}:{reason}", "%s refused a request (%s): %s", name, reason, detail)
    return hook


class _Budget:
    """Request bytes buffered by one endpoint; touched only from its event loop, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True


class _Charge:
    """Bytes one request has charged to its endpoint's budget, released when it is done however it ends."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class _Answer:
    """What a WSGI call produced: status, headers, body."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return lambda data: None  # the legacy write() callable; no app of ours uses it


def _environ(scope: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    server = scope.get("server") or ("", 0)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"], "SCRIPT_NAME": "", "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}", "REMOTE_ADDR": str(client[0]),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.input": io.BytesIO(b""),
    }
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name == "content-length":
            environ["CONTENT_LENGTH"] = value
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _call(app: WSGIApp, environ: dict[str, Any]) -> tuple[_Answer, bytes]:
    answer = _Answer()
    result = app(environ, answer.start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answer, body


class _Bridge:
    """The ASGI app uvicorn calls: head checks and budget on the loop, the body read with a deadline, then the
    WSGI app in the thread pool."""

    def __init__(self, app: WSGIApp, check_head: HeadCheck | None, limits: ServerLimits,
                 on_refused: RefusalHook, pool: concurrent.futures.Executor) -> None:
        self._app, self._check_head, self._limits = app, check_head, limits
        self._on_refused, self._pool = on_refused, pool
        self._budget = _Budget(limits.max_buffered_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        environ = _environ(scope, scope["headers"])
        charged = _Charge()
        try:
            refusal = self._refuse_head(environ)
            if refusal is not None:
                await self._send(send, *refusal, close=True)
                return
            body, refusal = await self._read_body(environ, receive, charged)
            if refusal is not None:
                await self._send(send, *refusal, close=True)
                return
            environ["wsgi.input"] = io.BytesIO(body)
            # A chunked body gets its length; a body shorter than it said keeps the claim, for the app to refuse.
            environ.setdefault("CONTENT_LENGTH", str(len(body)))
            del body
            answer, payload = await asyncio.get_running_loop().run_in_executor(self._pool, _call, self._app, environ)
            await self._send(send, answer, payload)
        finally:  # also when the task is cancelled (at shutdown) half-way through a body
            self._budget.used -= charged.bytes

    def _refuse_head(self, environ: dict[str, Any]) -> tuple[_Answer, bytes] | None:
        """The answer to a request refused on its head alone, else ``None``."""
        raw_length = environ.get("CONTENT_LENGTH")
        if raw_length is not None and not (raw_length.isascii() and raw_length.isdigit()):
            return self._plain(400, "bad_length", f"Content-Length {raw_length[:32]!r} is not a number")
        if self._check_head is not None:
            answer = _Answer()
            result = self._check_head(environ, answer.start_response)
            if result is not None:
                return answer, b"".join(result)
        length = int(raw_length or 0)
        if length > self._limits.max_body_bytes:
            return self._plain(413, "too_large", f"body of {length} bytes over the limit of "
                               f"{self._limits.max_body_bytes} bytes")
        if length > self._budget.limit - self._budget.used:
            return self._busy()
        return None

    async def _read_body(self, environ: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                         charged: _Charge) -> tuple[bytes, tuple[_Answer, bytes] | None]:
        """``(body, refusal)``; the bytes read are counted in ``charged``. They are charged as they arrive, not as
        announced, so a client that announces a large body and stalls holds only what it sent (the announced
        length was checked against what is free before the first byte was read)."""
        limits = self._limits
        chunks: list[bytes] = []  # joined once at the end: growing one buffer would copy it at every step
        deadline = time.monotonic() + limits.body_timeout_s
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return b"", self._plain(408, "body_timeout", f"request body not complete within "
                                        f"{limits.body_timeout_s} s")
            if message["type"] == "http.disconnect":  # nobody to answer (the send is a no-op); still counted
                return b"", self._plain(400, "disconnected", "connection lost before the body was complete")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if charged.bytes + len(chunk) > limits.max_body_bytes:  # chunked (uvicorn cuts one that says less)
                return b"", self._too_large_chunked(environ, charged.bytes + len(chunk))
            if not self._budget.take(len(chunk)):
                return b"", self._busy()
            charged.bytes += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks), None

    def _too_large_chunked(self, environ: dict[str, Any], seen: int) -> tuple[_Answer, bytes]:
        """The app answers an over-long chunked body as it answers a Content-Length over its limit."""
        if self._check_head is not None:
            answer = _Answer()
            result = self._check_head({**environ, "CONTENT_LENGTH": str(seen)}, answer.start_response)
            if result is not None:
                return answer, b"".join(result)
        return self._plain(413, "too_large", f"body over the limit of {self._limits.max_body_bytes} bytes")

    def _busy(self) -> tuple[_Answer, bytes]:
        answer, body = self._plain(503, "buffer_full", f"request bytes buffered over max_buffered_bytes "
                                   f"({self._limits.max_buffered_bytes}); retry later")
        answer.headers.append((b"retry-after", b"1"))
        return answer, body

    def _plain(self, status: int, reason: str, message: str) -> tuple[_Answer, bytes]:
        self._on_refused(reason, message)
        answer = _Answer()
        body = (message + "\n").encode()
        answer.start_response(f"{status} {HTTPStatus(status).phrase}",
                              [("Content-Type", "text/plain; charset=utf-8")])
        return answer, body

    @staticmethod
    async def _send(send: Callable[[dict[str, Any]], Awaitable[None]], answer: _Answer, payload: bytes,
                    close: bool = False) -> None:
        headers = [(k, v) for k, v in answer.headers if k != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        if close:  # the body was not read: closing is cheaper than reading it to find the next request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


class WSGIEndpoint:
    """``WSGIEndpoint(app, host, port, name=...).start()``; ``port`` 0 picks a free port (see ``.port``).

    The port is bound here, so a taken port fails at construction; ``start`` serves it from a daemon thread.
    """

    def __init__(self, app: WSGIApp, host: str, port: int, *, name: str, tls: TLSSettings | None = None,
                 limits: ServerLimits | None = None, check_head: HeadCheck | None = None,
                 on_refused: RefusalHook | None = None) -> None:
        self.limits = limits or ServerLimits()
        self.app = app  # what it serves (a test can call it without the server)
        self._name = name
        self.tls = tls is not None
        refused = on_refused or _log_refusal(name)
        self._socket = _listen(host, port, self.limits.backlog)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.limits.workers, thread_name_prefix=name)
        context = tls.context() if tls is not None else None
        guard = HeadGuard(self.limits.max_connections, self.limits.head_timeout_s, self.limits.max_head_bytes,
                          refused)
        config = uvicorn.Config(
            _Bridge(app, check_head, self.limits, refused, self._pool), http=guarded_protocol(guard), ws="none",
            lifespan="off", loop="asyncio", interface="asgi3", log_config=None,
            server_header=False, proxy_headers=False, timeout_keep_alive=int(max(1, self.limits.keep_alive_timeout_s)),
            timeout_graceful_shutdown=5,
            ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
            h11_max_incomplete_event_size=self.limits.max_head_bytes)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._socket.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> WSGIEndpoint:
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"{self._name}: HTTP server did not start on {self.url}")
        return self

    def _serve(self) -> None:
        _SERVER_THREADS.add(threading.get_ident())
        try:
            self._server.run(sockets=[self._socket])
        finally:
            _SERVER_THREADS.discard(threading.get_ident())

    def shutdown(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        else:
            self._socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _not_our_chatter(record: logging.LogRecord) -> bool:
    """uvicorn announces start and stop at INFO and logs a WARNING per malformed request; flowtel announces its
    endpoints itself and counts (and logs once) every refusal, so a client cannot fill the log. Only records
    from flowtel's server threads are dropped: an app's own uvicorn logs as it always did."""
    return record.levelno >= logging.ERROR or record.thread not in _SERVER_THREADS


_SERVER_THREADS: set[int | None] = set()
logging.getLogger("uvicorn.error").addFilter(_not_our_chatter)
