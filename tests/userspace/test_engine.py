"""The userspace proxy engine on loopback, without root and without a device: frontends
on 127.0.0.x addresses (all local on lo), backends that answer their own name, clients
bound to chosen 127.0.0.x source addresses. Covers the relay, ClientIP session affinity
(TCP and UDP), loadBalancerSourceRanges (reset / drop, counted) and the counters."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ebpflb.dataplane.userspace.proxy import Engine, EngineConfig
from ebpflb.dataplane.userspace.views import COUNTERS
from ebpflb.model import (
    Backend,
    Frontend,
    FrontendKey,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import FrontendState

IP = ipaddress.ip_address
FRONT_IP = "127.0.0.10"
CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((FRONT_IP, 0))
        port: int = s.getsockname()[1]
        return port


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    name = ""


class TcpServer6(TcpServer):
    address_family = socket.AF_INET6


class UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    name = ""


class NameTcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, TcpServer)
        self.request.recv(1024)
        self.request.sendall(self.server.name.encode())


class NameUdp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, UdpServer)
        _data, sock = self.request
        sock.sendto(self.server.name.encode(), self.client_address)


class Backends:
    """Three TCP and three UDP servers on 127.0.0.1, each answering its name."""

    def __init__(self, n: int = 3) -> None:
        self.servers: list[TcpServer | UdpServer] = []
        self.tcp: dict[str, int] = {}
        self.udp: dict[str, int] = {}
        for i in range(n):
            for srv, table in (
                (TcpServer(("127.0.0.1", 0), NameTcp), self.tcp),
                (UdpServer(("127.0.0.1", 0), NameUdp), self.udp),
            ):
                srv.name = f"b{i}"
                threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
                table[f"b{i}"] = srv.server_address[1]
                self.servers.append(srv)

    def close(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()


def state(
    port: int,
    protocol: Protocol,
    ports: dict[str, int],
    *,
    affinity: int = 0,
    ranges: tuple[str, ...] = (),
    kind: FrontendKind = FrontendKind.LOAD_BALANCER,
) -> FrontendState:
    pn = ServicePortName(ServiceRef("t", "svc"), "p", protocol)
    backends = tuple(sorted(Backend(IP("127.0.0.1"), p) for p in ports.values()))
    return FrontendState.from_entry(
        ServiceEntry(
            Frontend(IP(FRONT_IP), port, protocol, kind),
            pn,
            backends,
            affinity,
            source_ranges=tuple(ipaddress.IPv4Network(r) for r in ranges),
        )
    )


class Env:
    def __init__(self, engine: Engine, backends: Backends) -> None:
        self.engine = engine
        self.backends = backends
        self.names = {p: n for n, p in backends.tcp.items()} | {
            p: n for n, p in backends.udp.items()
        }
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)

    def apply(self, *states: FrontendState) -> None:
        desired: dict[FrontendKey, FrontendState] = {s.frontend.key: s for s in states}
        held, errors = self.engine.call(lambda: self.engine.apply_on_loop(desired))
        assert not errors and set(held) == set(desired)

    def serve(self, *, affinity: int = 0, ranges: tuple[str, ...] = ()) -> None:
        self.apply(
            state(self.tcp_port, Protocol.TCP, self.backends.tcp, affinity=affinity, ranges=ranges),
            state(self.udp_port, Protocol.UDP, self.backends.udp, affinity=affinity, ranges=ranges),
        )

    def counters(self) -> dict[str, int]:
        return self.engine.call(lambda: self.engine.stats().counters)

    def tcp(self, source: str, payload: bytes = b"hello") -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect((FRONT_IP, self.tcp_port))
            s.sendall(payload)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode()

    def udp(self, source: str, *, timeout: float = 2.0) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.bind((source, 0))
            s.sendto(b"x", (FRONT_IP, self.udp_port))
            data, src = s.recvfrom(1024)
            assert src == (FRONT_IP, self.udp_port)  # the reply comes from the frontend
            return data.decode()


@pytest.fixture
def env() -> Iterator[Env]:
    backends = Backends()
    engine = Engine(EngineConfig(device=None, tick=0.05))
    try:
        yield Env(engine, backends)
    finally:
        engine.call(engine.shutdown_on_loop)
        engine.thread.join(5)
        engine.addresses.close(remove=False)
        backends.close()


def test_relay_spreads_new_flows_and_counts_them(env: Env):
    env.serve()
    tcp = Counter(env.tcp(CLIENT_A) for _ in range(60))
    udp = Counter(env.udp(CLIENT_A) for _ in range(60))
    assert set(tcp) == set(udp) == {"b0", "b1", "b2"}, (tcp, udp)
    c = env.counters()
    assert set(c) == set(COUNTERS)
    # A UDP client socket may get the source port of an earlier one: a ct_hit then.
    assert c["new_flow"] + c["ct_hit"] == 120 and c["new_flow"] >= 60, c
    assert c["reply"] == 60 and c["source_range_drop"] == 0
    assert c["hairpin"] == c["snat"] == c["affinity_hit"] == 0


def test_hairpin_snat_and_icmp_errors_are_counted(env: Env):
    tcp = state(env.tcp_port, Protocol.TCP, env.backends.tcp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # nobody listens there
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    udp = state(env.udp_port, Protocol.UDP, {"dead": dead})
    env.apply(tcp.replace(snat_address=ipaddress.IPv4Address("127.0.0.1")), udp)
    assert env.tcp("127.0.0.1") in {"b0", "b1", "b2"}  # the backends' own address
    with pytest.raises(TimeoutError):
        env.udp(CLIENT_A, timeout=0.5)
    c = env.counters()
    assert c["hairpin"] == 1 and c["snat"] == 1 and c["icmp_error"] == 1, c


def test_bulk_flow_is_relayed_whole_through_splice(env: Env):
    import hashlib

    class Sink(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            h = hashlib.sha256()
            while chunk := self.request.recv(1 << 16):
                h.update(chunk)
            self.request.sendall(h.hexdigest().encode())

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        env.apply(state(env.tcp_port, Protocol.TCP, {"sink": srv.server_address[1]}))
        payload = os.urandom(8 << 20)
        with socket.socket() as s:
            s.settimeout(10)
            s.connect((FRONT_IP, env.tcp_port))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half-close: the answer still comes back
            answer = s.recv(1024).decode()
        assert answer == hashlib.sha256(payload).hexdigest()
    finally:
        srv.shutdown()
        srv.server_close()


def test_client_ip_affinity_holds_for_a_hundred_new_connections(env: Env):
    env.serve(affinity=10800)
    a = Counter(env.tcp(CLIENT_A) for _ in range(100))
    assert len(a) == 1, a
    ua = Counter(env.udp(CLIENT_A) for _ in range(50))  # a new source port each time
    assert len(ua) == 1, ua
    # Each client has its own entry; over many clients every backend gets some.
    others = Counter(env.tcp(f"127.0.1.{i}") for i in range(1, 40))
    assert len(others) > 1, others
    c = env.counters()  # every new flow is a hit but the first TCP and UDP ones and others'
    assert c["affinity_hit"] == c["new_flow"] - 2 - 39, c


def test_client_ip_affinity_expires_and_moves(env: Env):
    env.serve(affinity=5)
    clock = [time.monotonic()]
    env.engine.affinity.clock = lambda: clock[0]
    first = env.tcp(CLIENT_A)
    assert {env.tcp(CLIENT_A) for _ in range(10)} == {first}
    seen = set()
    for _ in range(30):  # each connection 6 s after the last one: chosen afresh
        clock[0] += 6
        seen.add(env.tcp(CLIENT_A))
    assert len(seen) > 1, seen
    # The affinity backend leaves: the client moves, and sticks to its new backend.
    keep = dict(env.backends.tcp)
    current = env.tcp(CLIENT_A)
    del keep[current]
    env.apply(state(env.tcp_port, Protocol.TCP, keep, affinity=5))
    moved = {env.tcp(CLIENT_A) for _ in range(20)}
    assert len(moved) == 1 and current not in moved


def test_source_ranges_admit_inside_and_refuse_outside(env: Env):
    env.serve(ranges=(f"{CLIENT_A}/32", "192.0.2.0/24"))
    assert env.tcp(CLIENT_A) in {"b0", "b1", "b2"}
    assert env.udp(CLIENT_A) in {"b0", "b1", "b2"}
    with pytest.raises(ConnectionResetError):
        env.tcp(CLIENT_B)  # reset right after accept, before any backend is asked
    with pytest.raises(TimeoutError):
        env.udp(CLIENT_B, timeout=0.5)
    c = env.counters()
    assert c["source_range_drop"] == 2, c
    assert c["new_flow"] == 2, c


def test_narrowed_source_ranges_end_flows_from_outside(env: Env):
    env.serve()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.bind((CLIENT_B, 0))
        s.sendto(b"x", (FRONT_IP, env.udp_port))
        assert s.recvfrom(1024)[0].decode() in {"b0", "b1", "b2"}
        env.serve(ranges=(f"{CLIENT_A}/32",))
        assert env.engine.call(env.engine.flows) == 0
        s.sendto(b"x", (FRONT_IP, env.udp_port))
        with pytest.raises(TimeoutError):
            s.recvfrom(1024)
    assert env.udp(CLIENT_A) in {"b0", "b1", "b2"}


def test_refused_backend_is_retried_and_counted(env: Env):
    dead = free_port(socket.SOCK_STREAM)
    with socket.socket() as s:  # a port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    ports: dict[str, Any] = {"b0": env.backends.tcp["b0"], "dead": dead}
    env.apply(state(env.tcp_port, Protocol.TCP, ports))
    assert {env.tcp(CLIENT_A) for _ in range(20)} == {"b0"}
    assert env.counters()["backend_missing"] > 0


def test_maglev_choice_is_the_kernel_paths(env: Env) -> None:
    """With Maglev tables, the proxy picks the backend the kernel's table and flow hash
    give the same 5-tuple (ebpflb.maglev): so both paths, and every node, agree."""
    from ebpflb import maglev

    engine = Engine(EngineConfig(device=None, tick=0.05, maglev_table_size=1021))
    try:
        st = state(env.tcp_port, Protocol.TCP, env.backends.tcp)
        held, errors = engine.call(lambda: engine.apply_on_loop({st.frontend.key: st}))
        assert set(held) == {st.frontend.key}
        assert not errors
        table = maglev.table([f"{a}:{p}" for a, p in st.slots], 1021)
        seen = set()
        base = 41000 + secrets.randbelow(200) * 30  # fresh ports: no TIME_WAIT of a rerun
        for sport in range(base, base + 30):
            h = maglev.flow_hash(IP(CLIENT_A), sport, IP(FRONT_IP), env.tcp_port, Protocol.TCP)
            want = env.names[st.slots[table[h % 1021]][1]]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((CLIENT_A, sport))
                s.connect((FRONT_IP, env.tcp_port))
                s.sendall(b"x")
                assert s.recv(100).decode() == want
            seen.add(want)
        assert len(seen) == 3
    finally:
        engine.call(engine.shutdown_on_loop)
        engine.thread.join(5)
        engine.addresses.close(remove=False)


def test_maglev_choice_on_ipv6_is_the_kernel_paths() -> None:
    """The same for an IPv6 frontend (on ::1, with backends there too): the proxy's
    choice is maglev.flow_hash's over the IPv6 5-tuple."""
    from ebpflb import maglev

    servers: list[TcpServer6] = []
    engine = Engine(EngineConfig(device=None, tick=0.05, maglev_table_size=1021))
    try:
        for i in range(3):
            srv = TcpServer6(("::1", 0), NameTcp)
            srv.name = f"b{i}"
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
            servers.append(srv)
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        pn = ServicePortName(ServiceRef("t", "v6"), "p", Protocol.TCP)
        backends = tuple(sorted(Backend(IP("::1"), srv.server_address[1]) for srv in servers))
        st = FrontendState.from_entry(
            ServiceEntry(Frontend(IP("::1"), port, Protocol.TCP), pn, backends)
        )
        held, errors = engine.call(lambda: engine.apply_on_loop({st.frontend.key: st}))
        assert set(held) == {st.frontend.key} and not errors
        names = {srv.server_address[1]: srv.name for srv in servers}
        table = maglev.table([f"{a}:{p}" for a, p in st.slots], 1021)
        seen = set()
        base = 42000 + secrets.randbelow(200) * 30
        for sport in range(base, base + 30):
            h = maglev.flow_hash(IP("::1"), sport, IP("::1"), port, Protocol.TCP)
            want = names[st.slots[table[h % 1021]][1]]
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::1", sport))
                s.connect(("::1", port))
                s.sendall(b"x")
                assert s.recv(100).decode() == want
            seen.add(want)
        assert len(seen) == 3
    finally:
        engine.call(engine.shutdown_on_loop)
        engine.thread.join(5)
        engine.addresses.close(remove=False)
        for srv in servers:
            srv.shutdown()
            srv.server_close()
