"""IPv6 and dual-stack Services on the userspace data path, with real traffic between
network namespaces: the proxy (UserspaceDataplane, its threads moved into the node's
namespace) serves DesiredStates built here, and a client namespace reaches backends in
a pod namespace through it.

    client  eth0 10.250.0.100, fd00:192:168:50::64 (::65: a second client address)
      |
    node    cli0 10.250.0.1, fd00:192:168:50::1   ebpflb0: the frontend addresses
            pod0 10.244.0.1, fd00:10:244::1
      |
    pods    eth0 10.244.0.11-13, fd00:10:244::b-d: servers answering pod-1..3

Every address is added without duplicate address detection (nodad), as the frontend
device does (device.py). Covers ClusterIP TCP and UDP balancing, a dual-stack Service
answering on both families at once, NodePort on the node's IPv6 address,
loadBalancerSourceRanges of IPv6, a Service without endpoints, the port filter on
IPv6, and the inspection commands (tables `[addr]:port`, --json plain addresses)."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.userspace.dataplane import UserspaceConfig, UserspaceDataplane
from ebpflb.dataplane.userspace.portfilter import TABLE
from ebpflb.lab import netns
from ebpflb.lab.traffic import Failure, fails
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    IPNetwork,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.lab.conftest import _require_root

pytestmark = pytest.mark.root

IP = ipaddress.ip_address
CLIENT6, OTHER6 = "fd00:192:168:50::64", "fd00:192:168:50::65"
CLIENT4 = "10.250.0.100"
NODE6, NODE4 = "fd00:192:168:50::1", "10.250.0.1"
PODS6 = ("fd00:10:244::b", "fd00:10:244::c", "fd00:10:244::d")
PODS4 = ("10.244.0.11", "10.244.0.12", "10.244.0.13")
NAMES = ("pod-1", "pod-2", "pod-3")
CLUSTER6, CLUSTER4 = "fd00:10:96::a", "10.96.0.10"
STICKY6 = "fd00:10:96::b"
EMPTY6 = "fd00:10:96::c"
LB6 = "fd00:192:168:60::1"
TCP_PORT, UDP_PORT = 8080, 9090  # the pods' ports
NODE_PORT = 30080
NODE_LISTEN_PORT = 2222  # a node process's port (sshd's, say), bound to [::]
SPREAD = 60  # new flows per balance check: P(one pod never chosen) ~ 3 * (2/3)^60


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_ask(ns: str, host: str, port: int, *, source: str | None = None) -> str:
    """One request on a new connection from ns; the answer (the pod's name)."""
    with netns.socket_in(ns, _family(host), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
        s.sendall(b"hi")
        answer = s.recv(100)
        if not answer:
            raise ConnectionResetError("closed without an answer")
        return answer.decode()


def udp_ask(
    ns: str,
    host: str,
    port: int,
    *,
    source: str | None = None,
    timeout: float = 2.0,
    used: set[int] | None = None,
) -> tuple[str, str, int]:
    """One datagram from a new socket in ns; the answer and the address it came from.
    ``used`` collects the client ports: the kernel may hand one out twice, and the
    proxy rightly takes a datagram from a known (address, port) for its session."""
    with netns.socket_in(ns, _family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if source is not None:
            s.bind((source, 0))
        s.sendto(b"hi", (host, port))
        if used is not None:
            used.add(s.getsockname()[1])
        data, src = s.recvfrom(100)
        return data.decode(), src[0], src[1]


class Servers:
    """TCP and UDP servers in the pod namespace, each answering its pod's name."""

    def __init__(self, ns: str) -> None:
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        for name, a4, a6 in zip(NAMES, PODS4, PODS6, strict=True):
            for addr in (a4, a6):
                self._start(ns, name, addr, socket.SOCK_STREAM, TCP_PORT)
                self._start(ns, name, addr, socket.SOCK_DGRAM, UDP_PORT)

    def _start(self, ns: str, name: str, addr: str, kind: int, port: int) -> None:
        s = netns.socket_in(ns, _family(addr), kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.settimeout(0.2)
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        self.socks.append(s)
        serve = self._tcp if kind == socket.SOCK_STREAM else self._udp
        t = threading.Thread(target=serve, args=(s, name.encode()), daemon=True)
        t.start()
        self.threads.append(t)

    def _tcp(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            with c:
                c.settimeout(3)
                try:
                    c.recv(100)
                    c.sendall(name)
                    c.recv(100)  # hold the connection until the client closes it
                except OSError:
                    pass

    def _udp(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                _, peer = s.recvfrom(100)
                s.sendto(name, peer)
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in self.socks:
            s.close()


def _ip(ns: str, *commands: str) -> None:
    netns.ip_batch(ns, list(commands))


def build(prefix: str) -> tuple[str, str, str]:
    node, client, pods = f"{prefix}n", f"{prefix}c", f"{prefix}p"
    for ns in (node, client, pods):
        netns.create(ns)
        _ip(ns, "link set lo up")
    _ip(
        node,
        f"link add cli0 type veth peer name eth0 netns {client}",
        f"link add pod0 type veth peer name eth0 netns {pods}",
        "addr add 10.250.0.1/24 dev cli0",
        f"addr add {NODE6}/64 dev cli0 nodad",
        "addr add 10.244.0.1/24 dev pod0",
        "addr add fd00:10:244::1/64 dev pod0 nodad",
        "link set cli0 up",
        "link set pod0 up",
    )
    _ip(
        client,
        f"addr add {CLIENT4}/24 dev eth0",
        f"addr add {CLIENT6}/64 dev eth0 nodad",
        f"addr add {OTHER6}/64 dev eth0 nodad",
        "link set eth0 up",
        f"route add default via {NODE4}",
        f"route add ::/0 via {NODE6}",
    )
    _ip(
        pods,
        *[f"addr add {a}/24 dev eth0" for a in PODS4],
        *[f"addr add {a}/64 dev eth0 nodad" for a in PODS6],
        "link set eth0 up",
        "route add default via 10.244.0.1",
        "route add ::/0 via fd00:10:244::1",
    )
    return node, client, pods


class Env:
    def __init__(self, node: str, client: str, dp: UserspaceDataplane, state_dir: str) -> None:
        self.node, self.client, self.dp, self.state_dir = node, client, dp, state_dir

    def serve(self, *entries: ServiceEntry) -> None:
        """Make the proxy hold exactly these entries."""
        desired = desired_frontends(DesiredState.build(entries))
        self.dp.apply(diff(self.dp.current(), desired))
        assert set(self.dp.current()) == set(desired)

    def cli(self, command: str, *, as_json: bool = True) -> Any:
        args = [command, "--pin-dir", "/nonexistent", "--state-dir", self.state_dir]
        result = CliRunner().invoke(app, [*args, "--json"] if as_json else args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if as_json else result.output

    def flows(self, want: int) -> list[dict[str, Any]]:
        """The TCP flows of `conntrack --json` once it shows `want` of them (the agent
        publishes its state file within about half a second of a change)."""
        deadline = time.monotonic() + 5.0
        while True:
            flows = [f for f in self.cli("conntrack") if f["protocol"] == "TCP"]
            if len(flows) == want or time.monotonic() > deadline:
                return flows
            time.sleep(0.1)

    def counters(self) -> dict[str, int]:
        return dict(self.dp.telemetry().counters)

    def device_addresses(self) -> set[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.node, "ip", "-j", "addr", "show", "dev", "ebpflb0"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return {a["local"] for link in json.loads(out) for a in link["addr_info"]}


def entry(
    address: str,
    port: int,
    protocol: Protocol,
    pods: tuple[str, ...] = PODS6,
    *,
    name: str = "web",
    kind: FrontendKind = FrontendKind.CLUSTER_IP,
    affinity: int = 0,
    ranges: tuple[IPNetwork, ...] = (),
) -> ServiceEntry:
    target = TCP_PORT if protocol is Protocol.TCP else UDP_PORT
    pn = ServicePortName(ServiceRef("v6", name), protocol.lower(), protocol)
    backends = tuple(sorted(Backend(IP(p), target) for p in pods))
    return ServiceEntry(
        Frontend(IP(address), port, protocol, kind), pn, backends, affinity, source_ranges=ranges
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    prefix = "u6" + secrets.token_hex(3)
    state_dir = str(tmp_path_factory.mktemp("state"))
    servers: Servers | None = None
    dp: UserspaceDataplane | None = None
    try:
        node, client, pods = build(prefix)
        servers = Servers(pods)
        dp = UserspaceDataplane(UserspaceConfig(state_dir=state_dir, netns=netns.path(node)))
        yield Env(node, client, dp, state_dir)
    finally:
        if dp is not None:
            dp.close(cleanup=True)
        if servers is not None:
            servers.close()
        for ns in (f"{prefix}n", f"{prefix}c", f"{prefix}p"):
            netns.delete(ns)


def test_ipv6_clusterip_tcp_and_udp_reach_every_backend(env: Env) -> None:
    env.serve(entry(CLUSTER6, 80, Protocol.TCP), entry(CLUSTER6, 53, Protocol.UDP))
    assert CLUSTER6 in env.device_addresses()  # usable at once: added without DAD
    before = env.counters()
    tcp = Counter(tcp_ask(env.client, CLUSTER6, 80) for _ in range(SPREAD))
    assert set(tcp) == set(NAMES)
    ports: set[int] = set()
    answers = [udp_ask(env.client, CLUSTER6, 53, used=ports) for _ in range(SPREAD)]
    assert {a for a, _, _ in answers} == set(NAMES)
    # Replies come from the frontend address and port, not a pod's nor the node's.
    assert {(src, port) for _, src, port in answers} == {(CLUSTER6, 53)}
    after = env.counters()
    # a new flow per connection, and per UDP session (one per client port)
    assert after["new_flow"] - before["new_flow"] == SPREAD + len(ports)
    assert after["reply"] - before["reply"] == SPREAD


def test_dual_stack_service_answers_on_both_families_at_once(env: Env) -> None:
    env.serve(
        entry(CLUSTER4, 80, Protocol.TCP, PODS4),
        entry(CLUSTER6, 80, Protocol.TCP),
        entry(CLUSTER4, 53, Protocol.UDP, PODS4),
        entry(CLUSTER6, 53, Protocol.UDP),
    )
    # One connection of each family held open at the same time, both relayed.
    held = []
    try:
        for host in (CLUSTER4, CLUSTER6):
            s = netns.socket_in(env.client, _family(host), socket.SOCK_STREAM)
            held.append(s)
            s.settimeout(3)
            s.bind((CLIENT4 if host == CLUSTER4 else CLIENT6, 0))
            s.connect((host, 80))
            s.sendall(b"hi")
            assert s.recv(100).decode() in NAMES
        flows = env.flows(2)
        seen = {(f["client_address"], f["frontend_address"], f["backend_address"]) for f in flows}
        assert {(c, f) for c, f, _ in seen} == {(CLIENT4, CLUSTER4), (CLIENT6, CLUSTER6)}
        # Each family's flow went to a backend of its own family.
        assert all(IP(f).version == IP(b).version for _, f, b in seen)
    finally:
        for s in held:
            s.close()
    for host in (CLUSTER4, CLUSTER6):
        assert set(Counter(tcp_ask(env.client, host, 80) for _ in range(SPREAD))) == set(NAMES)
        answer, src, port = udp_ask(env.client, host, 53)
        assert answer in NAMES and (src, port) == (host, 53)


def test_nodeport_on_the_node_ipv6_address(env: Env) -> None:
    env.serve(
        entry(NODE6, NODE_PORT, Protocol.TCP, kind=FrontendKind.NODE_PORT),
        entry(NODE6, NODE_PORT, Protocol.UDP, kind=FrontendKind.NODE_PORT),
    )
    got = Counter(tcp_ask(env.client, NODE6, NODE_PORT) for _ in range(SPREAD))
    assert set(got) == set(NAMES)
    answer, src, port = udp_ask(env.client, NODE6, NODE_PORT)
    assert answer in NAMES and (src, port) == (NODE6, NODE_PORT)
    # The node's own address stays the node's: not on the frontend device.
    assert NODE6 not in env.device_addresses()
    row = next(r for r in env.cli("services") if r["protocol"] == "TCP")
    assert (row["address"], row["kind"]) == (NODE6, "nodeport")
    assert row["frontend"] == f"[{NODE6}]:{NODE_PORT}/TCP"


def test_ipv6_source_ranges_admit_inside_and_refuse_outside(env: Env) -> None:
    ranges = (ipaddress.IPv6Network(f"{CLIENT6}/128"),)
    kind = FrontendKind.LOAD_BALANCER
    env.serve(
        entry(LB6, 80, Protocol.TCP, kind=kind, ranges=ranges),
        entry(LB6, 53, Protocol.UDP, kind=kind, ranges=ranges),
    )
    assert tcp_ask(env.client, LB6, 80, source=CLIENT6) in NAMES
    assert udp_ask(env.client, LB6, 53, source=CLIENT6)[0] in NAMES
    before = env.counters()["source_range_drop"]
    for _ in range(3):
        with fails(Failure.RESET):  # accepted, then reset: the proxy cannot drop a SYN
            tcp_ask(env.client, LB6, 80, source=OTHER6)
    with fails(Failure.TIMEOUT):
        udp_ask(env.client, LB6, 53, source=OTHER6, timeout=0.5)
    assert env.counters()["source_range_drop"] - before == 4


def test_ipv6_service_without_endpoints_is_refused(env: Env) -> None:
    """As on IPv4: the proxy has accepted the connection by then and resets it; a
    datagram is dropped; both counted as no_backend."""
    env.serve(entry(EMPTY6, 80, Protocol.TCP, ()), entry(EMPTY6, 53, Protocol.UDP, ()))
    before = env.counters()["no_backend"]
    started = time.monotonic()
    with fails(Failure.RESET):
        tcp_ask(env.client, EMPTY6, 80)
    assert time.monotonic() - started < 1.0
    with fails(Failure.TIMEOUT):
        udp_ask(env.client, EMPTY6, 53, timeout=0.5)
    assert env.counters()["no_backend"] - before == 2


def test_port_filter_closes_other_ports_of_ipv6_frontends(env: Env) -> None:
    env.serve(entry(CLUSTER6, 80, Protocol.TCP), entry(CLUSTER6, 53, Protocol.UDP))
    ruleset = subprocess.run(
        ["ip", "netns", "exec", env.node, "nft", "list", "table", "inet", TABLE],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert f"{CLUSTER6} . tcp . 80" in ruleset and f"{CLUSTER6} . udp . 53" in ruleset
    with (
        netns.socket_in(env.node, socket.AF_INET6, socket.SOCK_STREAM) as tcp,
        netns.socket_in(env.node, socket.AF_INET6, socket.SOCK_DGRAM) as udp,
    ):
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("::", NODE_LISTEN_PORT))
        tcp.listen(8)
        udp.bind(("::", NODE_LISTEN_PORT))
        udp.settimeout(0.5)
        # The node's listeners answer at the node's own address: the test can fail.
        with netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_STREAM) as c:
            c.settimeout(2)
            c.connect((NODE6, NODE_LISTEN_PORT))
        tcp.accept()[0].close()
        for _ in range(3):
            with (
                netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_STREAM) as c,
                fails(Failure.REFUSED),
            ):  # a RST answers the SYN
                c.settimeout(2)
                c.connect((CLUSTER6, NODE_LISTEN_PORT))
        with netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.connect((CLUSTER6, NODE_LISTEN_PORT))
            c.send(b"x")
            with fails(Failure.REFUSED):  # ICMPv6 port unreachable
                c.recv(100)
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)  # nothing reached the node's socket
    # The Service ports are served; ICMPv6 passes (the ClusterIP answers ping).
    assert tcp_ask(env.client, CLUSTER6, 80) in NAMES
    assert udp_ask(env.client, CLUSTER6, 53)[0] in NAMES
    netns.run(env.client, ["ping", "-6", "-c", "1", "-W", "2", CLUSTER6])


def test_ipv6_session_affinity_holds(env: Env) -> None:
    env.serve(
        entry(STICKY6, 80, Protocol.TCP, affinity=60),
        entry(STICKY6, 53, Protocol.UDP, affinity=60),
    )
    tcp = {tcp_ask(env.client, STICKY6, 80, source=CLIENT6) for _ in range(30)}
    ports: set[int] = set()
    udp = {udp_ask(env.client, STICKY6, 53, source=CLIENT6, used=ports)[0] for _ in range(30)}
    assert len(tcp) == 1 and len(udp) == 1
    # A client port drawn twice is the session it already has, not a new choice:
    # every TCP connection after the first, and every UDP port after the first.
    assert env.counters()["affinity_hit"] >= 29 + len(ports) - 1


def test_views_show_ipv6_as_the_kernel_path_does(env: Env) -> None:
    env.serve(
        entry(CLUSTER4, 80, Protocol.TCP, PODS4),
        entry(CLUSTER6, 80, Protocol.TCP),
    )
    with netns.socket_in(env.client, socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.bind((CLIENT6, 0))
        s.connect((CLUSTER6, 80))
        s.sendall(b"hi")
        assert s.recv(100)
        client_port = s.getsockname()[1]
        services = env.cli("services")
        backends = env.cli("backends")
        flows = env.flows(1)
        table = env.cli("services", as_json=False)
    # IPv4 first, then IPv6; plain addresses in --json, `[addr]:port` in frontends.
    assert [r["frontend"] for r in services] == [
        f"{CLUSTER4}:80/TCP",
        f"[{CLUSTER6}]:80/TCP",
    ]
    assert services[1]["address"] == CLUSTER6 and services[1]["port"] == 80
    assert f"[{CLUSTER6}]:80/TCP" in table
    v6 = [r for r in backends if r["frontend"] == f"[{CLUSTER6}]:80/TCP"]
    assert sorted(r["address"] for r in v6) == sorted(PODS6)
    assert {r["port"] for r in v6} == {TCP_PORT}
    (flow,) = flows
    assert flow["client_address"] == CLIENT6 and flow["client_port"] == client_port
    assert flow["frontend_address"] == CLUSTER6 and flow["frontend_port"] == 80
    assert flow["backend_address"] in PODS6 and flow["backend_port"] == TCP_PORT
    stats = env.cli("stats")
    keys = {r["frontend"] for r in stats["services"]}
    assert f"[{CLUSTER6}]:80/TCP" in keys


def test_no_ipv6_address_left_on_the_device_after_the_service_goes(env: Env) -> None:
    env.serve(entry(CLUSTER6, 80, Protocol.TCP))
    assert CLUSTER6 in env.device_addresses()
    env.serve()
    left = env.device_addresses()
    assert CLUSTER6 not in left
    assert all(IP(a).is_link_local for a in left)  # the device's own fe80:: stays
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):  # no route on the node any more
        tcp_ask(env.client, CLUSTER6, 80)
