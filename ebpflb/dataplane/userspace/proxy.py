"""The proxy engine: one event loop (reactor.py) in its own thread owns every socket,
and every change to the frontends runs on that loop, so a connection never sees a
half-applied change.

Every frontend has sockets of its own family (AF_INET6 with IPV6_V6ONLY for an IPv6
one), bound to its address, so an IPv6 frontend never sees IPv4 traffic and the two
halves of a dual-stack Service are independent frontends. Per TCP frontend a
listening socket accepts; each connection (tcp.py) picks a backend with
ebpflb.selection, connects and relays. Per UDP frontend one socket bound to the
frontend address receives datagrams; a session table maps each client (address,
port; for IPv6 the 4-tuple recvfrom gives) to a connected socket towards its backend
(udp.py), and replies are sent back from the frontend's own socket: bound to the
frontend address, it gives them that source in either family, so no
IP_PKTINFO/IPV6_PKTINFO is needed. Sessions expire when idle and the table is bounded
(least recently used evicted). A session whose backend left the frontend moves to a
live backend at its next datagram, as the kernel path's conntrack does.

Policies, as the kernel path applies them:
- `sessionAffinity: ClientIP`: new TCP connections and new UDP sessions consult the
  engine's AffinityTable, keyed by (client address, frontend id).
- `loadBalancerSourceRanges`: a connection from a client outside the ranges is reset
  right after accept (a proxy cannot drop a handshake the kernel already answered), a
  datagram is dropped; both are counted as `source_range_drop`. When the ranges
  change, the flows of clients now outside them are ended.

Counters and the flow table are plain attributes touched only by the loop thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ebpflb import maglev
from ebpflb.dataplane.userspace.addresses import FrontendAddresses, setns
from ebpflb.dataplane.userspace.device import DEVICE_NAME
from ebpflb.dataplane.userspace.frontend import FrontendRuntime
from ebpflb.dataplane.userspace.reactor import IN, Reactor
from ebpflb.dataplane.userspace.target import Target
from ebpflb.dataplane.userspace.tcp import CHUNK, LINGER_RESET, TcpConn
from ebpflb.dataplane.userspace.udp import UdpSession, frontend_socket
from ebpflb.dataplane.userspace.views import COUNTERS as COUNTERS  # re-exported
from ebpflb.dataplane.userspace.views import EngineViews
from ebpflb.dataplane.userspace.views import drops_of as drops_of  # re-exported
from ebpflb.errors import DataplaneError
from ebpflb.model import FrontendKey, Protocol
from ebpflb.plan import FrontendState
from ebpflb.selection import DEFAULT_AFFINITY_ENTRIES, AffinityTable, choose_backend

log = logging.getLogger(__name__)

T = TypeVar("T")

LISTEN_BACKLOG = 4096
IP_FREEBIND = 15
ACCEPT_PAUSE = 0.1  # seconds without accepting after EMFILE and the like


@dataclass(frozen=True)
class EngineConfig:
    netns: str | None = None  # a netns file to enter in the loop thread (tests); None: ours
    # The device that carries the frontend addresses; None: no device, the frontends'
    # addresses are already local (loopback, in the unit tests).
    device: str | None = DEVICE_NAME
    udp_idle_timeout: float = 30.0
    max_udp_sessions: int = 10_000
    max_affinity_entries: int = DEFAULT_AFFINITY_ENTRIES
    connect_timeout: float = 5.0
    splice: bool = True
    tick: float = 0.5  # seconds between upkeep passes (expiry, connect timeouts, publishing)
    maglev_table_size: int = 0  # > 0: new flows choose by Maglev tables of this size


class Engine(EngineViews):
    """The event loop thread and everything it owns, plus the frontend addresses
    (addresses.py, with their netlink thread); its views are in views.py. Methods
    ending in `_on_loop` run on the loop thread (through `call`); the others may be
    called from any thread."""

    def __init__(self, config: EngineConfig, *, on_tick: Callable[[], None] | None = None) -> None:
        self.config = config
        self.reactor = Reactor()
        self.frontends: dict[FrontendKey, FrontendRuntime] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.affinity: AffinityTable[Target] = AffinityTable(
            max_entries=config.max_affinity_entries
        )
        self.connecting: dict[TcpConn, None] = {}  # in connect order, so in deadline order
        self.udp_sessions = 0  # over every frontend
        self.buf = bytearray(CHUNK)  # every read of the loop thread lands here first
        self.view = memoryview(self.buf)
        self.dirty = True
        self._next_svc_id = 1
        self._next_backend_id = 1
        self._on_tick = on_tick
        self._started = concurrent.futures.Future[None]()
        try:
            self.addresses = FrontendAddresses(config.device, netns=config.netns)
        except BaseException:
            self.reactor.close()
            raise
        self.thread = threading.Thread(target=self._run, name="ebpflb-userspace", daemon=True)
        self.thread.start()
        try:
            self._started.result(timeout=30)
        except BaseException:
            self.thread.join(5)
            self.addresses.close(remove=False)
            raise

    # -- the loop thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.config.netns:
                setns(self.config.netns)
        except BaseException as exc:
            self.reactor.close()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        self.reactor.call_later(self.config.tick, self._tick)
        try:
            self.reactor.run_forever()
        finally:
            self.reactor.close()

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

        try:
            self.reactor.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop closed in the meantime
            raise DataplaneError(str(exc)) from exc
        return fut.result(timeout)

    def _tick(self) -> None:
        try:
            now = time.monotonic()
            self.expire_connects(now)
            self.expire_sessions(now)
            if self._on_tick is not None:
                self._on_tick()
        except Exception:
            log.exception("userspace upkeep")
        self.reactor.call_later(self.config.tick, self._tick)

    def expire_connects(self, now: float) -> int:
        """Connects past their deadline are given up (and retried elsewhere)."""
        late = []
        for conn in self.connecting:
            if conn.deadline > now:
                break
            late.append(conn)
        for conn in late:
            conn.connect_failed()
        return len(late)

    def expire_sessions(self, now: float) -> int:
        limit = now - self.config.udp_idle_timeout
        n = 0
        for fe in self.frontends.values():
            while fe.sessions:
                client, sess = next(iter(fe.sessions.items()))
                if sess.last_seen > limit:
                    break
                self._drop_session(fe, client)
                n += 1
        if n:
            self.dirty = True
        return n

    # -- applying state (on the loop) ------------------------------------------------

    def apply_on_loop(
        self, desired: dict[FrontendKey, FrontendState]
    ) -> tuple[dict[FrontendKey, FrontendState], list[str]]:
        """Make the frontends match `desired`; returns what is held and the errors of
        frontends that could not be opened (they are not held, so the next sync retries)."""
        errors: list[str] = []
        forget: set[int] = set()  # svc ids whose affinity entries go
        for key in [k for k in self.frontends if k not in desired]:
            removed = self.frontends.pop(key)
            self._remove_frontend(removed)
            forget.add(removed.svc_id)
        for key, st in desired.items():
            fe = self.frontends.get(key)
            if fe is None:
                try:
                    self.frontends[key] = self._add_frontend(st)
                except OSError as exc:
                    errors.append(f"cannot open {st.frontend}: {exc.strerror or exc}")
            else:
                if fe.state.affinity_timeout and not st.affinity_timeout:
                    forget.add(fe.svc_id)
                self._update_frontend(fe, st)
        self.affinity.drop_frontends(forget)
        self.dirty = True
        return {k: fe.state for k, fe in self.frontends.items()}, errors

    def _sync_targets(self, fe: FrontendRuntime) -> None:
        """A Target (and id) per backend of the frontend; those of backends that left
        are marked gone."""
        keep = {b.key for b in fe.state.backends}
        for k in [k for k in fe.targets if k not in keep]:
            fe.targets.pop(k).gone = True
        for k in sorted(keep - fe.targets.keys()):
            fe.targets[k] = Target(k, self._next_backend_id)
            self._next_backend_id += 1
        slots = tuple([fe.targets[k] for k in fe.state.slots])
        size = self.config.maglev_table_size
        if size and (slots != fe.slot_targets or not fe.maglev):
            fe.maglev = maglev.table([f"{a}:{p}" for a, p in fe.state.slots], size)
        fe.slot_targets = slots

    def _add_frontend(self, st: FrontendState) -> FrontendRuntime:
        fe = FrontendRuntime(st, self._next_svc_id)
        front = st.frontend
        s: socket.socket | None = None
        if front.protocol is Protocol.TCP:
            s = socket.socket(fe.family, socket.SOCK_STREAM)
        elif front.protocol is Protocol.UDP:
            s = frontend_socket(fe.family)
        # Another protocol is held without a socket: the agent sends none, since the data
        # path's `protocols` leave it out (and logs that).
        if s is not None:
            try:
                if fe.family == socket.AF_INET6:
                    # Only IPv6 on an IPv6 frontend, whatever net.ipv6.bindv6only says.
                    # The kernel sets it too when the socket binds one IPv6 address;
                    # set here, it holds for any address a frontend may ever have.
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                s.setblocking(False)
                s.bind((str(front.address), front.port))
                if front.protocol is Protocol.TCP:
                    # Inherited by every accepted socket: no setsockopt per connection.
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.listen(LISTEN_BACKLOG)
                    self.reactor.register(s.fileno(), IN, functools.partial(self._on_accept, fe))
                else:
                    self.reactor.register(s.fileno(), IN, functools.partial(self._on_datagram, fe))
            except OSError:
                s.close()
                raise
        fe.sock = s
        self._next_svc_id += 1
        self._sync_targets(fe)
        return fe

    def _update_frontend(self, fe: FrontendRuntime, st: FrontendState) -> None:
        old = fe.state
        fe.state = st
        self._sync_targets(fe)
        # Established TCP flows to a backend that left are reset (the kernel path
        # reselects and the new backend resets them); UDP sessions move at their next
        # datagram (their Target is marked gone).
        for conn in [c for c in fe.conns if c.backend is not None and c.backend.gone]:
            conn.abort()
            if not fe.slot_targets:
                self.counters["reset"] += 1
                self.dirty = True
        if st.source_ranges != old.source_ranges and st.source_ranges:
            for conn in [c for c in fe.conns if not fe.admits(c.caddr[0])]:
                conn.abort()
            for client in [c for c in fe.sessions if not fe.admits(c[0])]:
                self._drop_session(fe, client)

    def _remove_frontend(self, fe: FrontendRuntime) -> None:
        if fe.sock is not None:
            self.reactor.forget(fe.sock.fileno())
            fe.sock.close()
            fe.sock = None
        for conn in list(fe.conns):
            conn.abort()
        for client in list(fe.sessions):
            self._drop_session(fe, client)

    def shutdown_on_loop(self) -> None:
        for fe in self.frontends.values():
            self._remove_frontend(fe)
        self.frontends.clear()
        self.reactor.stop()

    # -- traffic (on the loop) -------------------------------------------------------

    def _refuse(self) -> None:
        self.counters["source_range_drop"] += 1
        self.dirty = True

    def _on_accept(self, fe: FrontendRuntime, _ev: int) -> None:
        # One accept per readiness event: the loop is level-triggered, so a backlog is
        # reported again at once, and an idle listener costs no failed accept.
        lsock = fe.sock
        if lsock is None:
            return
        try:
            # _accept and a socket made from the descriptor: socket.accept() converts
            # the listener's family and type to enums on every call.
            fd, caddr = lsock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: pause, or the loop would spin
            log.warning("accept on %s: %s", fe.state.frontend, exc)
            self._pause_accepting(fe)
            return
        client = socket.socket(fe.family, socket.SOCK_STREAM, 0, fd)
        if fe.state.source_ranges and not fe.admits(caddr[0]):
            self._refuse()
            try:  # noqa: SIM105 - per connection: cheaper than contextlib.suppress
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
            client.close()
            return
        # The accepted socket stays in blocking mode: tcp.py passes MSG_DONTWAIT.
        conn = TcpConn(self, fe, client, caddr)
        fe.conns.add(conn)
        conn.connect()

    def _pause_accepting(self, fe: FrontendRuntime) -> None:
        sock = fe.sock
        assert sock is not None
        self.reactor.modify(sock.fileno(), 0)

        def resume() -> None:
            if fe.sock is sock:
                self.reactor.modify(sock.fileno(), IN)

        self.reactor.call_later(ACCEPT_PAUSE, resume)

    def _on_datagram(self, fe: FrontendRuntime, _ev: int) -> None:
        sock = fe.sock
        if sock is None:
            return
        try:
            n, client = sock.recvfrom_into(self.buf)
        except OSError:  # EAGAIN (another reader was first), ICMP errors
            return
        sess = fe.sessions.get(client)
        if sess is None and fe.state.source_ranges and not fe.admits(client[0]):
            self._refuse()
            return
        fe.rx_packets += 1
        fe.rx_bytes += n
        self.dirty = True
        if sess is not None and sess.backend.gone:
            self._drop_session(fe, client)
            sess = None
            self.counters["reselect"] += 1
        if sess is None:
            sess = self._new_session(fe, client)
            if sess is None:
                return
        else:
            self.counters["ct_hit"] += 1
            fe.sessions.move_to_end(client)
        sess.last_seen = self.reactor.now
        try:  # noqa: SIM105 - per datagram: cheaper than contextlib.suppress
            sess.sock.send(self.view[:n])
        except OSError:
            pass

    def _new_session(self, fe: FrontendRuntime, client: Any) -> UdpSession | None:
        st = fe.state
        key = choose_backend(
            fe.slot_targets,
            client=client[0],
            affinity_timeout=st.affinity_timeout,
            affinity=self.affinity,
            frontend=fe.svc_id,
            preferred=fe.preferred(client[0], client[1], self.config.maglev_table_size),
        )
        if key is None:
            self.counters["no_backend"] += 1
            return None
        while self.udp_sessions >= self.config.max_udp_sessions and self._evict_one():
            self.counters["ct_full"] += 1
        try:
            sess = UdpSession(self, fe, client, key)
        except OSError as exc:
            log.warning("UDP session for %s on %s: %s", client, fe.state.frontend, exc)
            return None
        fe.sessions[client] = sess
        self.udp_sessions += 1
        self.count_new_flow(fe, client[0], key)
        return sess

    def count_new_flow(self, fe: FrontendRuntime, client: str, backend: Target) -> None:
        counters = self.counters
        counters["new_flow"] += 1
        if fe.state.snat_address is not None:
            counters["snat"] += 1
        if backend.host == client:
            counters["hairpin"] += 1
        self.dirty = True

    def _drop_session(self, fe: FrontendRuntime, client: Any) -> None:
        fe.sessions.pop(client).close()
        self.udp_sessions -= 1

    def _evict_one(self) -> bool:
        """Drop the least recently used UDP session of all frontends."""
        oldest: tuple[float, FrontendRuntime, Any] | None = None
        for fe in self.frontends.values():
            if fe.sessions:
                client, sess = next(iter(fe.sessions.items()))
                if oldest is None or sess.last_seen < oldest[0]:
                    oldest = (sess.last_seen, fe, client)
        if oldest is None:
            return False
        _, fe, client = oldest
        self._drop_session(fe, client)
        return True
