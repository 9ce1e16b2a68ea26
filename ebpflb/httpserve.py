"""A small HTTP server for the agent's operational endpoints (``/healthz``, ``/livez``,
``/metrics``): GET and HEAD on fixed paths, one response per connection.

It is bounded so that nobody who can reach the port can exhaust the agent: at most
``max_connections`` connections are served at once, and at most ``per_client`` from one
address (one more is closed as soon as it is accepted, so a slowloris from one pod
cannot starve the checker of a load balancer at another address), a client has
``read_timeout`` seconds to send its request head, and the head may be at most
``MAX_HEAD`` bytes. A slowloris therefore holds at most ``max_connections``
descriptors, each for at most ``read_timeout`` seconds. ``ConnectionGuard`` is that
admission rule, shared with the health-check listeners (agent.healthcheck).

The server runs an asyncio loop in a daemon thread of its own, so the agent's sync
loop never waits for it; a handler runs on that thread and must be quick (a scrape
reads a few maps). Generic: it knows nothing of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # bytes of request head read at most
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_PER_CLIENT = 8
DEFAULT_READ_TIMEOUT = 3.0  # seconds a client may take to send its request head
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[], Response]


def encode(resp: Response, method: bytes) -> bytes:
    """``resp`` as one HTTP/1.1 response that closes the connection (the head alone
    for HEAD)."""
    head = (
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}\r\n"
        f"Content-Type: {resp.content_type}\r\nX-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (resp.body if method != b"HEAD" else b"")


def parse_bind_address(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as kube-proxy's --healthz-bind-address
    and --metrics-bind-address take it; None (disabled) for an empty value or port 0.
    Raises ValueError for anything else."""
    value = value.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return None if port == 0 else (host, port)


class ConnectionGuard:
    """Admission of connections: at most ``max_connections`` at once over every
    listener that shares the guard, at most ``per_client`` from one address. Used on
    one event loop's thread only."""

    def __init__(
        self, max_connections: int = DEFAULT_MAX_CONNECTIONS, per_client: int = DEFAULT_PER_CLIENT
    ) -> None:
        self.max_connections = max_connections
        self.per_client = per_client
        self.active = 0
        self.refused = 0  # connections closed at once, over a bound
        self._by_client: dict[str, int] = {}

    def admit(self, writer: asyncio.StreamWriter) -> str | None:
        """The client's key when the connection may be served (release it after);
        None when it must be closed at once."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        if self.active >= self.max_connections or self._by_client.get(client, 0) >= self.per_client:
            self.refused += 1
            return None
        self.active += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return client

    def release(self, client: str) -> None:
        self.active -= 1
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]


async def serve_one(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    guard: ConnectionGuard,
    read_timeout: float,
    respond: Callable[[bytes], bytes],
) -> None:
    """One connection under ``guard``: read the request head within ``read_timeout``,
    write ``respond(head)`` within it too, close. Never raises."""
    client = guard.admit(writer)
    try:
        if client is None:
            return  # over a bound: no descriptor is held for this client
        try:
            async with asyncio.timeout(read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(respond(head))
            async with asyncio.timeout(read_timeout):
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away, was too slow, or sent too much
        finally:
            guard.release(client)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


class HttpServer:
    """Serves ``routes`` (path -> handler) on one address, in a thread of its own."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Handler],
        *,
        name: str = "ebpflb-http",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        per_client: int = DEFAULT_PER_CLIENT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.host, self.port = host, port
        self.routes = dict(routes)
        self.name = name
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.guard = ConnectionGuard(max_connections, per_client)  # the loop's thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        """Listen (raises OSError when the address cannot be bound); with port 0, a
        free port is chosen and ``port`` says which."""
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._serve,
                    self.host,
                    self.port,
                    limit=MAX_HEAD,
                    reuse_address=True,
                    backlog=self.max_connections,
                )
            )
        except BaseException:
            loop.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def close(self) -> None:
        """Stop listening and the thread (idempotent)."""
        loop, thread, server = self._loop, self._thread, self._server
        self._loop = self._thread = self._server = None
        if loop is None or thread is None or server is None:
            return

        async def shut() -> None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    @property
    def active(self) -> int:
        """Connections being served now."""
        return self.guard.active

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_one(reader, writer, self.guard, self.read_timeout, self._respond)

    def _respond(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        method = parts[0]
        path = parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) > 1 else ""
        handler = self.routes.get(path)
        if method not in (b"GET", b"HEAD"):
            resp = Response(405, b"", "text/plain")
        elif handler is None:
            resp = Response(404, b"404 page not found\n", "text/plain")
        else:
            try:
                resp = handler()
            except Exception as exc:  # a handler's failure is one 500, never the server's
                log.warning("%s %s: %s", self.name, path, exc)
                resp = Response(500, f"{exc}\n".encode(), "text/plain")
        return encode(resp, method)
