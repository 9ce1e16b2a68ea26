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
    from ebpflb.dataplane.userspace.proxy import Engine, FrontendRuntime
    from ebpflb.dataplane.userspace.target import Target

NEW_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class UdpSession:
    __slots__ = ("backend", "client", "created", "eng", "fd", "fe", "last_seen", "sock")

    def __init__(self, eng: Engine, fe: FrontendRuntime, client: Any,
                 backend: Target) -> None:
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
        return self.fe.conn_view("UDP", self.client, self.backend, self.created,
                                 self.last_seen, now)
