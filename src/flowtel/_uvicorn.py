"""The one place flowtel leans on uvicorn's internals: its httptools protocol class, extended with the
slow-client protection uvicorn lacks (a connection cap, a deadline and a size bound on the request head).

uvicorn takes a protocol class as a public setting (``Config(http=...)``); what the subclass overrides
(``connection_made``, ``data_received``, ``on_headers_complete``, ``on_response_complete``) and reads
(``connections``, ``transport``, ``loop``, ``cycle``) is not documented API. ``tests/test_http_server.py``
checks that they are still there, so an upgrade that moves them fails loudly instead of silently
dropping the protection.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: What the subclass relies on; checked by the tests.
OVERRIDDEN = ("connection_made", "data_received", "on_headers_complete", "on_response_complete", "connection_lost",
              "eof_received", "send_400_response")
#: Attributes of uvicorn's protocol instances read here.
READ = ("connections", "transport", "loop", "cycle", "pipeline", "access_log")
#: Attributes of uvicorn's request cycle read or set here.
CYCLE = ("more_body", "keep_alive", "response_complete", "message_event", "transport")


@dataclass(frozen=True, slots=True)
class HeadGuard:
    max_connections: int
    head_timeout_s: float
    max_head_bytes: int
    #: ``(reason, detail)`` for every refused connection or request (counted and logged by the caller).
    on_refused: Callable[[str, str], None]


def _answer_and_close(transport: asyncio.BaseTransport, status: bytes, message: str, linger: Any = None) -> None:
    """Answer and close (after the buffered answer is written); with ``linger`` (the protocol), the client may still
    be sending: FIN first, discard what arrives, close after ``LINGER_S`` (see ``_LingeringClose``)."""
    body = message.encode() + b"\n"
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n"
                    + (b"retry-after: 1\r\n" if status.startswith(b"503") else b"") + b"\r\n" + body)
    if linger is not None and transport.can_write_eof():
        linger.lingering = True
        transport.write_eof()
        linger.loop.call_later(LINGER_S, transport.close)
    else:
        transport.close()


#: Seconds an answered connection keeps discarding a request body it did not read before it closes.
LINGER_S = 2.0


class _LingeringClose:
    """The transport as a request cycle sees it. uvicorn closes the connection right after an answer that says
    ``connection: close``; when the client is still sending a body the server did not read (an early 413 or 503),
    that close makes the kernel reset the connection, which can destroy the answer before the client reads it.
    Instead the server sends FIN, discards what still arrives for up to ``LINGER_S``, then closes."""

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        protocol, transport = self._protocol, self._transport
        if protocol.cycle is not None and protocol.cycle.more_body and transport.can_write_eof():
            protocol.lingering = True
            transport.write_eof()
            protocol.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


def guarded_protocol(guard: HeadGuard) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing ``guard``."""

    #: Connections waiting for a request head, oldest first (one endpoint's; touched only from its event loop).
    waiting: OrderedDict[Any, None] = OrderedDict()

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _awaiting_head = True
        lingering = False

        # uvicorn's signature, narrower than asyncio's BaseProtocol (whose is BaseTransport).
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # No access log line per request (uvicorn's Config(access_log=False) would instead silence the
            # "uvicorn.access" logger for the whole process, an app's own uvicorn included).
            self.access_log = False
            if len(self.connections) > guard.max_connections and not self._evict_one():
                # Answered, not just dropped: OTLP clients retry a 503 with Retry-After.
                guard.on_refused("too_many_connections",
                                 f"more than max_connections ({guard.max_connections}) open connections")
                _answer_and_close(transport, b"503 Service Unavailable", "too many connections; retry later")
                return
            self._start_head_timer()

        def _evict_one(self) -> bool:
            """At the cap, the connection waiting longest for a request head (idle or slow) makes room: a flood
            of slow clients churns through its own connections instead of locking out the good ones."""
            while waiting:
                victim, _ = waiting.popitem(last=False)
                if not victim.transport.is_closing():
                    victim._stop_head_timer()
                    if victim._head_bytes:
                        guard.on_refused("evicted_slow_head", "a connection still sending its request head was "
                                         f"closed to make room (max_connections {guard.max_connections})")
                    victim.transport.close()
                    return True
            return False

        def _start_head_timer(self) -> None:
            self._awaiting_head, self._head_bytes = True, 0
            self._head_timer = self.loop.call_later(guard.head_timeout_s, self._head_too_slow)
            waiting[self] = None
            waiting.move_to_end(self)

        def _stop_head_timer(self) -> None:
            self._awaiting_head = False
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            waiting.pop(self, None)
            if not self.transport.is_closing():
                if self._head_bytes:  # a connection that sent nothing is just idle: closed without a word
                    guard.on_refused("head_timeout", f"request head not complete within {guard.head_timeout_s} s")
                    _answer_and_close(self.transport, b"408 Request Timeout",
                                      f"request head not complete within {guard.head_timeout_s} s")
                else:
                    self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return  # the rest of a body that was answered without being read
            if self._awaiting_head:
                if self._head_timer is None:  # the next request on a kept-alive connection: its clock starts now
                    self._start_head_timer()
                self._head_bytes += len(data)
                if self._head_bytes > guard.max_head_bytes and not self._head_ends_within(data):
                    self._stop_head_timer()
                    guard.on_refused("head_too_large", f"request head over {guard.max_head_bytes} bytes")
                    _answer_and_close(self.transport, b"431 Request Header Fields Too Large",
                                      f"request head over {guard.max_head_bytes} bytes", linger=self)
                    return
            super().data_received(data)

        def _head_ends_within(self, data: bytes) -> bool:
            """The head ends in this chunk within the bound (the rest of the chunk is body)."""
            end = data.find(b"\r\n\r\n")
            return end >= 0 and self._head_bytes - len(data) + end + 4 <= guard.max_head_bytes

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            super().on_headers_complete()
            if self.cycle is not None:
                # A proxy to the transport (__getattr__), not a Transport subclass: Transport's methods would
                # shadow the transport's own.
                self.cycle.transport = _LingeringClose(self.transport, self)  # type: ignore[assignment]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.lingering or self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
                return  # the next request's head is already in (pipelined)
            # The next head's clock starts with its first byte (data_received); until then the connection is
            # idle (uvicorn's keep-alive timeout closes it), and the first to go when the cap is reached.
            self._awaiting_head, self._head_bytes = True, 0
            waiting[self] = None

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to bytes that are not HTTP: counted (and logged once) like every refusal.
            guard.on_refused("bad_http", msg)
            super().send_400_response(msg)

        def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's signature; uvicorn's says None
            if self.lingering:
                self.transport.close()
                return None
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete:
                # The client closed its side mid-body: the body ends short, the app answers that (400, counted),
                # and the connection closes after the answer, which the client can still read.
                cycle.more_body = False
                cycle.keep_alive = False
                cycle.message_event.set()
                return True
            super().eof_received()
            return None  # asyncio closes the transport

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

    return GuardedProtocol


def private_api_present() -> list[str]:
    """The names this module needs from uvicorn's protocol class that are missing (empty when all are there)."""
    probe: Any = HttpToolsProtocol
    return [name for name in OVERRIDDEN if not callable(getattr(probe, name, None))]
