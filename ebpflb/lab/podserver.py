"""The server every lab backend pod runs: HTTP/1.1 on TCP and a UDP echo, both
answering with the pod's name, so a client can tell which backend it reached.

Raw asyncio protocols rather than http.server: a Python HTTP framework costs about
half a millisecond a request and would hide the load balancer's cost in benchmarks.
The HTTP side understands just enough (request head, Content-Length body,
keep-alive, ``Connection: close``) for curl, benchmark tools and the lab's clients.

It listens on both families: one IPv4 and one IPv6-only socket per protocol (not a
single dual-stack one, whose IPv4 peers would show as ``::ffff:a.b.c.d`` in ``whoami``
answers). Where the kernel has no IPv6, it serves IPv4 alone and says so.

Run as ``python -m ebpflb.lab.podserver --name pod-1 --http-port 8080 --udp-port 9090``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import socket
import sys
from typing import cast

MAX_HEAD = 64 * 1024


def _response(body: bytes, *, close: bool) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: answers each complete request in order."""

    def __init__(self, body: bytes) -> None:
        self._keep = _response(body, close=False)
        self._close = _response(body, close=True)
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        while self._buf:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._transport.close()
                return
            close, body_len = _parse_head(self._buf[:end])
            if body_len < 0:
                self._transport.close()
                return
            total = end + 4 + body_len
            if len(self._buf) < total:
                return
            self._buf = self._buf[total:]
            self._transport.write(self._close if close else self._keep)
            if close:
                self._transport.close()
                return

    def eof_received(self) -> bool:
        return False  # the client closed: close our side too


def _parse_head(head: bytes) -> tuple[bool, int]:
    """(close after answering, request body length); a length of -1 means malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    version = parts[2] if len(parts) == 3 else b"HTTP/1.0"
    connection = b""
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"connection":
            connection = value.strip().lower()
        elif name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True, -1
    close = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
    return close, max(length, -1)


WHOAMI = b"whoami"


class UdpEcho(asyncio.DatagramProtocol):
    """Answers every datagram with the pod's name, to the sender; a datagram saying
    ``whoami`` also gets the sender's address as this pod saw it ("pod-1 10.0.0.5"),
    which shows whether a load balancer kept the client's source address."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        assert self._transport is not None
        if data == WHOAMI:
            body = self._body.rstrip(b"\n") + f" {addr[0]!s}\n".encode()
            self._transport.sendto(body, addr)
            return
        self._transport.sendto(self._body, addr)


ALL_HOSTS = ("0.0.0.0", "::")


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _usable(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """``hosts`` less the IPv6 ones when this kernel has no IPv6."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError as exc:
        if exc.errno != errno.EAFNOSUPPORT:
            raise
        print("podserver: no IPv6 in this kernel; IPv4 only", flush=True)
        return tuple(h for h in hosts if ":" not in h)
    return hosts


async def serve(
    name: str, *, http_port: int, udp_port: int, hosts: tuple[str, ...] = ALL_HOSTS
) -> None:
    """Serve on every address of ``hosts`` until SIGTERM or SIGINT."""
    body = f"{name}\n".encode()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    hosts = _usable(hosts)
    udps = [
        (await loop.create_datagram_endpoint(lambda: UdpEcho(body), sock=_udp_socket(h, udp_port)))[
            0
        ]
        for h in hosts
    ]
    # create_server makes an IPv6 listener IPv6-only, so the two never clash.
    server = await loop.create_server(
        lambda: HttpProtocol(body), list(hosts), http_port, reuse_address=True, backlog=1024
    )
    print(
        f"podserver {name}: http tcp/{http_port} udp echo udp/{udp_port} on {' '.join(hosts)}",
        flush=True,
    )
    try:
        await stop
    finally:
        server.close()
        for udp in udps:
            udp.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ebpflb.lab.podserver", description=__doc__)
    parser.add_argument("--name", required=True, help="the pod name every answer carries")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--udp-port", type=int, default=9090)
    parser.add_argument(
        "--host",
        action="append",
        help="an address to listen on (repeatable; default: 0.0.0.0 and ::)",
    )
    args = parser.parse_args(argv)
    hosts = tuple(args.host) if args.host else ALL_HOSTS
    try:
        asyncio.run(serve(args.name, http_port=args.http_port, udp_port=args.udp_port, hosts=hosts))
    except OSError as exc:
        print(f"podserver {args.name}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
