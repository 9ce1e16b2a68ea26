"""Cross-node Service semantics over IPv6 and dual-stack, with real traffic on a
two-node dual-stack lab (`LabSpec(ipv6=True)`): an agent per node (its own pins and
state, --node-name, the Node objects carrying both InternalIPs), on each data path and
each node shape (routed; bridge with the VXLAN overlay). The IPv6 twin of
test_multinode.py, plus a dual-stack NodePort.

node-1: pod-1, pod-2 (fd00:10:244::b, ::c), client ::c8, uplink fd00:192:168:50::1
node-2: pod-3, pod-4 (fd00:10:244:1::d, ::e), client ::c8, uplink fd00:192:168:50::2
outside: ext-1 fd00:192:168:50::65, ext-2 ::66 (fd00:192:168:60::/64 routed to node-1)

The userspace data path is a proxy: a backend always sees the node that proxied, so
the checks of an outside client's address kept (externalTrafficPolicy: Local) and of
the kernel path's conntrack NAT columns are the kernel path's only; everything else
runs on both.
"""

from __future__ import annotations

import functools
import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.serving import serving_backends
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090}
SLICE_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
CLUSTER_IP4 = "10.96.6.10"
CLUSTER_IP6 = "fd00:10:96::60"
LB_IP6 = "fd00:192:168:60::10"
EXTERNAL_IP6 = "fd00:192:168:60::11"
SETUPS = [(cni, dp) for cni in CNIS for dp in ("bpf", "userspace")]

Wait = dict[str, dict[str, set[str]]]  # node -> frontend -> backends new flows go to


def fe(address: str, port: int, proto: str = "TCP") -> str:
    """A frontend as the data paths' views print it: ``[addr]:port/TCP`` for IPv6."""
    return f"{traffic.host_port(address, port)}/{proto}"


def names(pods: list[int]) -> set[str]:
    return {f"pod-{i}\n" for i in pods}


@dataclass
class Cluster:
    lab: layout.Lab
    dataplane: str
    manifests: Path
    pins: list[str]
    state_dirs: list[str]

    def __post_init__(self) -> None:
        self.agents: list[AgentProcess] = []

    @property
    def bpf(self) -> bool:
        return self.dataplane == "bpf"

    def start(self, *extra: str) -> None:
        for k, pin_dir in enumerate(self.pins, start=1):
            agent = AgentProcess(
                self.lab.node(k).netns,
                manifests=self.manifests,
                pin_dir=pin_dir,
                log_path=self.lab.state_dir / f"agent-{self.dataplane}-{k}.log",
                extra_args=[
                    "--cleanup",
                    "--dataplane",
                    self.dataplane,
                    "--node-name",
                    f"node-{k}",
                    "--state-dir",
                    self.state_dirs[k - 1],
                    *extra,
                ],
            )
            self.agents.append(agent.start())
        for agent in self.agents:
            agent.wait_ready(timeout=60)

    def restart(self, *extra: str) -> None:
        for agent in self.agents:
            assert agent.stop() == 0, agent.log_text()[-3000:]
        self.agents = []
        self.start(*extra)

    def node6(self, k: int) -> str:
        return str(self.lab.node(k).address6)

    def node4(self, k: int) -> str:
        return str(self.lab.node(k).address)

    def client(self, k: int) -> str:
        return self.lab.node(k).client.netns

    def ext(self, j: int) -> str:
        return self.lab.outside[j - 1].netns

    def ext6(self, j: int) -> str:
        return str(self.lab.outside[j - 1].ip6)

    def ips6(self, pods: list[int]) -> set[str]:
        return {str(self.lab.ip6(self.lab.pod(i))) for i in pods}

    def ips4(self, pods: list[int]) -> set[str]:
        return {str(self.lab.pod(i).ip) for i in pods}

    def publish(
        self,
        name: str,
        *,
        wait: Wait,
        eps6: list[dict[str, Any]],
        eps4: list[dict[str, Any]] | None = None,
        status: Any = None,
        slice_ports: list[dict[str, Any]] | None = None,
        **spec: Any,
    ) -> None:
        """Replace every Service with this one, IPv6 single-stack (or dual-stack when
        ``eps4`` is given: ClusterIPs CLUSTER_IP4 then CLUSTER_IP6), and wait until
        each node's data path holds ``wait``."""
        for f in self.manifests.glob("*.json"):
            if f.name != "nodes.json":
                f.unlink()
        ports = spec.pop("ports", [HTTP, DNS])
        cluster_ips = [spec.pop("clusterIP", CLUSTER_IP6)]
        if eps4 is not None:
            cluster_ips.insert(0, CLUSTER_IP4)
        svc = k8s.service(
            name,
            cluster_ips[0],
            ports,
            clusterIPs=cluster_ips,
            ipFamilies=[f"IPv{ip_address(a).version}" for a in cluster_ips],
            ipFamilyPolicy="RequireDualStack" if eps4 is not None else "SingleStack",
            **spec,
        )
        if status is not None:
            svc["status"] = status
        sp = slice_ports or SLICE_PORTS
        objs = [svc, _slice(f"{name}-v6", name, sp, eps6, family=6)]
        if eps4 is not None:
            objs.append(_slice(f"{name}-v4", name, sp, eps4, family=4))
        k8s.write(self.manifests, name, objs)
        for k, agent in enumerate(self.agents, start=1):
            expected = wait.get(f"node-{k}", {})
            agent.wait_for(self._serves(k, expected), what=f"node-{k} serves {expected}")

    def _serves(self, k: int, expected: dict[str, set[str]]) -> Callable[[], bool]:
        def check() -> bool:
            return all(
                serving_backends(
                    self.dataplane,
                    frontend,
                    pin_dir=self.pins[k - 1],
                    state_dir=self.state_dirs[k - 1],
                )
                == want
                for frontend, want in expected.items()
            )

        return check

    def local6(self, k: int) -> set[str]:
        """Node k's own IPv6 addresses, as its kernel reports them."""
        out = json.loads(netns.run(self.lab.node(k).netns, ["ip", "-j", "-6", "addr"]).stdout)
        return {a["local"] for link in out for a in link["addr_info"]}

    def cli_json(self, k: int, *command: str) -> Any:
        out = CliRunner().invoke(
            app,
            [
                *command,
                "--json",
                "--pin-dir",
                self.pins[k - 1],
                "--state-dir",
                self.state_dirs[k - 1],
            ],
        )
        assert out.exit_code == 0, out.output
        return json.loads(out.output)

    def counter(self, k: int, name: str) -> int:
        return int(self.cli_json(k, "stats")["counters"][name])


def _slice(
    name: str, svc: str, ports: list[dict[str, Any]], eps: list[dict[str, Any]], *, family: int
) -> dict[str, Any]:
    sl = k8s.endpoint_slice(name, svc, ports, eps)
    sl["addressType"] = f"IPv{family}"
    return sl


@pytest.fixture(scope="module", params=SETUPS, ids=[f"{c}-{d}" for c, d in SETUPS])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    _require_root()
    cni, dataplane = request.param
    name = unique_lab_name()
    pins = [f"/sys/fs/bpf/ebpflb-{name}-{k}-{secrets.token_hex(2)}" for k in (1, 2)]
    base = tmp_path_factory.mktemp("ipv6-multinode")
    manifests = base / "manifests"
    manifests.mkdir()
    lab = build.up(layout.LabSpec(name, pods=2, nodes=2, cni=cni, ipv6=True))
    c = Cluster(lab, dataplane, manifests, pins, [str(base / f"state-{k}") for k in (1, 2)])
    try:
        k8s.write(manifests, "nodes", [lab.node_manifest(1), lab.node_manifest(2)])
        c.start()
        yield c
    finally:
        for agent in c.agents:
            agent.stop()
        build.down(name)
        for pin_dir in pins:
            remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def test_clusterip6_from_a_pod_to_backends_on_the_other_node(cluster: Cluster) -> None:
    """Replies of a backend on the other node cross the underlay (or the overlay)
    untranslated and are translated back at the client's node."""
    remote = cluster.ips6([3, 4])
    cluster.publish(
        "remote",
        eps6=[cluster.lab.endpoint(i, ipv6=True) for i in (3, 4)],
        wait={"node-1": {fe(CLUSTER_IP6, 80): remote, fe(CLUSTER_IP6, 53, "UDP"): remote}},
    )
    assert set(traffic.spread_tcp(cluster.client(1), CLUSTER_IP6, 80, 30)) == names([3, 4])
    answer, source = traffic.udp_request(cluster.client(1), CLUSTER_IP6, 53, b"whoami")
    # the backend sees the pod client's own address (no source NAT for a ClusterIP);
    # behind the proxy, an address of node-1
    pod, seen = answer.split()
    assert pod in {"pod-3", "pod-4"}
    if cluster.bpf:
        assert seen == str(cluster.lab.node(1).client.ip6)
    else:
        assert seen in cluster.local6(1)
    assert source == (CLUSTER_IP6, 53)


def test_nodeport6_cluster_policy_reaches_every_backend_source_nated(cluster: Cluster) -> None:
    ports = [dict(HTTP, nodePort=30080), dict(DNS, nodePort=30053)]
    every = cluster.ips6([1, 2, 3, 4])
    wait = {f"node-{k}": {fe(cluster.node6(k), 30080): every} for k in (1, 2)}
    cluster.publish(
        "np",
        eps6=[cluster.lab.endpoint(i, ipv6=True) for i in (1, 2, 3, 4)],
        type="NodePort",
        wait=wait,
        ports=ports,
    )
    for k in (1, 2):
        node = cluster.node6(k)
        assert set(traffic.spread_tcp(cluster.ext(1), node, 30080, 60)) == names([1, 2, 3, 4])
        answer, source = traffic.udp_request(cluster.ext(1), node, 30053)
        assert answer in names([1, 2, 3, 4]) and source == (node, 30053)
        # a backend never sees the outside client: source NAT to a node address
        seen = {
            traffic.udp_request(cluster.ext(1), node, 30053, b"whoami")[0].split()[1]
            for _ in range(16)
        }
        assert cluster.ext6(1) not in seen, seen
        # (the kernel path's SNAT address, or the address a proxy's socket got)
        assert seen <= cluster.local6(k) | {str(abi.HAIRPIN_ADDRESS6)}, seen
    if cluster.bpf:
        assert cluster.counter(1, "snat") > 0 and cluster.counter(2, "snat") > 0
        for k in (1, 2):  # the flows' NAT source: the node's IPv6 address
            flows = [
                f
                for f in cluster.cli_json(k, "conntrack")
                if f["frontend_address"] == cluster.node6(k) and f["frontend_port"] == 30053
            ]
            assert flows and all(
                f["client_address"] == cluster.ext6(1)
                and f["snat_address"] == cluster.node6(k)
                and abi.NAT_PORT_MIN <= f["snat_port"] < abi.NAT_PORT_MIN + abi.NAT_PORT_COUNT
                for f in flows
            ), flows


def test_nodeport6_local_policy_only_local_backends(cluster: Cluster) -> None:
    ports = [dict(HTTP, nodePort=30081), dict(DNS, nodePort=30054)]
    wait: Wait = {
        "node-1": {fe(cluster.node6(1), 30081): cluster.ips6([1])},
        "node-2": {fe(cluster.node6(2), 30081): set()},
    }
    cluster.publish(
        "local",
        eps6=[
            cluster.lab.endpoint(1, ipv6=True),
            cluster.lab.endpoint(3, ipv6=True, ready=False),
        ],
        type="NodePort",
        externalTrafficPolicy="Local",
        wait=wait,
        ports=ports,
    )
    node1 = cluster.node6(1)
    assert traffic.spread_tcp(cluster.ext(1), node1, 30081, 20) == {"pod-1\n": 20}
    answer, source = traffic.udp_request(cluster.ext(1), node1, 30054, b"whoami")
    assert source == (node1, 30054)
    if cluster.bpf:  # the client's address kept (a proxy cannot)
        assert answer == f"pod-1 {cluster.ext6(1)}\n"
    else:
        assert answer.split()[0] == "pod-1"
    # node-2 has no local endpoint: the kernel path drops at its NodePort, as
    # kube-proxy does; the proxy has accepted by then and resets; both count it
    before = cluster.counter(2, "no_backend")
    with fails(Failure.TIMEOUT if cluster.bpf else Failure.RESET):
        traffic.http_get(cluster.ext(1), cluster.node6(2), 30081, timeout=1.0)
    cluster.agents[1].wait_for(
        lambda: cluster.counter(2, "no_backend") > before, timeout=5, what="no_backend counted"
    )


def test_nodeport6_of_a_service_without_endpoints_refuses(cluster: Cluster) -> None:
    """No endpoint anywhere: refused at once from outside over IPv6 (the kernel path
    answers the SYN with a RST and UDP with an ICMPv6 port unreachable, as
    kube-proxy's REJECT; the proxy, which has accepted, resets)."""
    ports = [dict(HTTP, nodePort=30090), dict(DNS, nodePort=30058)]
    wait: Wait = {f"node-{k}": {fe(cluster.node6(k), 30090): set()} for k in (1, 2)}
    cluster.publish("empty", eps6=[], type="NodePort", ports=ports, wait=wait)
    for k in (1, 2):
        # (The port unreachable that answers the first SYN arrives while connect()
        # still holds the socket, within the same softirq on these veths: Linux's
        # tcp_v6_err keeps it as a soft error (TcpExtLockDroppedIcmps), and the
        # answer to the SYN retransmitted after 1 s refuses; IPv4 is refused at once
        # in the same race (kernel 6.18). Hence 3 s.)
        with fails(Failure.REFUSED if cluster.bpf else Failure.RESET):
            traffic.http_get(cluster.ext(1), cluster.node6(k), 30090, timeout=3.0)
        if cluster.bpf:
            with netns.socket_in(cluster.ext(1), socket.AF_INET6, socket.SOCK_DGRAM) as u:
                u.settimeout(1.0)
                u.connect((cluster.node6(k), 30058))
                u.send(b"x")
                with fails(Failure.REFUSED):
                    u.recv(100)
    if cluster.bpf:
        assert cluster.counter(1, "reject") >= 2 and cluster.counter(2, "reject") >= 2


def test_load_balancer_ip6_with_source_ranges_and_external_ip6(cluster: Cluster) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": LB_IP6}]}}
    every = cluster.ips6([1, 2, 3, 4])
    wait = {f"node-{k}": {fe(LB_IP6, 80): every, fe(EXTERNAL_IP6, 80): every} for k in (1, 2)}
    cluster.publish(
        "lb",
        eps6=[cluster.lab.endpoint(i, ipv6=True) for i in (1, 2, 3, 4)],
        type="LoadBalancer",
        status=status,
        externalIPs=[EXTERNAL_IP6],
        loadBalancerSourceRanges=[f"{cluster.ext6(1)}/128", "fd00:dead::/32"],
        ports=[dict(HTTP, nodePort=30082), dict(DNS, nodePort=30055)],
        wait=wait,
    )
    assert set(traffic.spread_tcp(cluster.ext(1), LB_IP6, 80, 60)) == names([1, 2, 3, 4])
    answer, source = traffic.udp_request(cluster.ext(1), LB_IP6, 53)
    assert answer in names([1, 2, 3, 4]) and source == (LB_IP6, 53)
    before = cluster.counter(1, "source_range_drop")
    if cluster.bpf:
        with fails(Failure.TIMEOUT):
            traffic.http_get(cluster.ext(2), LB_IP6, 80, timeout=1.0)
    else:  # the proxy accepts, then resets the connection of a client not admitted
        with fails(Failure.RESET):
            traffic.http_get(cluster.ext(2), LB_IP6, 80, timeout=1.0)
    with fails(Failure.TIMEOUT):
        traffic.udp_request(cluster.ext(2), LB_IP6, 53, timeout=0.5)
    cluster.agents[0].wait_for(
        lambda: cluster.counter(1, "source_range_drop") >= before + 2,
        timeout=5,
        what="the source-range drops counted",
    )
    # the external IP has no source ranges (kube-proxy applies them to ingress IPs
    # only): ext-2 is served there, and so are the pods of both nodes
    assert set(traffic.spread_tcp(cluster.ext(2), EXTERNAL_IP6, 80, 60)) == names([1, 2, 3, 4])
    answer, source = traffic.udp_request(cluster.ext(2), EXTERNAL_IP6, 53)
    assert answer in names([1, 2, 3, 4]) and source == (EXTERNAL_IP6, 53)
    for k in (1, 2):
        assert set(traffic.spread_tcp(cluster.client(k), EXTERNAL_IP6, 80, 30)) <= names(
            [1, 2, 3, 4]
        )


def _health(ns: str, address: str, port: int) -> tuple[int, dict[str, Any]]:
    with netns.socket_in(ns, socket.AF_INET6) as s:
        s.settimeout(2.0)
        s.connect((address, port))
        s.sendall(
            f"GET / HTTP/1.1\r\nHost: [{address}]:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_health_check_node_port_over_ipv6(cluster: Cluster) -> None:
    """Each node answers its healthCheckNodePort at its IPv6 address with its own count
    of local endpoints (503 when none)."""
    status = {"loadBalancer": {"ingress": [{"ip": LB_IP6}]}}
    wait: Wait = {
        "node-1": {fe(LB_IP6, 80): cluster.ips6([1, 2])},
        "node-2": {fe(LB_IP6, 80): set()},
    }
    cluster.publish(
        "hc",
        eps6=[cluster.lab.endpoint(i, ipv6=True) for i in (1, 2)],
        type="LoadBalancer",
        status=status,
        externalTrafficPolicy="Local",
        healthCheckNodePort=32100,
        ports=[dict(HTTP, nodePort=30083), dict(DNS, nodePort=30056)],
        wait=wait,
    )
    for k, code, count in ((1, 200, 2), (2, 503, 0)):
        assert _health(cluster.ext(1), cluster.node6(k), 32100) == (
            code,
            {
                "service": {"namespace": "demo", "name": "hc"},
                "localEndpoints": count,
                "serviceProxyHealthy": True,
            },
        )


def test_dual_stack_nodeport_answers_on_both_families_node_addresses(cluster: Cluster) -> None:
    ports = [dict(HTTP, nodePort=30084), dict(DNS, nodePort=30057)]
    every = [1, 2, 3, 4]
    wait = {
        f"node-{k}": {
            fe(cluster.node6(k), 30084): cluster.ips6(every),
            fe(cluster.node4(k), 30084): cluster.ips4(every),
        }
        for k in (1, 2)
    }
    cluster.publish(
        "dual",
        eps6=[cluster.lab.endpoint(i, ipv6=True) for i in every],
        eps4=[cluster.lab.endpoint(i) for i in every],
        type="NodePort",
        ports=ports,
        wait=wait,
    )
    for k in (1, 2):
        for node in (cluster.node4(k), cluster.node6(k)):
            assert set(traffic.spread_tcp(cluster.ext(2), node, 30084, 60)) == names(every)
            answer, source = traffic.udp_request(cluster.ext(2), node, 30057)
            assert answer in names(every) and source == (node, 30057)
    # and both ClusterIPs, from a pod
    for cip in (CLUSTER_IP4, CLUSTER_IP6):
        assert set(traffic.spread_tcp(cluster.client(2), cip, 80, 60)) == names(every)


def _serve_http(sock: socket.socket, body: bytes, stop: threading.Event) -> None:
    """A host-network server: one short HTTP answer per connection, until stop."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(2.0)
            conn.recv(4096)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )


def test_host_network_backend6_answers_as_the_service(cluster: Cluster) -> None:
    """A backend in node-1's own namespace at its IPv6 address: its replies leave the
    node's stack (no ingress hook sees them) and are translated on the client's veth
    (node-1) or on node-2's uplink/overlay."""
    node6 = cluster.node6(1)
    stop = threading.Event()
    with netns.socket_in(cluster.lab.node(1).netns, socket.AF_INET6) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((node6, 7443))
        server.listen(64)
        thread = threading.Thread(target=_serve_http, args=(server, b"host-1\n", stop))
        thread.start()
        try:
            ep = k8s.endpoint(node6, node="node-1")
            cluster.publish(
                "kubernetes",
                eps6=[ep],
                clusterIP="fd00:10:96::1",
                ports=[{"name": "https", "port": 80, "protocol": "TCP", "targetPort": 7443}],
                slice_ports=[{"name": "https", "port": 7443, "protocol": "TCP"}],
                wait={f"node-{k}": {fe("fd00:10:96::1", 80): {node6}} for k in (1, 2)},
            )
            for k in (1, 2):
                assert traffic.spread_tcp(cluster.client(k), "fd00:10:96::1", 80, 5) == {
                    "host-1\n": 5
                }
        finally:
            stop.set()
            thread.join(5)


def _udp_from(ns: str, port: int, address: str, dport: int) -> str:
    """One UDP request from a fixed source port (the same 5-tuple every time); the
    answer must come back from the address asked."""
    with netns.socket_in(ns, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(2.0)
        sock.bind(("::", port))
        sock.sendto(b"x", (address, dport))
        data, source = sock.recvfrom(100)
        assert source[:2] == (address, dport)
        return data.decode()


def test_maglev_sends_an_ipv6_flow_to_the_same_backend_through_either_node(
    cluster: Cluster,
) -> None:
    """With --lb-algorithm maglev, both nodes choose the same backend for the same IPv6
    flow: the outside client's load-balancer traffic moved from node-1 to node-2 (as
    an ECMP change would) still reaches the same pods. (At random, 20 flows would all
    agree with a chance of 1 in 4**20.)"""
    ext = cluster.ext(1)
    cluster.restart("--lb-algorithm", "maglev")
    try:
        status = {"loadBalancer": {"ingress": [{"ip": LB_IP6}]}}
        every = cluster.ips6([1, 2, 3, 4])
        wait = {f"node-{k}": {fe(LB_IP6, 53, "UDP"): every} for k in (1, 2)}
        cluster.publish(
            "mg",
            eps6=[cluster.lab.endpoint(i, ipv6=True) for i in (1, 2, 3, 4)],
            type="LoadBalancer",
            status=status,
            wait=wait,
            ports=[dict(HTTP, nodePort=30085), dict(DNS, nodePort=30059)],
        )
        ports = range(42000, 42020)
        via_1 = [_udp_from(ext, p, LB_IP6, 53) for p in ports]
        lb_net = str(layout.LB_NET6)
        netns.ip_batch(ext, [f"route replace {lb_net} via {cluster.node6(2)}"])
        try:
            via_2 = [_udp_from(ext, p, LB_IP6, 53) for p in ports]
        finally:
            netns.ip_batch(ext, [f"route replace {lb_net} via {cluster.node6(1)}"])
        assert via_1 == via_2
        assert len(set(via_1)) > 1  # still spread over the pods
        # each node carried one round, source-NATed (Cluster policy)
        for k in (1, 2):
            cluster.agents[k - 1].wait_for(
                functools.partial(lambda k: cluster.counter(k, "snat") >= 20, k),
                timeout=5,
                what="20 SNATs counted",
            )
    finally:
        cluster.restart()
