"""Say which port is taken and what moves it, instead of a bare ``[Errno 98] Address already in use``.

The collector checks every port its config listens on before it binds any (``flowtel collector``),
so the message names the config key, and grpcio never prints its own raw error line.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """A listener's port is already taken; ``str()`` names the address and the setting that moves it."""

    def __init__(self, address: str, what: str, move: str) -> None:
        super().__init__(errno.EADDRINUSE, f"cannot listen on {address} ({what}): the port is already in use "
                                           f"(another flowtel, or another program?); {move}")
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


def in_use(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno == errno.EADDRINUSE


def ensure_free(host: str, port: int) -> None:
    """Raise ``OSError(EADDRINUSE)`` if something listens on ``host:port``. grpcio, told to bind a taken
    port, only returns port 0 and prints a raw C-core error line of its own."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an unresolvable host: grpcio's own bind reports it
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # Same options as a server: a port left in TIME_WAIT is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if in_use(error):
                    raise OSError(errno.EADDRINUSE, f"address already in use: {host}:{port}") from None
