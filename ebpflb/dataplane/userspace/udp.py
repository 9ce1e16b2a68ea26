"""One UDP client of a frontend in the userspace proxy: a connected socket towards its
backend. Datagrams from the client arrive on the frontend's socket (the engine hands
them to `send`); the backend's replies arrive here and are sent back from the
frontend's socket, so they come from the frontend address and port.

Both directions go through the engine's preallocated buffer (recvfrom_into/recv_into),
one datagram per readiness event: the loop is level-triggered, so a busy socket is
simply reported again, and an idle one costs no failed read."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ebpflb.dataplane.userspace.reactor import IN
from ebpflb.dataplane.view import ConnView

if TYPE_CHECKING:
    from ebpflb.dataplane.userspace.frontend import FrontendRuntime
    from ebpflb.dataplane.userspace.proxy import Engine
    from ebpflb.dataplane.userspace.target import Target

NEW_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

# A frontend socket's receive buffer (bytes asked for; the kernel doubles it for its
# bookkeeping). The engine is one Python thread that reads one datagram per readiness
# event, so a burst waits in this buffer, and each datagram costs its truesize there
# (~0.8 KiB for 100 bytes on loopback, ~2.3 KiB for 1,400): the default
# net.core.rmem_default of 208 KiB held a few hundred, and a 2,000-datagram burst lost
# 48-62% (100 B) and 72% (1,400 B). 4 MiB (8 MiB charged) holds 2,000 datagrams of
# 1,400 bytes with room to spare: a burst lost none. The memory is used only while
# datagrams queue (and net.ipv4.udp_mem bounds all UDP sockets together).
FRONTEND_RCVBUF = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def frontend_socket(family: int) -> socket.socket:
    """A UDP frontend's socket with a receive buffer for bursts: FRONTEND_RCVBUF past
    net.core.rmem_max (SO_RCVBUFFORCE, CAP_NET_ADMIN, which the agent holds), else as
    much as rmem_max allows."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, FRONTEND_RCVBUF)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FRONTEND_RCVBUF)
    return s


class UdpSession:
    __slots__ = ("backend", "client", "created", "eng", "fd", "fe", "last_seen", "sock")

    def __init__(self, eng: Engine, fe: FrontendRuntime, client: Any, backend: Target) -> None:
        self.eng, self.fe, self.client, self.backend = eng, fe, client, backend
        self.sock = socket.socket(backend.family, NEW_DGRAM)
        try:
            self.sock.connect(backend.addr)
        except OSError:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        self.created = self.last_seen = eng.reactor.now
        eng.reactor.register(self.fd, IN, self.on_reply)

    def on_reply(self, _ev: int) -> None:
        eng = self.eng
        try:
            n = self.sock.recv_into(eng.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # an ICMP error (port unreachable ...) from the backend
            eng.counters["icmp_error"] += 1
            eng.dirty = True
            return
        fe = self.fe
        fe.tx_packets += 1
        fe.tx_bytes += n
        eng.counters["reply"] += 1
        eng.dirty = True
        sock = fe.sock
        if sock is None:
            return
        try:  # noqa: SIM105 - per datagram: cheaper than contextlib.suppress
            sock.sendto(eng.view[:n], self.client)
        except OSError:
            pass

    def close(self) -> None:
        self.eng.reactor.forget(self.fd)
        self.sock.close()

    def view(self, now: float) -> ConnView:
        return self.fe.conn_view(
            "UDP", self.client, self.backend, self.created, self.last_seen, now
        )
