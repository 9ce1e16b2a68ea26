"""The proxy engine: one asyncio event loop in its own thread owns every socket, and
every change to the frontends runs on that loop, so a connection never sees a
half-applied change.

Per TCP frontend a listening socket accepts, picks a backend with ebpflb.selection,
connects (a refused or timed-out connect is retried on another active backend, up to
MAX_CONNECT_ATTEMPTS), then relays both ways with two pumps. A pump moves bytes with
recv/send until a read fills a whole CHUNK, then with `os.splice` through a pipe
(socket -> pipe -> socket, no copy through Python): short request/response flows skip
the pipe's cost, bulk flows skip the copies. It stops reading while its destination
is full (back-pressure), turns an EOF into shutdown(SHUT_WR) on the other side
(half-close), and an error (reset, broken pipe) into an abort of both sides, with a
reset sent to the peer.

Per UDP frontend one socket bound to the frontend address receives datagrams; a
session table maps each client (address, port) to a connected socket towards its
backend, and replies are sent back from the frontend's own socket, so they come from
the frontend address and port. Sessions expire when idle and the table is bounded
(least recently used evicted). A session whose backend left the frontend moves to a
live backend at its next datagram, as the kernel path's conntrack does.

Counters and the flow table are plain attributes touched only by the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ebpflb.dataplane.userspace.device import DEVICE_NAME, DummyDevice
from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.errors import DataplaneError
from ebpflb.model import IPAddress, Protocol
from ebpflb.selection import choose_backend
from ebpflb.sync.plan import BackendKey, FrontendKey, FrontendState

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 64 * 1024
LISTEN_BACKLOG = 4096
ACCEPT_BATCH = 64  # accepts (or datagrams) handled per readiness event
MAX_CONNECT_ATTEMPTS = 3  # the first choice and two other backends
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
IP_FREEBIND = 15
CLONE_NEWNET = 0x40000000
LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST

# The same global counter names as the kernel path (ebpflb_gstat), so `stats --json`
# has the same keys. In userspace: new_flow = a TCP connection relayed or a UDP
# session made; ct_hit = a datagram on an existing session; reselect = a UDP session
# moved because its backend left; reply = a datagram from a backend to its client;
# no_backend = a connection or datagram refused for want of an active backend;
# backend_missing = a connect to a backend that failed (refused, timed out);
# fragment = 0 (the kernel reassembles); ct_full = a UDP session evicted by the bound.
COUNTERS = ("new_flow", "ct_hit", "reselect", "reply", "no_backend", "backend_missing",
            "fragment", "ct_full")


@dataclass(frozen=True)
class EngineConfig:
    netns: str | None = None  # a netns file to enter in the loop thread (tests); None: ours
    device: str = DEVICE_NAME
    udp_idle_timeout: float = 30.0
    max_udp_sessions: int = 10_000
    connect_timeout: float = 5.0
    splice: bool = True
    tick: float = 0.5  # seconds between upkeep passes (UDP expiry, state publishing)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise DataplaneError(f"setns into {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class _Frontend:
    """One frontend's runtime: its state, ids, socket, flows and counters."""

    def __init__(self, state: FrontendState, svc_id: int) -> None:
        self.state = state
        self.svc_id = svc_id
        self.backend_ids: dict[BackendKey, int] = {}
        self.sock: socket.socket | None = None
        self.conns: set[_TcpConn] = set()
        self.sessions: OrderedDict[tuple[str, int], _UdpSession] = OrderedDict()
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0

    @property
    def key(self) -> FrontendKey:
        return self.state.frontend.key

    def has_backend(self, key: BackendKey) -> bool:
        return key in self.backend_ids


class _Pump:
    """One direction of a TCP relay: src socket -> (pipe) -> dst socket."""

    __slots__ = ("buf", "conn", "dfd", "done", "dst", "eof", "pending", "r", "reading",
                 "sfd", "splice", "src", "up", "w", "writing")

    def __init__(self, conn: _TcpConn, src: socket.socket, dst: socket.socket, *, up: bool,
                 splice: bool) -> None:
        self.conn = conn
        self.src, self.dst = src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.up = up
        # The pipe is made when the flow turns out to be bulk (a read fills CHUNK):
        # a short request/response is cheaper with recv/send than with a pipe's setup.
        self.splice = splice
        self.r = self.w = -1
        self.buf: memoryview | None = None
        self.pending = 0
        self.eof = self.done = self.reading = self.writing = False

    def start(self) -> None:
        self.conn.loop.add_reader(self.sfd, self.on_readable)
        self.reading = True

    def close_pipe(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1

    def on_readable(self) -> None:
        try:
            if self.r >= 0:
                n = os.splice(self.sfd, self.w, CHUNK, flags=SPLICE_FLAGS)
            else:
                data = self.src.recv(CHUNK)
                n = len(data)
                self.buf = memoryview(data)
                if n == CHUNK and self.splice:
                    self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.conn.abort()
            return
        if n == 0:
            self.eof = True
            if self.reading:
                self.conn.loop.remove_reader(self.sfd)
                self.reading = False
            self.flush()
            return
        self.pending = n
        self.conn.count(self.up, n)
        self.flush()

    def flush(self) -> None:
        loop = self.conn.loop
        while self.pending:
            try:
                if self.buf is None:
                    m = os.splice(self.r, self.dfd, self.pending, flags=SPLICE_FLAGS)
                else:
                    assert self.buf is not None
                    m = self.dst.send(self.buf)
                    self.buf = self.buf[m:]
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.conn.abort()
                return
            self.pending -= m
        if self.pending:
            if self.reading:
                loop.remove_reader(self.sfd)
                self.reading = False
            if not self.writing:
                loop.add_writer(self.dfd, self.flush)
                self.writing = True
            return
        self.buf = None
        if self.writing:
            loop.remove_writer(self.dfd)
            self.writing = False
        if self.eof:
            if not self.done:
                self.done = True
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                self.conn.pump_done()
        elif not self.reading:
            loop.add_reader(self.sfd, self.on_readable)
            self.reading = True


class _TcpConn:
    """A client connection: connecting to a backend, then relayed by two pumps."""

    def __init__(self, eng: Engine, fe: _Frontend, client: socket.socket,
                 caddr: tuple[str, int]) -> None:
        self.eng = eng
        self.loop = eng.loop
        self.fe = fe
        self.client = client
        self.caddr = caddr
        self.backend: BackendKey | None = None
        self.bsock: socket.socket | None = None
        self.tried: set[BackendKey] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.pumps: tuple[_Pump, _Pump] | None = None
        self.created = self.last_seen = time.monotonic()
        self.closed = False

    def count(self, up: bool, n: int) -> None:
        fe = self.fe
        if up:
            fe.rx_packets += 1
            fe.rx_bytes += n
        else:
            fe.tx_packets += 1
            fe.tx_bytes += n
        self.last_seen = time.monotonic()
        self.eng.dirty = True

    def connect(self) -> None:
        while len(self.tried) < MAX_CONNECT_ATTEMPTS:
            st = self.fe.state
            key = choose_backend(st.slots, client=None, affinity_timeout=st.affinity_timeout,
                                 exclude=self.tried)
            if key is None:
                break
            self.tried.add(key)
            s = socket.socket(socket.AF_INET if key[0].version == 4 else socket.AF_INET6,
                              socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = s.connect_ex((str(key[0]), key[1]))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                self.eng.counters["backend_missing"] += 1
                continue
            self.backend, self.bsock = key, s
            self.loop.add_writer(s.fileno(), self._connected)
            self.timer = self.loop.call_later(self.eng.config.connect_timeout,
                                              self._connect_failed)
            return
        if not self.tried:
            self.eng.counters["no_backend"] += 1
        self.abort()

    def _drop_backend_socket(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.bsock is not None:
            self.loop.remove_writer(self.bsock.fileno())
            self.bsock.close()
            self.bsock = None

    def _connect_failed(self) -> None:
        self.timer = None
        self._drop_backend_socket()
        self.eng.counters["backend_missing"] += 1
        self.backend = None
        self.connect()

    def _connected(self) -> None:
        assert self.bsock is not None
        err = self.bsock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.remove_writer(self.bsock.fileno())
        splice = self.eng.config.splice
        try:
            self.pumps = (_Pump(self, self.client, self.bsock, up=True, splice=splice),
                          _Pump(self, self.bsock, self.client, up=False, splice=splice))
        except OSError as exc:  # out of fds for the pipes
            log.warning("cannot relay %s: %s", self.fe.state.frontend, exc)
            self.abort()
            return
        self.eng.counters["new_flow"] += 1
        self.eng.dirty = True
        for p in self.pumps:
            p.start()

    def pump_done(self) -> None:
        if self.pumps is not None and all(p.done for p in self.pumps):
            self.close()

    def abort(self) -> None:
        """Close both sides with a reset (a peer reset, a removed backend)."""
        self.close(reset=True)

    def close(self, *, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.fe.conns.discard(self)
        self.eng.dirty = True
        if self.pumps is not None:
            for p in self.pumps:
                if p.reading:
                    self.loop.remove_reader(p.sfd)
                if p.writing:
                    self.loop.remove_writer(p.dfd)
                p.close_pipe()
        self._drop_backend_socket()
        if reset:
            with contextlib.suppress(OSError):
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.client.close()

    def view(self, now: float) -> ConnView | None:
        if self.pumps is None or self.backend is None:
            return None
        fe = self.fe
        front = fe.state.frontend
        return ConnView("TCP", _ip(self.caddr[0]), self.caddr[1], front.address, front.port,
                        self.backend[0], self.backend[1], fe.backend_ids.get(self.backend, 0),
                        fe.svc_id, str(fe.state.port_name), now - self.created,
                        now - self.last_seen)


class _UdpSession:
    """One UDP client of a frontend: a connected socket towards its backend."""

    __slots__ = ("backend", "client", "created", "eng", "fe", "last_seen", "sock")

    def __init__(self, eng: Engine, fe: _Frontend, client: tuple[str, int],
                 backend: BackendKey) -> None:
        self.eng, self.fe, self.client, self.backend = eng, fe, client, backend
        fam = socket.AF_INET if backend[0].version == 4 else socket.AF_INET6
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((str(backend[0]), backend[1]))
        except OSError:
            self.sock.close()
            raise
        self.created = self.last_seen = time.monotonic()
        eng.loop.add_reader(self.sock.fileno(), self.on_reply)

    def on_reply(self) -> None:
        fe = self.fe
        for _ in range(ACCEPT_BATCH):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from the backend, etc.
                return
            fe.tx_packets += 1
            fe.tx_bytes += len(data)
            self.eng.counters["reply"] += 1
            self.eng.dirty = True
            if fe.sock is None:
                return
            try:  # noqa: SIM105 - per datagram: cheaper than contextlib.suppress
                fe.sock.sendto(data, self.client)
            except OSError:
                pass

    def close(self) -> None:
        self.eng.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def view(self, now: float) -> ConnView:
        fe = self.fe
        front = fe.state.frontend
        return ConnView("UDP", _ip(self.client[0]), self.client[1], front.address, front.port,
                        self.backend[0], self.backend[1], fe.backend_ids.get(self.backend, 0),
                        fe.svc_id, str(fe.state.port_name), now - self.created,
                        now - self.last_seen)


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


class Engine:
    """The event loop thread and everything it owns, plus a netlink thread for the
    device. Methods ending in `_on_loop` run on the loop thread (through `call`); the
    others may be called from any thread."""

    def __init__(self, config: EngineConfig, *,
                 on_tick: Callable[[], None] | None = None) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.frontends: dict[FrontendKey, _Frontend] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.dirty = True
        self.addresses: set[str] = set()
        self._next_svc_id = 1
        self._next_backend_id = 1
        self._on_tick = on_tick
        self._started = concurrent.futures.Future[None]()
        self._warned_sctp: set[FrontendKey] = set()
        self._nl = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ebpflb-netlink", initializer=self._netlink_init)
        try:
            self.device = self._nl.submit(self._open_device).result(60)
        except BaseException:
            self._nl.shutdown(wait=True)
            raise
        self.thread = threading.Thread(target=self._run, name="ebpflb-userspace", daemon=True)
        self.thread.start()
        try:
            self._started.result(timeout=30)
        except BaseException:
            self.thread.join(5)
            self.close_device(remove=False)
            raise

    def _open_device(self) -> DummyDevice:
        dev = DummyDevice(self.config.device)
        try:
            dev.open()
            self.addresses = dev.addresses()
        except BaseException:
            dev.close()
            raise
        return dev

    def close_device(self, *, remove: bool) -> None:
        """Close (and with remove, delete) the device; then stop the netlink thread."""
        def run(dev: DummyDevice) -> None:
            if remove:
                dev.delete()
            dev.close()

        try:
            self.netlink(run)
        finally:
            self._nl.shutdown(wait=True)

    # -- the loop thread -----------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            if self.config.netns:
                _setns(self.config.netns)
        except BaseException as exc:
            self.loop.close()
            self._started.set_exception(exc)
            return
        self.loop.call_soon(self._started.set_result, None)
        self.loop.call_later(self.config.tick, self._tick)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _netlink_init(self) -> None:
        if self.config.netns:
            _setns(self.config.netns)

    def netlink(self, fn: Callable[[DummyDevice], T]) -> T:
        """Run `fn(device)` on the netlink thread (pyroute2 runs its own asyncio loop,
        so it cannot be called from the proxy's loop thread)."""
        return self._nl.submit(fn, self.device).result(60)

    def sync_addresses(self, wanted: set[IPAddress], *, add: bool) -> list[str]:
        """Add the wanted addresses that are missing (add=True), or remove the ones no
        longer wanted (add=False). Returns errors."""
        def run(dev: DummyDevice) -> list[str]:
            errors = []
            have = self.addresses
            if add:
                for a in sorted(wanted, key=str):
                    if str(a) not in have:
                        try:
                            dev.add(a)
                            have.add(str(a))
                        except DataplaneError as exc:
                            errors.append(str(exc))
            else:
                for text in sorted(have - {str(a) for a in wanted}):
                    dev.remove(text)
                    have.discard(text)
            return errors

        return self.netlink(run)

    def call(self, fn: Callable[[], T], *, timeout: float = 60.0) -> T:
        """Run `fn` on the loop thread and return its result (or raise its error)."""
        if threading.current_thread() is self.thread:
            return fn()
        if not self.thread.is_alive():
            raise DataplaneError("the userspace proxy's event loop is not running")
        fut = concurrent.futures.Future[T]()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def _tick(self) -> None:
        try:
            self.expire_sessions(time.monotonic())
            if self._on_tick is not None:
                self._on_tick()
        except Exception:
            log.exception("userspace upkeep")
        self.loop.call_later(self.config.tick, self._tick)

    def expire_sessions(self, now: float) -> int:
        limit = now - self.config.udp_idle_timeout
        n = 0
        for fe in self.frontends.values():
            while fe.sessions:
                client, sess = next(iter(fe.sessions.items()))
                if sess.last_seen > limit:
                    break
                del fe.sessions[client]
                sess.close()
                n += 1
        if n:
            self.dirty = True
        return n

    # -- applying state (on the loop) ------------------------------------------------

    def apply_on_loop(self, desired: dict[FrontendKey, FrontendState]
                      ) -> tuple[dict[FrontendKey, FrontendState], list[str]]:
        """Make the frontends match `desired`; returns what is held and the errors of
        frontends that could not be opened (they are not held, so the next sync retries)."""
        errors: list[str] = []
        for key in [k for k in self.frontends if k not in desired]:
            self._remove_frontend(self.frontends.pop(key))
        for key, st in desired.items():
            fe = self.frontends.get(key)
            if fe is None:
                try:
                    self.frontends[key] = self._add_frontend(st)
                except OSError as exc:
                    errors.append(f"cannot open {st.frontend}: {exc.strerror or exc}")
            else:
                self._update_frontend(fe, st)
        self.dirty = True
        return {k: fe.state for k, fe in self.frontends.items()}, errors

    def _assign_backend_ids(self, fe: _Frontend) -> None:
        keep = {b.key for b in fe.state.backends}
        for k in [k for k in fe.backend_ids if k not in keep]:
            del fe.backend_ids[k]
        for k in sorted(keep - fe.backend_ids.keys()):
            fe.backend_ids[k] = self._next_backend_id
            self._next_backend_id += 1

    def _add_frontend(self, st: FrontendState) -> _Frontend:
        fe = _Frontend(st, self._next_svc_id)
        front = st.frontend
        fam = socket.AF_INET if front.address.version == 4 else socket.AF_INET6
        if front.protocol is Protocol.TCP:
            s = socket.socket(fam, socket.SOCK_STREAM)
        elif front.protocol is Protocol.UDP:
            s = socket.socket(fam, socket.SOCK_DGRAM)
        else:
            if front.key not in self._warned_sctp:
                log.warning("%s: %s is not served by the userspace data path", front,
                            front.protocol)
                self._warned_sctp.add(front.key)
            s = None
        if s is not None:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                s.setblocking(False)
                s.bind((str(front.address), front.port))
                if front.protocol is Protocol.TCP:
                    s.listen(LISTEN_BACKLOG)
                    self.loop.add_reader(s.fileno(), self._on_accept, fe)
                else:
                    self.loop.add_reader(s.fileno(), self._on_datagram, fe)
            except OSError:
                s.close()
                raise
        fe.sock = s
        self._next_svc_id += 1
        self._assign_backend_ids(fe)
        return fe

    def _update_frontend(self, fe: _Frontend, st: FrontendState) -> None:
        old = {b.key for b in fe.state.backends}
        fe.state = st
        gone = old - {b.key for b in st.backends}
        self._assign_backend_ids(fe)
        if gone:
            # Established TCP flows to a backend that left are reset (the kernel path
            # reselects and the new backend resets them); UDP sessions move at their
            # next datagram.
            for conn in [c for c in fe.conns if c.backend in gone]:
                conn.abort()

    def _remove_frontend(self, fe: _Frontend) -> None:
        if fe.sock is not None:
            self.loop.remove_reader(fe.sock.fileno())
            fe.sock.close()
            fe.sock = None
        for conn in list(fe.conns):
            conn.abort()
        for sess in fe.sessions.values():
            sess.close()
        fe.sessions.clear()

    def shutdown_on_loop(self) -> None:
        for fe in self.frontends.values():
            self._remove_frontend(fe)
        self.frontends.clear()
        self.loop.stop()

    # -- traffic (on the loop) -------------------------------------------------------

    def _on_accept(self, fe: _Frontend) -> None:
        lsock = fe.sock
        if lsock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                client, caddr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next event
                log.warning("accept on %s: %s", fe.state.frontend, exc)
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _TcpConn(self, fe, client, (caddr[0], caddr[1]))
            fe.conns.add(conn)
            conn.connect()

    def _on_datagram(self, fe: _Frontend) -> None:
        sock = fe.sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                data, caddr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client = (caddr[0], caddr[1])
            fe.rx_packets += 1
            fe.rx_bytes += len(data)
            self.dirty = True
            sess = fe.sessions.get(client)
            if sess is not None and not fe.has_backend(sess.backend):
                del fe.sessions[client]
                sess.close()
                sess = None
                self.counters["reselect"] += 1
            if sess is None:
                sess = self._new_session(fe, client)
                if sess is None:
                    continue
            else:
                self.counters["ct_hit"] += 1
                fe.sessions.move_to_end(client)
            sess.last_seen = time.monotonic()
            try:  # noqa: SIM105 - per datagram: cheaper than contextlib.suppress
                sess.sock.send(data)
            except OSError:
                pass

    def _new_session(self, fe: _Frontend, client: tuple[str, int]) -> _UdpSession | None:
        st = fe.state
        key = choose_backend(st.slots, client=None, affinity_timeout=st.affinity_timeout)
        if key is None:
            self.counters["no_backend"] += 1
            return None
        while sum(len(f.sessions) for f in self.frontends.values()) >= \
                self.config.max_udp_sessions and self._evict_one():
            self.counters["ct_full"] += 1
        try:
            sess = _UdpSession(self, fe, client, key)
        except OSError as exc:
            log.warning("UDP session for %s on %s: %s", client, fe.state.frontend, exc)
            return None
        fe.sessions[client] = sess
        self.counters["new_flow"] += 1
        return sess

    def _evict_one(self) -> bool:
        """Drop the least recently used UDP session of all frontends."""
        oldest: tuple[float, _Frontend, tuple[str, int]] | None = None
        for fe in self.frontends.values():
            if fe.sessions:
                client, sess = next(iter(fe.sessions.items()))
                if oldest is None or sess.last_seen < oldest[0]:
                    oldest = (sess.last_seen, fe, client)
        if oldest is None:
            return False
        _, fe, client = oldest
        fe.sessions.pop(client).close()
        return True

    # -- views (on the loop) ---------------------------------------------------------

    def _sorted(self) -> list[_Frontend]:
        return sorted(self.frontends.values(), key=lambda fe: fe.state.frontend)

    def services(self) -> list[ServiceView]:
        return [ServiceView(fe.svc_id, fe.state.frontend, fe.state.port_name,
                            len(fe.state.backends), len(fe.state.slots),
                            fe.state.affinity_timeout) for fe in self._sorted()]

    def backends(self) -> list[BackendView]:
        out = []
        for fe in self._sorted():
            for b in fe.state.backends:
                out.append(BackendView(fe.backend_ids[b.key], fe.svc_id, fe.state.frontend,
                                       fe.state.port_name, b.address, b.port, b.active,
                                       b.terminating))
        return out

    def conntrack(self) -> list[ConnView]:
        now = time.monotonic()
        out: list[ConnView] = []
        for fe in self.frontends.values():
            for conn in fe.conns:
                v = conn.view(now)
                if v is not None:
                    out.append(v)
            out.extend(s.view(now) for s in fe.sessions.values())
        out.sort(key=lambda c: (c.frontend_address, c.frontend_port, c.client_address,
                                c.client_port))
        return out

    def stats(self) -> StatsView:
        rows = tuple(ServiceStats(fe.svc_id, fe.state.frontend, fe.state.port_name,
                                  fe.rx_packets, fe.rx_bytes, fe.tx_packets, fe.tx_bytes)
                     for fe in self._sorted())
        return StatsView(rows, dict(self.counters))

    def flows(self) -> int:
        return sum(len(fe.conns) + len(fe.sessions) for fe in self.frontends.values())
