"""One relayed TCP connection of the userspace proxy: connect to a backend (a refused
or timed-out connect is retried on another active backend, up to MAX_CONNECT_ATTEMPTS),
then relay both ways with two pumps.

A pump moves bytes with recv_into (the engine's one preallocated buffer) and send,
until a read fills a whole CHUNK; from then on with `os.splice` through a pipe (socket
-> pipe -> socket, no copy through Python): short request/response flows skip the
pipe's cost, bulk flows skip the copies. It stops reading while its destination is
full (back-pressure), turns an EOF into shutdown(SHUT_WR) on the other side
(half-close), and an error (reset, broken pipe) into an abort of both sides, with a
reset sent to the client.

What a new connection costs is what the proxy's request rate is made of, so:
- accepted sockets stay in blocking mode and every recv/send passes MSG_DONTWAIT (no
  fcntl per connection; splice needs O_NONBLOCK and sets it when a flow turns bulk);
  TCP_NODELAY is inherited from the listening socket;
- a connect's outcome is read from the event mask (EPOLLERR/EPOLLHUP: failed), not
  from getsockopt(SO_ERROR); its timeout is checked by the engine's periodic tick,
  not by a timer per connection;
- once connected, the client is read at once (the request is usually there), and an
  EPOLLRDHUP in the event mask ends a direction after its last short read, without a
  read that returns 0;
- a pump holds no reference to its connection (no reference cycle to wait for the
  garbage collector).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING

from ebpflb.dataplane.userspace.reactor import ERR, HUP, IN, OUT, RDHUP
from ebpflb.dataplane.view import ConnView
from ebpflb.selection import choose_backend

if TYPE_CHECKING:
    from ebpflb.dataplane.userspace.frontend import FrontendRuntime
    from ebpflb.dataplane.userspace.proxy import Engine
    from ebpflb.dataplane.userspace.target import Target

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_CONNECT_ATTEMPTS = 3  # the first choice and two other backends
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST
DONTWAIT = socket.MSG_DONTWAIT
READ = IN | RDHUP
NEW_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class Pump:
    """One direction of a relay: src socket -> (pipe) -> dst socket."""

    __slots__ = (
        "buf",
        "dfd",
        "done",
        "dst",
        "eof",
        "pending",
        "r",
        "reading",
        "sfd",
        "src",
        "up",
        "w",
        "writing",
    )

    def __init__(
        self, src: socket.socket, dst: socket.socket, sfd: int, dfd: int, *, up: bool
    ) -> None:
        self.src, self.dst = src, dst
        self.sfd, self.dfd = sfd, dfd
        self.up = up
        self.r = self.w = -1  # the pipe, made when the flow turns out to be bulk
        self.buf: memoryview | None = None  # bytes read but not yet sent
        self.pending = 0  # bytes held (in buf, or in the pipe)
        self.reading = True
        self.eof = self.done = self.writing = False

    def close_pipe(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1

    def on_readable(self, conn: TcpConn, ev: int) -> None:
        if self.r >= 0:
            self._splice_in(conn)
            return
        eng = conn.eng
        try:
            n = self.src.recv_into(eng.buf, CHUNK, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            conn.abort()
            return
        if n == 0:
            self._eof(conn)
            return
        conn.count(self.up, n)
        data = eng.view[:n]
        try:
            m = self.dst.send(data, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            m = 0
        except OSError:
            conn.abort()
            return
        if m < n:  # the destination is full: hold the rest, stop reading
            self.buf = memoryview(bytes(data[m:]))
            self.pending = n - m
            self.reading = False
            self.writing = True
        if n == CHUNK:
            if conn.eng.config.splice:
                self._start_splice()
        elif ev & RDHUP:
            # The peer's FIN had arrived when the event was read, so a short read took
            # everything before it: the direction is over without another read.
            self._eof(conn)

    def _start_splice(self) -> None:
        try:
            self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # out of descriptors: stay on recv/send
            return
        self.src.setblocking(False)
        self.dst.setblocking(False)

    def _splice_in(self, conn: TcpConn) -> None:
        try:
            n = os.splice(self.sfd, self.w, CHUNK, flags=SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            conn.abort()
            return
        if n == 0:
            self._eof(conn)
            return
        conn.count(self.up, n)
        self.pending = n
        self.flush(conn)

    def flush(self, conn: TcpConn) -> None:
        """Send what is held; reading resumes once it is all gone."""
        while self.pending:
            try:
                if self.buf is not None:
                    m = self.dst.send(self.buf, DONTWAIT)
                    self.buf = self.buf[m:] if m < len(self.buf) else None
                else:
                    m = os.splice(self.r, self.dfd, self.pending, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                conn.abort()
                return
            self.pending -= m
        if self.pending:
            self.reading = False
            self.writing = True
            return
        self.writing = False
        if self.eof:
            self._finish(conn)
        else:
            self.reading = True

    def _eof(self, conn: TcpConn) -> None:
        self.eof = True
        self.reading = False
        if not self.pending:
            self._finish(conn)

    def _finish(self, conn: TcpConn) -> None:
        if self.done:
            return
        self.done = True
        try:  # noqa: SIM105 - per connection: cheaper than contextlib.suppress
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.pump_done()


class TcpConn:
    """A client connection: connecting to a backend, then relayed by two pumps."""

    __slots__ = (
        "backend",
        "bfd",
        "bsock",
        "caddr",
        "cfd",
        "client",
        "closed",
        "created",
        "deadline",
        "down",
        "eng",
        "fe",
        "last_seen",
        "tried",
        "up",
    )

    def __init__(
        self, eng: Engine, fe: FrontendRuntime, client: socket.socket, caddr: tuple[str, int]
    ) -> None:
        self.eng = eng
        self.fe = fe
        self.client = client
        self.cfd = client.fileno()
        self.caddr = caddr
        self.backend: Target | None = None
        self.bsock: socket.socket | None = None
        self.bfd = -1
        self.tried: tuple[Target, ...] = ()
        self.up: Pump | None = None
        self.down: Pump | None = None
        self.created = self.last_seen = eng.reactor.now
        self.deadline = 0.0
        self.closed = False

    def count(self, up: bool, n: int) -> None:
        fe = self.fe
        if up:
            fe.rx_packets += 1
            fe.rx_bytes += n
        else:
            fe.tx_packets += 1
            fe.tx_bytes += n
        eng = self.eng
        self.last_seen = eng.reactor.now
        eng.dirty = True

    # -- connecting -----------------------------------------------------------------------

    def connect(self) -> None:
        eng = self.eng
        fe = self.fe
        st = fe.state
        preferred = fe.preferred(self.caddr[0], self.caddr[1], eng.config.maglev_table_size)
        while len(self.tried) < MAX_CONNECT_ATTEMPTS:
            key = choose_backend(
                fe.slot_targets,
                client=self.caddr[0],
                affinity_timeout=st.affinity_timeout,
                exclude=self.tried,
                affinity=eng.affinity,
                frontend=fe.svc_id,
                preferred=preferred,
            )
            if key is None:
                break
            self.tried += (key,)
            try:
                s = socket.socket(key.family, NEW_STREAM)
            except OSError as exc:  # out of descriptors
                log.warning("cannot relay a connection to %s: %s", st.frontend, exc)
                break
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = s.connect_ex(key.addr)
            if err not in (0, errno.EINPROGRESS):
                s.close()
                eng.counters[
                    "nat_port_full" if err == errno.EADDRNOTAVAIL else "backend_missing"
                ] += 1
                continue
            self.backend, self.bsock, self.bfd = key, s, s.fileno()
            eng.reactor.register(self.bfd, OUT, self.on_backend)
            self.deadline = eng.reactor.now + eng.config.connect_timeout
            eng.connecting[self] = None
            return
        if not self.tried:
            eng.counters["no_backend"] += 1
        self.abort()

    def connect_failed(self) -> None:
        """The connect was refused or timed out: try another backend."""
        self.eng.connecting.pop(self, None)
        self._drop_backend_socket()
        self.eng.counters["backend_missing"] += 1
        self.backend = None
        self.connect()

    def _drop_backend_socket(self) -> None:
        if self.bsock is not None:
            self.eng.reactor.forget(self.bfd)
            self.bsock.close()
            self.bsock = None
            self.bfd = -1

    def _connected(self) -> None:
        eng = self.eng
        bsock = self.bsock
        assert bsock is not None
        del eng.connecting[self]
        assert self.backend is not None
        eng.count_new_flow(self.fe, self.caddr[0], self.backend)
        self.up = Pump(self.client, bsock, self.cfd, self.bfd, up=True)
        self.down = Pump(bsock, self.client, self.bfd, self.cfd, up=False)
        eng.reactor.register(self.cfd, 0, self.on_client)
        self.up.on_readable(self, 0)  # the request has usually arrived already
        if not self.closed:
            self._interest()

    # -- relaying ---------------------------------------------------------------------------

    def on_backend(self, ev: int) -> None:
        if self.closed:
            return
        up, down = self.up, self.down
        if up is None or down is None:  # connecting
            if ev & (ERR | HUP):
                self.connect_failed()
            elif ev & OUT:
                self._connected()
            return
        if down.reading and ev & (IN | RDHUP | ERR | HUP):
            down.on_readable(self, ev)
        if up.writing and ev & OUT and not self.closed:
            up.flush(self)
        if not self.closed:
            self._interest()

    def on_client(self, ev: int) -> None:
        if self.closed:
            return
        up, down = self.up, self.down
        assert up is not None and down is not None
        if ev & ERR:  # a reset from the client: nothing more can be sent to it
            self.close(reset=False)
            return
        if up.reading and ev & (IN | RDHUP | HUP):
            up.on_readable(self, ev)
        if down.writing and ev & OUT and not self.closed:
            down.flush(self)
        if not self.closed:
            self._interest()

    def _interest(self) -> None:
        up, down = self.up, self.down
        assert up is not None and down is not None
        modify = self.eng.reactor.modify
        modify(self.cfd, (READ if up.reading else 0) | (OUT if down.writing else 0))
        modify(self.bfd, (READ if down.reading else 0) | (OUT if up.writing else 0))

    def pump_done(self) -> None:
        up, down = self.up, self.down
        if up is not None and down is not None and up.done and down.done:
            self.close()

    # -- closing ----------------------------------------------------------------------------

    def abort(self) -> None:
        """Close both sides with a reset (a peer reset, a removed backend)."""
        self.close(reset=True)

    def close(self, *, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        eng = self.eng
        self.fe.conns.discard(self)
        eng.connecting.pop(self, None)
        eng.dirty = True
        for p in (self.up, self.down):
            if p is not None:
                p.close_pipe()
        self._drop_backend_socket()
        eng.reactor.forget(self.cfd)
        if reset:
            try:  # noqa: SIM105 - per connection: cheaper than contextlib.suppress
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.client.close()

    def view(self, now: float) -> ConnView | None:
        if self.up is None or self.backend is None:
            return None
        return self.fe.conn_view("TCP", self.caddr, self.backend, self.created, self.last_seen, now)
