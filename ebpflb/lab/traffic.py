"""Clients for lab traffic, run in-process from tests: every socket is opened inside
a lab namespace with ``netns.enter`` and then used from the caller's thread.

Every call has a timeout; a failure raises ``OSError`` (``TimeoutError``,
``ConnectionRefusedError`` ...) as a plain socket would. A test that expects traffic
to fail says how with ``fails(Failure.X)``: any ``OSError`` would also pass for a
typo in an address or a lab that is not up.
The answers are the pod servers' bodies, i.e. the name of the pod that answered.

Addresses of either family are accepted (``IPv4Address``, ``IPv6Address`` or their
text, without brackets); a socket of the address's family is opened, and an HTTP
``Host`` header names an IPv6 address as ``[addr]:port``. Answers' source addresses
are returned as the socket reports them (IPv6 without its flow info and scope).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import socket
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import TracebackType
from typing import BinaryIO

from ebpflb.lab import netns

MAX_BODY = 64 * 1024

Address = str | IPv4Address | IPv6Address


def _addr(addr: Address) -> str:
    return str(addr).strip("[]")


def family_of(addr: Address) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address, AF_INET for anything else (a bad address then
    fails where it is used, as before)."""
    if isinstance(addr, str):
        try:
            addr = ip_address(addr.strip("[]"))
        except ValueError:
            return socket.AF_INET
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def host_port(addr: Address, port: int) -> str:
    """``addr:port``, or ``[addr]:port`` for IPv6, as a URL or a Host header has it."""
    text = _addr(addr)
    return f"[{text}]:{port}" if family_of(addr) == socket.AF_INET6 else f"{text}:{port}"


class Failure(enum.Enum):
    """How a request failed, as the client's socket saw it."""

    REFUSED = "refused"  # a RST answered the SYN; for UDP, an ICMP port unreachable
    RESET = "reset"  # the connection was reset or closed before a whole answer
    TIMEOUT = "timed out"  # nothing answered: the packets were dropped
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable, or no route


_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})


def failure_of(exc: OSError) -> Failure | None:
    """The Failure an exception of this module's calls means; None for any other error
    (a bad address, a missing namespace ...)."""
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return Failure.REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Failure.RESET
    if exc.errno in _UNREACHABLE:
        return Failure.UNREACHABLE
    return None


@contextlib.contextmanager
def fails(*expected: Failure) -> Iterator[None]:
    """Assert that the block fails the way ``expected`` says (one of them), as
    ``pytest.raises`` would, but by meaning: an ``OSError`` of another kind, or no
    error at all, is an ``AssertionError`` that names both."""
    want = " or ".join(f.value for f in expected)
    try:
        yield
    except OSError as exc:
        got = failure_of(exc)
        if got not in expected:
            raise AssertionError(
                f"expected the request to be {want}, but it raised {type(exc).__name__}: {exc}"
            ) from exc
    else:
        raise AssertionError(f"expected the request to be {want}, but it succeeded")


def _connect(ns: str, addr: Address, port: int, timeout: float) -> socket.socket:
    sock = netns.socket_in(ns, family_of(addr), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((_addr(addr), port))
    except BaseException:
        sock.close()
        raise
    return sock


def _request(addr: Address, port: int, *, close: bool) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET / HTTP/1.1\r\nHost: {host_port(addr, port)}\r\n{conn}\r\n".encode()


def _read_response(reader: BinaryIO) -> str:
    """Read one HTTP response (status line, headers, Content-Length body)."""
    status = reader.readline(MAX_BODY)
    if not status:
        raise ConnectionResetError("connection closed before a response")
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        raise ConnectionError(f"unexpected HTTP status line {status!r}")
    length = -1
    while True:
        line = reader.readline(MAX_BODY)
        if not line:
            raise ConnectionResetError("connection closed inside the response head")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = reader.read(length) if length >= 0 else reader.read(MAX_BODY)
    if length >= 0 and len(body) != length:
        raise ConnectionResetError("connection closed inside the response body")
    return body.decode()


def http_get(ns: str, addr: Address, port: int, *, timeout: float = 2.0) -> str:
    """One request on a new TCP connection from namespace ``ns``; returns the body."""
    with _connect(ns, addr, port, timeout) as sock, sock.makefile("rb") as reader:
        sock.sendall(_request(addr, port, close=True))
        return _read_response(reader)


def udp_request(
    ns: str, addr: Address, port: int, payload: bytes = b"x", *, timeout: float = 1.0
) -> tuple[str, tuple[str, int]]:
    """Send one datagram from a new, unconnected socket in ``ns``; returns the answer
    and the (address, port) it came from, which shows whether replies are translated
    back to the address the client asked."""
    with netns.socket_in(ns, family_of(addr), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (_addr(addr), port))
        data, src = sock.recvfrom(MAX_BODY)
        return data.decode(), (src[0], src[1])


def spread_tcp(
    ns: str, addr: Address, port: int, count: int, *, timeout: float = 2.0
) -> Counter[str]:
    """``count`` HTTP requests, each on a new connection: how many each pod answered."""
    return Counter(http_get(ns, addr, port, timeout=timeout) for _ in range(count))


def spread_udp(
    ns: str, addr: Address, port: int, count: int, *, timeout: float = 1.0
) -> Counter[str]:
    """``count`` UDP requests, each from a new socket (a new source port)."""
    return Counter(udp_request(ns, addr, port, timeout=timeout)[0] for _ in range(count))


class KeepAliveClient:
    """One TCP connection carrying several HTTP requests, to show that a long-lived
    connection keeps its backend while the service changes."""

    def __init__(self, ns: str, addr: Address, port: int, *, timeout: float = 2.0) -> None:
        self._addr = addr
        self._port = port
        self.sock = _connect(ns, addr, port, timeout)
        self._reader = self.sock.makefile("rb")

    @property
    def local_port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def get(self) -> str:
        """Send one request on the connection and return the body."""
        self.sock.sendall(_request(self._addr, self._port, close=False))
        return _read_response(self._reader)

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class UdpSession:
    """One UDP socket (one source port) for several requests, to show that a UDP
    flow keeps its backend."""

    def __init__(self, ns: str, addr: Address, port: int, *, timeout: float = 1.0) -> None:
        self._dest = (_addr(addr), port)
        family = family_of(addr)
        self.sock = netns.socket_in(ns, family, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))

    @property
    def local_port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def request(self, payload: bytes = b"x") -> tuple[str, tuple[str, int]]:
        """Send one datagram; returns the answer and the (address, port) it came from."""
        self.sock.sendto(payload, self._dest)
        data, src = self.sock.recvfrom(MAX_BODY)
        return data.decode(), (src[0], src[1])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
