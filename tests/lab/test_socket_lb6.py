"""Socket-LB for IPv6 sockets (bpf/lib/sock6.h), for real: the programs loaded and
linked to the cgroup v2 root as the agent links them, acting on one network namespace
of this test's own, whose servers stand in for the backends (on its loopback, so no
packet leaves the namespace). The map entries are written here directly.

A frontend is an address nothing in the namespace holds and no route reaches, so an
untranslated connect() fails with ENETUNREACH: every answer below is a translation.
A second namespace holds the frontend address itself, with a server of its own, to
show that sockets of another namespace are left alone."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import secrets
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import (
    SOCK_PROGRAMS,
    LoadedProgram,
    compile_program,
    kernel_feature_flags,
)
from ebpflb.dataplane.bpf.socklb import LINK_PINS, SocketLb, remove_links
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.lab import netns
from tests.bpffs import private_bpffs

from .conftest import _require_root

pytestmark = pytest.mark.root

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
FRONTEND6 = "fd00:10:96::a"
EMPTY6 = "fd00:10:96::b"
BACKENDS6 = {"pod-1": "fd00:10:244::11", "pod-2": "fd00:10:244::12"}
FRONTEND4 = "10.96.4.10"
EMPTY4 = "10.96.4.11"
BACKENDS4 = {"pod-1": "10.244.0.11", "pod-2": "10.244.0.12"}
HTTP, DNS = 80, 53  # frontend ports
HTTP_POD, DNS_POD = 8080, 9090  # backend ports
PODS = set(BACKENDS6)


def mapped(v4: str) -> str:
    return f"::ffff:{v4}"


class Servers:
    """A TCP server (answers its name and closes) and a UDP echo-of-name server per
    backend address, threads serving sockets made in the namespace."""

    def __init__(self, ns: str) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        for name, family, addr in [
            *((n, socket.AF_INET6, a) for n, a in BACKENDS6.items()),
            *((n, socket.AF_INET, a) for n, a in BACKENDS4.items()),
        ]:
            tcp = netns.socket_in(ns, family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((addr, HTTP_POD))
            tcp.listen(64)
            udp = netns.socket_in(ns, family, socket.SOCK_DGRAM)
            udp.bind((addr, DNS_POD))
            for s, serve in ((tcp, self._tcp), (udp, self._udp)):
                s.settimeout(0.2)
                self.socks.append(s)
                t = threading.Thread(target=serve, args=(s, name.encode()), daemon=True)
                t.start()
                self.threads.append(t)

    def _tcp(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(name)

    def _udp(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                _, peer = s.recvfrom(100)
            except TimeoutError:
                continue
            s.sendto(name, peer)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        for s in self.socks:
            s.close()


@dataclass
class Env:
    ns: str  # the agent's namespace: socket-LB acts here
    other: str  # another namespace: untouched
    pin_dir: str
    sknat4: PinnedMap
    sknat6: PinnedMap
    gstat: PinnedMap

    def sock_lb_count(self) -> int:
        return sum(
            v.value
            for v in self.gstat.lookup_percpu(
                ctypes.c_uint32(abi.GlobalStat.SOCK_LB), ctypes.c_uint64
            )
        )


def _write_services(pin_dir: str) -> None:
    """An IPv6 and an IPv4 Service (TCP 80, UDP 53) with two backends each, and one of
    each family with none. Ids are one space: IPv6 frontends 1-2, IPv4 ones 3-4,
    empty ones 5-8; backends in the order the writer uses (backends, slots, service)."""
    m = {name: PinnedMap(os.path.join(pin_dir, name)) for name in abi.ALL_MAPS}
    try:
        backend_id = 0
        svc_id = 0
        for family, frontend, backends in (
            (6, FRONTEND6, BACKENDS6),
            (4, FRONTEND4, BACKENDS4),
        ):
            for port, pod_port, proto in ((HTTP, HTTP_POD, TCP), (DNS, DNS_POD, UDP)):
                svc_id += 1
                for slot, addr in enumerate(backends.values()):
                    backend_id += 1
                    if family == 6:
                        m[abi.MAP_BACKENDS6].update(
                            ctypes.c_uint32(backend_id),
                            abi.Lb6Backend(
                                abi.addr6(addr),
                                abi.htons(pod_port),
                                proto,
                                abi.BackendFlag.ACTIVE,
                                svc_id,
                            ),
                        )
                    else:
                        m[abi.MAP_BACKENDS].update(
                            ctypes.c_uint32(backend_id),
                            abi.Lb4Backend(
                                abi.pack_ip4(addr),
                                abi.htons(pod_port),
                                proto,
                                abi.BackendFlag.ACTIVE,
                                svc_id,
                            ),
                        )
                    m[abi.MAP_SLOTS].update(
                        abi.Lb4SlotKey(svc_id, slot), ctypes.c_uint32(backend_id)
                    )
                _write_service(m, family, frontend, port, proto, svc_id, len(backends))
        for family, frontend in ((6, EMPTY6), (4, EMPTY4)):
            for port, proto in ((HTTP, TCP), (DNS, UDP)):
                svc_id += 1
                _write_service(m, family, frontend, port, proto, svc_id, 0)
    finally:
        for pm in m.values():
            pm.close()


def _write_service(
    m: dict[str, PinnedMap], family: int, addr: str, port: int, proto: int, svc_id: int, count: int
) -> None:
    flags = abi.SvcFlag.CLUSTERIP
    if family == 6:
        m[abi.MAP_REVNAT6].update(
            ctypes.c_uint32(svc_id), abi.Lb6Rnat(abi.addr6(addr), abi.htons(port))
        )
        m[abi.MAP_SERVICES6].update(
            abi.Lb6Key(abi.addr6(addr), abi.htons(port), proto),
            abi.Lb6Service(svc_id, count, flags),
        )
    else:
        m[abi.MAP_REVNAT].update(
            ctypes.c_uint32(svc_id), abi.Lb4Rnat(abi.pack_ip4(addr), abi.htons(port))
        )
        m[abi.MAP_SERVICES].update(
            abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto),
            abi.Lb4Service(svc_id, count, flags),
        )


def _namespace(ns: str, addresses: list[str]) -> None:
    """A namespace holding ``addresses`` on its loopback (host routes only: nothing
    else is reachable, and nothing leaves it)."""
    netns.create(ns)
    netns.ip_batch(
        ns,
        [
            "link set lo up",
            *(f"addr add {a}/{128 if ':' in a else 32} dev lo" for a in addresses),
        ],
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    tag = secrets.token_hex(3)
    ns, other = f"ebpflb-sk6a-{tag}", f"ebpflb-sk6b-{tag}"
    state_dir: Path = tmp_path_factory.mktemp("sk6-state")
    with contextlib.ExitStack() as stack:
        pin_dir = stack.enter_context(private_bpffs("ebpflb-sk6"))
        prog: LoadedProgram = compile_program(
            pin_dir=pin_dir, max_services=64, max_backends=256, max_conntrack=1024
        )
        stack.callback(prog.close)
        stack.callback(netns.delete, other)
        stack.callback(netns.delete, ns)
        _namespace(ns, [*BACKENDS6.values(), *BACKENDS4.values()])
        # the other namespace holds the frontends themselves: untranslated, its
        # sockets reach its own servers (which answer "other")
        _namespace(other, [FRONTEND6, FRONTEND4])
        _write_services(pin_dir)
        config = PinnedMap(os.path.join(pin_dir, abi.MAP_CONFIG))
        stack.callback(config.close)
        stack.callback(remove_links, pin_dir)  # never left attached to the cgroup
        with netns.enter(ns):  # the namespace whose cookie the programs act on
            lb = SocketLb(config, prog.sock_fds, state_dir=str(state_dir), pin_dir=pin_dir)
        stack.callback(lb.close)
        servers = Servers(ns)
        stack.callback(servers.close)
        others = _OtherServers(other)
        stack.callback(others.close)
        maps = [PinnedMap(os.path.join(pin_dir, n)) for n in ("ebpflb_sknat4", "ebpflb_sknat6")]
        gstat = PinnedMap(os.path.join(pin_dir, abi.MAP_GLOBAL_STATS))
        for pm in (*maps, gstat):
            stack.callback(pm.close)
        yield Env(ns, other, pin_dir, maps[0], maps[1], gstat)


class _OtherServers(Servers):
    """The other namespace's own servers on the frontend addresses and ports."""

    def __init__(self, ns: str) -> None:
        self.stop = threading.Event()
        self.threads, self.socks = [], []
        for family, addr in ((socket.AF_INET6, FRONTEND6), (socket.AF_INET, FRONTEND4)):
            tcp = netns.socket_in(ns, family, socket.SOCK_STREAM)
            tcp.bind((addr, HTTP))
            tcp.listen(16)
            udp = netns.socket_in(ns, family, socket.SOCK_DGRAM)
            udp.bind((addr, DNS))
            for s, serve in ((tcp, self._tcp), (udp, self._udp)):
                s.settimeout(0.2)
                self.socks.append(s)
                t = threading.Thread(target=serve, args=(s, b"other"), daemon=True)
                t.start()
                self.threads.append(t)


def _tcp_get(ns: str, addr: str, port: int) -> tuple[str, tuple[str, int]]:
    """One connection from an AF_INET6 socket: the answer and getpeername()."""
    with netns.socket_in(ns, socket.AF_INET6) as s:
        s.settimeout(2.0)
        s.connect((addr, port))
        peer = s.getpeername()
        return s.recv(100).decode(), (peer[0], peer[1])


def _udp_exchange(
    ns: str, addr: str, port: int, count: int
) -> tuple[Counter[str], set[tuple[str, int]]]:
    """``count`` datagrams from one unconnected AF_INET6 socket: who answered, and the
    sources recvfrom() showed."""
    answers: Counter[str] = Counter()
    sources: set[tuple[str, int]] = set()
    with netns.socket_in(ns, socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for _ in range(count):
            s.sendto(b"q", (addr, port))
            data, src = s.recvfrom(100)
            answers[data.decode()] += 1
            sources.add((src[0], src[1]))
    return answers, sources


def test_tcp_connect6_reaches_a_backend_and_peer_is_the_frontend(env: Env) -> None:
    before = env.sock_lb_count()
    seen: Counter[str] = Counter()
    for _ in range(30):
        answer, peer = _tcp_get(env.ns, FRONTEND6, HTTP)
        assert peer == (FRONTEND6, HTTP)  # the frontend, not the pod it went to
        seen[answer] += 1
    assert set(seen) == PODS  # random per connection: both backends in 30 (1 - 2^-29)
    assert env.sock_lb_count() >= before + 30
    sknat = {
        (str(abi.unpack_addr6(k.address)), abi.ntohs(k.port))
        for k in env.sknat6.keys(abi.SkNat6Key)
    }
    assert {(a, HTTP_POD) for a in BACKENDS6.values()} <= sknat


def test_unconnected_udp6_shows_the_frontend_and_sticks_to_one_backend(env: Env) -> None:
    chosen: set[str] = set()
    for _ in range(12):  # 12 sockets: each keeps one backend, together they spread
        answers, sources = _udp_exchange(env.ns, FRONTEND6, DNS, 8)
        assert sources == {(FRONTEND6, DNS)}
        assert len(answers) == 1 and sum(answers.values()) == 8, answers
        chosen |= set(answers)
    assert chosen == PODS  # all 12 on one backend: 2^-11


def test_connected_udp6_peer_is_the_frontend(env: Env) -> None:
    with netns.socket_in(env.ns, socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((FRONTEND6, DNS))
        s.send(b"q")
        assert s.recv(100).decode() in PODS
        assert s.getpeername()[:2] == (FRONTEND6, DNS)


def test_v4_mapped_connect_on_a_dual_stack_socket(env: Env) -> None:
    """::ffff:10.96.4.10 is the IPv4 frontend: sent to ::ffff:<IPv4 backend>, with its
    way back kept in sknat4 under the IPv4 backend (sock6.h says why)."""
    seen: Counter[str] = Counter()
    for _ in range(20):
        answer, peer = _tcp_get(env.ns, mapped(FRONTEND4), HTTP)
        assert peer == (mapped(FRONTEND4), HTTP)
        seen[answer] += 1
    assert set(seen) == PODS
    sknat4 = {
        (abi.unpack_ip4(k.address), abi.ntohs(k.port)) for k in env.sknat4.keys(abi.SkNat4Key)
    }
    assert {(ipaddress.IPv4Address(a), HTTP_POD) for a in BACKENDS4.values()} <= sknat4
    sknat6 = {str(abi.unpack_addr6(k.address)) for k in env.sknat6.keys(abi.SkNat6Key)}
    assert not any(a.startswith("::ffff:") for a in sknat6)


def test_v4_mapped_unconnected_udp_on_a_dual_stack_socket(env: Env) -> None:
    answers, sources = _udp_exchange(env.ns, mapped(FRONTEND4), DNS, 8)
    assert sources == {(mapped(FRONTEND4), DNS)}
    assert len(answers) == 1 and set(answers) <= PODS, answers


# what a refusal says: ECONNREFUSED where the kernel lets a hook choose (lib/sock.h)
REFUSED = errno.ECONNREFUSED if "-DHAVE_SET_RETVAL" in kernel_feature_flags() else errno.EPERM


@pytest.mark.parametrize("addr", [EMPTY6, mapped(EMPTY4)])
def test_a_frontend_without_endpoints_is_refused_at_connect(env: Env, addr: str) -> None:
    """As IPv4 refuses (lib/sock.h sock_refuse), before any packet is sent."""
    with netns.socket_in(env.ns, socket.AF_INET6) as s:
        s.settimeout(2.0)
        with pytest.raises(OSError) as err:
            s.connect((addr, HTTP))
        assert err.value.errno == REFUSED
    with netns.socket_in(env.ns, socket.AF_INET6, socket.SOCK_DGRAM) as s:
        with pytest.raises(OSError) as err:
            s.sendto(b"q", (addr, DNS))
        assert err.value.errno == REFUSED


@pytest.mark.parametrize("addr", [FRONTEND6, mapped(FRONTEND4)])
def test_sockets_of_another_namespace_are_untouched(env: Env, addr: str) -> None:
    assert _tcp_get(env.other, addr, HTTP) == ("other", (addr, HTTP))
    answers, sources = _udp_exchange(env.other, addr, DNS, 3)
    assert answers == {"other": 3} and sources == {(addr, DNS)}


def test_the_ipv6_hooks_are_pinned_links(env: Env) -> None:
    for name in ("connect6", "sendmsg6", "recvmsg6", "getpeername6"):
        assert f"ebpflb_sock_{name}" in SOCK_PROGRAMS
        assert os.path.exists(os.path.join(env.pin_dir, LINK_PINS[f"ebpflb_sock_{name}"]))
