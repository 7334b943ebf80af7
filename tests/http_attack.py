"""Raw HTTP/1.1 clients over loopback for the server attack tests: many keep-alive clients, slow heads, stalled
bodies. asyncio, so one test process holds thousands of connections without a thread each; every loop and
wait is bounded."""

from __future__ import annotations

import asyncio
import collections
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def post_bytes(path: str, body: bytes, content_type: str = "application/x-protobuf") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: collector\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), {"version": lines[0].split()[0], **headers}, body


@dataclass
class LoadResult:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    versions: collections.Counter[str] = field(default_factory=collections.Counter)


async def _keep_alive_load(url: str, clients: int, requests_each: int, body: bytes) -> LoadResult:
    host, port = host_port(url)
    path = urlsplit(url).path
    result = LoadResult()

    async def client() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            for _ in range(requests_each):
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                    result.connections += 1
                reader, writer = conn
                writer.write(post_bytes(path, body))
                status, headers, _ = await asyncio.wait_for(read_answer(reader), 60)
                result.statuses[status] += 1
                result.versions[headers["version"]] += 1
                if headers["version"] != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
                    writer.close()
                    conn = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
            result.errors.append(repr(error))
        finally:
            if conn is not None:
                conn[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return result


def keep_alive_load(url: str, clients: int, requests_each: int, body: bytes) -> LoadResult:
    """``clients`` connections at once, each sending ``requests_each`` requests one after the other on one
    connection while the server keeps it open (a new one when it closes it)."""
    return asyncio.run(_keep_alive_load(url, clients, requests_each, body))


class Holder:
    """Connections opened and held open by a background event loop, for as long as a test needs them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.closed = 0

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def open(self, url: str, n: int, first_bytes: bytes, timeout: float = 10) -> int:
        """Open ``n`` connections (100 at a time) and send ``first_bytes`` on each; returns how many opened."""
        host, port = host_port(url)
        gate = asyncio.Semaphore(100)

        async def one() -> None:
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                except (OSError, asyncio.TimeoutError):
                    return
                writer.write(first_bytes)
                await writer.drain()
                self.readers.append(reader)
                self.writers.append(writer)

        async def all_of_them() -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        before = len(self.writers)
        self.run(all_of_them())
        return len(self.writers) - before

    def answers(self, timeout: float) -> list[tuple[int, dict[str, str], bytes] | None]:
        """The answer on every held connection (``None``: closed without one, or none within ``timeout``);
        ``closed`` counts the connections the server closed without an answer."""
        self.closed = 0

        async def one(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes] | None:
            try:
                return await asyncio.wait_for(read_answer(reader), timeout)
            except asyncio.TimeoutError:  # first: it is an OSError too
                return None
            except (OSError, asyncio.IncompleteReadError):  # closed by the server (FIN, or RST with bytes unread)
                self.closed += 1
                return None

        async def all_of_them() -> list[tuple[int, dict[str, str], bytes] | None]:
            return list(await asyncio.gather(*(one(r) for r in self.readers)))

        return self.run(all_of_them())

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers, self.readers = [], []
        self.run(asyncio.sleep(0.1))  # let the closes go out

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.loop.close()


def process_status(pid: int) -> dict[str, int]:
    """Threads, resident memory (KiB) and open file descriptors of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out
