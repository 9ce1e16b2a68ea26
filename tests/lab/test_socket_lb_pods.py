"""Socket-LB for pods (--socket-lb pods): a pod's socket is sent to a backend at
connect()/sendmsg(), so tc never translates its packets (no new flow, no conntrack
entry), and each node's agent serves only its own pods' namespaces, though the lab's
nodes share one machine's cgroups. With --socket-lb host, pods go through tc as before;
with off, no hook is left. A two-node dual-stack lab, on every node shape."""

from __future__ import annotations

import ctypes
import errno
import json
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.loader import kernel_feature_flags
from ebpflb.dataplane.bpf.socklb import pinned_links, remove_links
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess

from . import manifests as k8s
from .conftest import CNIS, _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

IP4, IP6 = "10.96.5.10", "fd00:10:96::5:a"
EMPTY4, EMPTY6 = "10.96.5.11", "fd00:10:96::5:b"
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
SO_NETNS_COOKIE = 71
FAMILIES = [(socket.AF_INET, IP4, EMPTY4), (socket.AF_INET6, IP6, EMPTY6)]


def cookie_of(ns: str) -> int:
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        value: int = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    return value


class Cluster:
    def __init__(self, lab: layout.Lab, manifests: Path, pins: list[str]) -> None:
        self.lab, self.manifests, self.pins = lab, manifests, pins
        self.agents: list[AgentProcess] = []

    def start(self, mode: str) -> None:
        for agent in self.agents:
            agent.stop()
        self.agents = []
        for k, pin_dir in enumerate(self.pins, start=1):
            self.agents.append(
                AgentProcess(
                    self.lab.node(k).netns,
                    manifests=self.manifests,
                    pin_dir=pin_dir,
                    log_path=self.lab.state_dir / f"agent-{k}.log",
                    extra_args=[
                        *("--cleanup", "--dataplane", "bpf", "--node-name", f"node-{k}"),
                        *("--state-dir", str(self.manifests.parent / f"state-{k}")),
                        *("--socket-lb", mode),
                    ],
                ).start()
            )
        for k, agent in enumerate(self.agents, start=1):
            agent.wait_ready()
            want = self.pod_cookies(k) if mode == "pods" else set()
            agent.wait_for(self._serves(k, want), what=f"node-{k} serves {want}")

    def _serves(self, k: int, want: set[int]) -> Callable[[], bool]:
        return lambda: self.served(k) == want

    def pod_cookies(self, k: int) -> set[int]:
        """The netns cookies of node k's pods and client: what its agent must serve."""
        spaces = [p.netns for p in self.lab.pods if p.node == k] + [self.lab.node(k).client.netns]
        return {cookie_of(ns) for ns in spaces}

    def served(self, k: int) -> set[int]:
        with PinnedMap(f"{self.pins[k - 1]}/{abi.MAP_SOCK_NETNS}") as m:
            return {key.value for key in m.keys(ctypes.c_uint64)}

    def counters(self, k: int) -> dict[str, int]:
        return kernel_counters(self.pins[k - 1])

    def flows_of(self, k: int, client: str) -> list[object]:
        out = CliRunner().invoke(app, ["conntrack", "--json", "--pin-dir", self.pins[k - 1]])
        assert out.exit_code == 0, out.output
        return [f for f in json.loads(out.output) if f["client_address"] == client]


@pytest.fixture(scope="module", params=CNIS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    _require_root()
    name = unique_lab_name()
    pins = [f"/sys/fs/bpf/ebpflb-{name}-{k}-{secrets.token_hex(2)}" for k in (1, 2)]
    manifests = tmp_path_factory.mktemp("socklbpods") / "manifests"
    manifests.mkdir()
    spec = layout.LabSpec(name, pods=2, nodes=2, cni=request.param, ipv6=True)
    c = Cluster(build.up(spec), manifests, pins)
    try:
        lab = c.lab
        k8s.write(manifests, "nodes", [lab.node_manifest(1), lab.node_manifest(2)])
        k8s.write(
            manifests,
            "web",
            [
                k8s.service("web", [IP4, IP6], PORTS),
                k8s.endpoint_slice("web-4", "web", SLICE, [lab.endpoint(p) for p in lab.pods]),
                k8s.endpoint_slice(
                    "web-6",
                    "web",
                    SLICE,
                    [lab.endpoint(p, ipv6=True) for p in lab.pods],
                    address_type="IPv6",
                ),
                k8s.service("empty", [EMPTY4, EMPTY6], PORTS),
                k8s.endpoint_slice("empty-4", "empty", SLICE, []),
                k8s.endpoint_slice("empty-6", "empty", SLICE, [], address_type="IPv6"),
            ],
        )
        c.start("pods")
        yield c
    finally:
        for agent in c.agents:
            agent.stop()
        for pin_dir in pins:
            remove_links(pin_dir)
        build.down(name)
        for pin_dir in pins:
            remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def _pods(c: Cluster) -> set[str]:
    return {f"{p.name}\n" for p in c.lab.pods}


def _client(c: Cluster, k: int, family: int) -> tuple[str, str]:
    client = c.lab.node(k).client
    return client.netns, str(client.ip if family == socket.AF_INET else client.ip6)


@pytest.mark.parametrize(("family", "ip", "_empty"), FAMILIES)
def test_a_pods_tcp_connect_goes_straight_to_a_backend(
    cluster: Cluster, family: int, ip: str, _empty: str
) -> None:
    ns, address = _client(cluster, 1, family)
    before = cluster.counters(1)
    for _ in range(10):
        with netns.socket_in(ns, family) as s:
            s.settimeout(2.0)
            s.connect((ip, 80))
            assert s.getpeername()[:2] == (ip, 80)  # the ClusterIP, not the pod
            s.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply.decode().split("\r\n\r\n", 1)[1] in _pods(cluster)
    after = cluster.counters(1)
    assert after["sock_lb"] >= before["sock_lb"] + 10
    assert after["new_flow"] == before["new_flow"]  # tc never saw a frontend
    assert cluster.flows_of(1, address) == []


@pytest.mark.parametrize(("family", "ip", "_empty"), FAMILIES)
def test_a_pods_unconnected_udp_socket_sticks_to_one_backend(
    cluster: Cluster, family: int, ip: str, _empty: str
) -> None:
    ns, _ = _client(cluster, 1, family)
    before = cluster.counters(1)["new_flow"]
    answers = set()
    with netns.socket_in(ns, family, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for _ in range(20):
            s.sendto(b"x", (ip, 53))
            data, source = s.recvfrom(100)
            assert source[:2] == (ip, 53)
            answers.add(data.decode())
    assert len(answers) == 1 and answers <= _pods(cluster)
    assert cluster.counters(1)["new_flow"] == before


@pytest.mark.parametrize(("family", "_ip", "empty"), FAMILIES)
def test_a_pods_connect_to_a_service_without_endpoints_is_refused(
    cluster: Cluster, family: int, _ip: str, empty: str
) -> None:
    refused = errno.ECONNREFUSED if "-DHAVE_SET_RETVAL" in kernel_feature_flags() else errno.EPERM
    ns, _ = _client(cluster, 1, family)
    with netns.socket_in(ns, family) as s:
        s.settimeout(2.0)
        with pytest.raises(OSError) as err:
            s.connect((empty, 80))
        assert err.value.errno == refused  # at connect(), no packet sent


def test_each_agent_serves_only_its_own_nodes_pods(cluster: Cluster) -> None:
    one, two = cluster.served(1), cluster.served(2)
    assert one == cluster.pod_cookies(1) and two == cluster.pod_cookies(2)
    assert not one & two
    before = [cluster.counters(k)["sock_lb"] for k in (1, 2)]
    assert set(traffic.spread_tcp(cluster.lab.node(2).client.netns, IP4, 80, 5)) <= _pods(cluster)
    after = [cluster.counters(k)["sock_lb"] for k in (1, 2)]
    assert after[0] == before[0]  # node 1's hooks left node 2's client alone
    assert after[1] >= before[1] + 5


def test_a_pod_reaching_its_own_service_may_get_itself(cluster: Cluster) -> None:
    """Hairpin without the hairpin NAT: the pod simply connects to its own address."""
    pod = next(p for p in cluster.lab.pods if p.node == 1)
    before = cluster.counters(1)
    answers = traffic.spread_tcp(pod.netns, IP4, 80, 30)
    assert f"{pod.name}\n" in answers and set(answers) <= _pods(cluster)
    assert cluster.counters(1)["new_flow"] == before["new_flow"]


def test_host_mode_leaves_pods_to_tc_and_off_removes_the_hooks(cluster: Cluster) -> None:
    ns, address = _client(cluster, 1, socket.AF_INET)
    try:
        cluster.start("host")  # waits for empty namespace sets
        before = cluster.counters(1)
        assert traffic.http_get(ns, IP4, 80) in _pods(cluster)
        after = cluster.counters(1)
        assert after["new_flow"] >= before["new_flow"] + 1
        assert after["sock_lb"] == before["sock_lb"]
        assert cluster.flows_of(1, address)
        cluster.start("off")
        assert pinned_links(cluster.pins[0]) == {}
        assert traffic.http_get(ns, IP4, 80) in _pods(cluster)  # tc still serves pods
    finally:
        cluster.start("pods")
    assert cluster.served(1) == cluster.pod_cookies(1)
