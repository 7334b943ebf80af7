"""A small threaded WSGI server with optional TLS and bearer-token auth.

Used for flowtel's own HTTP endpoints (Prometheus scrape, later health and feedback), so
every endpoint gets the same security switches.
"""

from __future__ import annotations

import hmac
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flowtel._log import logger

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # when set, clients must present a certificate signed by it

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the TLS handshake or drops the connection is the client's problem: one
        # debug line, not a traceback on stderr per attempt (anyone who can connect could fill the log).
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError, TimeoutError)):
            logger.debug("connection from %s failed: %s", client_address, error)
            return
        super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # seconds a connection may stay silent; a stalled client holds only its own thread

    def log_message(self, format: str, *args: Any) -> None:
        pass


def bearer_auth(app: WSGIApp, token: str | None) -> WSGIApp:
    """Require ``Authorization: Bearer <token>``; constant-time compare; 401 otherwise."""
    if not token:
        return app
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token\n"]

    return guarded


class WSGIEndpoint:
    """``WSGIEndpoint(app, host, port).start()``; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(self, app: WSGIApp, host: str, port: int, *, name: str, tls: TLSSettings | None = None) -> None:
        self._server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        if tls is not None:
            # The handshake runs in the connection's own thread (on first read), not in accept(),
            # so a client that connects and says nothing cannot stall the listener.
            self._server.socket = tls.context().wrap_socket(self._server.socket, server_side=True,
                                                            do_handshake_on_connect=False)
        self._name = name
        self.tls = tls is not None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> WSGIEndpoint:
        self._thread = threading.Thread(target=self._server.serve_forever, name=self._name, daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
