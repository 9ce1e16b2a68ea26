"""Cross-node Service semantics on the kernel path, with real traffic on a two-node
lab: an agent per node (its own pins, --node-name), one manifest directory for both,
clients on both nodes and outside the cluster.

node-1: pod-1, pod-2, client 10.244.0.200, uplink 192.168.50.1
node-2: pod-3, pod-4, client 10.244.1.200, uplink 192.168.50.2
outside: ext-1 192.168.50.101, ext-2 192.168.50.102 (192.168.60.0/24 routed to node-1)
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090}
SLICE_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
LB_IP = "192.168.60.10"
EXTERNAL_IP = "192.168.60.11"


class Cluster:
    def __init__(self, lab: layout.Lab, manifests: Path, pins: list[str]) -> None:
        self.lab = lab
        self.manifests = manifests
        self.pins = pins
        self.agents: list[AgentProcess] = []

    def start(self, *extra: str) -> None:
        for k, pin_dir in enumerate(self.pins, start=1):
            agent = AgentProcess(
                self.lab.node(k).netns,
                manifests=self.manifests,
                pin_dir=pin_dir,
                log_path=self.lab.state_dir / f"agent-{k}.log",
                extra_args=[
                    "--cleanup",
                    "--dataplane",
                    "bpf",
                    "--node-name",
                    f"node-{k}",
                    "--state-dir",
                    str(self.manifests.parent / f"state-{k}"),
                    *extra,
                ],
            )
            self.agents.append(agent.start())
        for agent in self.agents:
            agent.wait_ready()

    def restart(self, *extra: str) -> None:
        for agent in self.agents:
            agent.stop()
        self.agents = []
        self.start(*extra)

    def node_ip(self, k: int) -> str:
        return str(self.lab.node(k).address)

    def client(self, k: int) -> str:
        return self.lab.node(k).client.netns

    def ext(self, j: int) -> str:
        return self.lab.outside[j - 1].netns

    def frontends(self, k: int) -> dict[str, set[str]]:
        """Frontend -> the backends its new flows go to on node k: its slots as the
        service entry counts them. (Not the backends' own active flags: a sync writes
        those first, and the entry that makes them used last.)"""
        with BpfMaps(self.pins[k - 1]) as maps:
            held = read_state(maps).frontends
        return {str(st.frontend): {str(a) for a, _ in st.slots} for st in held.values()}

    def ips(self, pods: list[int]) -> set[str]:
        return {str(self.lab.pod(i).ip) for i in pods}

    def publish(
        self,
        name: str,
        pods: list[int],
        *,
        wait: dict[str, dict[str, set[str]]] | None = None,
        endpoints: list[dict[str, Any]] | None = None,
        status: Any = None,
        slice_ports: list[dict[str, Any]] | None = None,
        **spec: Any,
    ) -> None:
        """Replace every Service with this one (plus the Node objects), and wait until
        each node holds `wait` (node -> frontend -> active backend addresses; default:
        the ClusterIP's TCP frontend with `pods`)."""
        for f in self.manifests.glob("*.json"):
            if f.name != "nodes.json":  # never a moment without this node's addresses
                f.unlink()
        svc = k8s.service(
            name, spec.pop("clusterIP", "10.96.2.10"), spec.pop("ports", [HTTP, DNS]), **spec
        )
        if status is not None:
            svc["status"] = status
        eps = endpoints if endpoints is not None else [self.lab.endpoint(i) for i in pods]
        k8s.write(
            self.manifests,
            name,
            [svc, k8s.endpoint_slice(f"{name}-a", name, slice_ports or SLICE_PORTS, eps)],
        )
        cluster_ip = svc["spec"]["clusterIP"]
        for k, agent in enumerate(self.agents, start=1):
            expected = (wait or {}).get(f"node-{k}") or {
                f"{cluster_ip}:80/TCP": self.ips(pods)
                if endpoints is None
                else {e["addresses"][0] for e in endpoints if e["conditions"]["ready"]}
            }
            agent.wait_for(self._holds(k, expected), what=f"node-{k} holds {expected}")

    def _holds(self, k: int, expected: dict[str, set[str]]) -> Callable[[], bool]:
        def check() -> bool:
            held = self.frontends(k)
            return all(held.get(fe) == want for fe, want in expected.items())

        return check

    def counters(self, k: int) -> dict[str, int]:
        return kernel_counters(self.pins[k - 1])


@pytest.fixture(scope="module", params=CNIS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    _require_root()
    name = unique_lab_name()
    pins = [f"/sys/fs/bpf/ebpflb-{name}-{k}-{secrets.token_hex(2)}" for k in (1, 2)]
    base = tmp_path_factory.mktemp("multinode")
    manifests = base / "manifests"
    manifests.mkdir()
    spec = layout.LabSpec(name, pods=2, nodes=2, cni=request.param)
    c = Cluster(build.up(spec), manifests, pins)
    try:
        k8s.write(manifests, "nodes", [c.lab.node_manifest(1), c.lab.node_manifest(2)])
        c.start()
        yield c
    finally:
        for agent in c.agents:
            agent.stop()
        build.down(name)
        for pin_dir in pins:
            remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def names(pods: list[int]) -> set[str]:
    return {f"pod-{i}\n" for i in pods}


def test_clusterip_to_backends_on_the_other_node(cluster: Cluster) -> None:
    """The replies of a backend on another node cross the underlay untranslated and are
    translated at the client's node, on its uplink."""
    cluster.publish("remote", [3, 4])
    assert set(traffic.spread_tcp(cluster.client(1), "10.96.2.10", 80, 40)) == names([3, 4])
    answer, source = traffic.udp_request(cluster.client(1), "10.96.2.10", 53)
    assert answer in names([3, 4]) and source == ("10.96.2.10", 53)
    cluster.publish("remote", [1, 2])
    assert set(traffic.spread_tcp(cluster.client(2), "10.96.2.10", 80, 40)) == names([1, 2])


def test_nodeport_cluster_policy_reaches_every_backend_from_anywhere(cluster: Cluster) -> None:
    ports = [dict(HTTP, nodePort=30080), dict(DNS, nodePort=30053)]
    every = cluster.ips([1, 2, 3, 4])
    node_fe = {f"node-{k}": {f"{cluster.node_ip(k)}:30080/TCP": every} for k in (1, 2)}
    cluster.publish("np", [1, 2, 3, 4], type="NodePort", wait=node_fe, ports=ports)
    for k in (1, 2):
        node = cluster.node_ip(k)
        # from outside the cluster: spread over both nodes' pods, source-NATed
        assert set(traffic.spread_tcp(cluster.ext(1), node, 30080, 60)) == names([1, 2, 3, 4])
        answer, source = traffic.udp_request(cluster.ext(1), node, 30053)
        assert answer in names([1, 2, 3, 4]) and source == (node, 30053)
        # from pods on both nodes
        for c in (1, 2):
            assert traffic.http_get(cluster.client(c), node, 30080) in names([1, 2, 3, 4])
    # a backend sees the node, not the outside client (source NAT)
    seen = {
        traffic.udp_request(cluster.ext(1), cluster.node_ip(1), 30053, b"whoami")[0]
        for _ in range(20)
    }
    assert all(
        line.split()[1] in {cluster.node_ip(1), str(abi.HAIRPIN_ADDRESS)}
        or line.split()[1].startswith("192.168.50.")
        for line in seen
    )
    assert all(line.split()[1] != str(cluster.lab.outside[0].ip) for line in seen)
    assert cluster.counters(1)["snat"] > 0
    # `ebpflb conntrack` shows each flow's NAT source next to its client
    out = CliRunner().invoke(app, ["conntrack", "--json", "--pin-dir", cluster.pins[0]])
    flows = [
        f
        for f in json.loads(out.output)
        if f["frontend_address"] == cluster.node_ip(1) and f["frontend_port"] == 30053
    ]
    assert flows and all(
        f["client_address"] == str(cluster.lab.outside[0].ip)
        and f["snat_address"] == cluster.node_ip(1)
        and abi.NAT_PORT_MIN <= f["snat_port"] < abi.NAT_PORT_MIN + abi.NAT_PORT_COUNT
        for f in flows
    )


def test_nodeport_local_policy_keeps_the_client_address_and_only_local_backends(
    cluster: Cluster,
) -> None:
    ports = [dict(HTTP, nodePort=30080), dict(DNS, nodePort=30053)]
    wait: dict[str, dict[str, set[str]]] = {
        "node-1": {f"{cluster.node_ip(1)}:30080/TCP": cluster.ips([1])},
        "node-2": {f"{cluster.node_ip(2)}:30080/TCP": set()},
    }
    cluster.publish(
        "local",
        [1, 3],
        type="NodePort",
        externalTrafficPolicy="Local",
        endpoints=[cluster.lab.endpoint(1), cluster.lab.endpoint(3, ready=False)],
        wait=wait,
        ports=ports,
    )
    assert traffic.spread_tcp(cluster.ext(1), cluster.node_ip(1), 30080, 20) == {"pod-1\n": 20}
    answer, _ = traffic.udp_request(cluster.ext(1), cluster.node_ip(1), 30053, b"whoami")
    assert answer == f"pod-1 {cluster.lab.outside[0].ip}\n"
    # node-2 has no local endpoint: its NodePort drops, as kube-proxy's does
    with pytest.raises(TimeoutError):
        traffic.http_get(cluster.ext(1), cluster.node_ip(2), 30080, timeout=1.0)
    assert cluster.counters(2)["no_backend"] > 0


def test_nodeport_of_a_service_without_endpoints_refuses(cluster: Cluster) -> None:
    """No endpoint anywhere: refused at once from outside, as kube-proxy's REJECT.
    (Its own nodePort: a frontend left by another test must not satisfy the wait.)"""
    ports = [dict(HTTP, nodePort=30090), dict(DNS, nodePort=30054)]
    wait: dict[str, dict[str, set[str]]] = {
        f"node-{k}": {f"{cluster.node_ip(k)}:30090/TCP": set()} for k in (1, 2)
    }
    cluster.publish(
        "empty",
        [],
        type="NodePort",
        externalTrafficPolicy="Local",
        endpoints=[],
        wait=wait,
        ports=ports,
    )
    for k in (1, 2):
        with pytest.raises(ConnectionRefusedError):
            traffic.http_get(cluster.ext(1), cluster.node_ip(k), 30090, timeout=1.0)
    assert cluster.counters(1)["reject"] > 0


def test_load_balancer_ip_with_source_ranges(cluster: Cluster) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    every = cluster.ips([1, 2, 3, 4])
    wait = {"node-1": {f"{LB_IP}:80/TCP": every}, "node-2": {f"{LB_IP}:80/TCP": every}}
    cluster.publish(
        "lb",
        [1, 2, 3, 4],
        type="LoadBalancer",
        status=status,
        wait=wait,
        loadBalancerSourceRanges=[f"{cluster.lab.outside[0].ip}/32"],
    )
    assert set(traffic.spread_tcp(cluster.ext(1), LB_IP, 80, 40)) == names([1, 2, 3, 4])
    before = cluster.counters(1)["source_range_drop"]
    with fails(Failure.TIMEOUT):
        traffic.http_get(cluster.ext(2), LB_IP, 80, timeout=1.0)
    assert cluster.counters(1)["source_range_drop"] > before


def test_external_ip_is_a_frontend(cluster: Cluster) -> None:
    two = cluster.ips([2, 4])
    wait = {"node-1": {f"{EXTERNAL_IP}:80/TCP": two}, "node-2": {f"{EXTERNAL_IP}:80/TCP": two}}
    cluster.publish("ext", [2, 4], externalIPs=[EXTERNAL_IP], wait=wait)
    assert set(traffic.spread_tcp(cluster.ext(2), EXTERNAL_IP, 80, 30)) == names([2, 4])
    answer, source = traffic.udp_request(cluster.ext(2), EXTERNAL_IP, 53)
    assert answer in names([2, 4]) and source == (EXTERNAL_IP, 53)
    for k in (1, 2):  # and from the pods of both nodes, translated where they are
        assert set(traffic.spread_tcp(cluster.client(k), EXTERNAL_IP, 80, 20)) == names([2, 4])


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


def test_host_network_backend_answers_as_the_service(cluster: Cluster) -> None:
    """A backend in the node's own network namespace (like the API server behind
    kubernetes.default) answers from the node's stack: no ingress hook sees the reply.
    On its own node the egress hook of the client's veth translates it; from the other
    node it crosses the underlay and is translated on that node's uplink."""
    node_ip = cluster.node_ip(1)
    stop = threading.Event()
    with netns.socket_in(cluster.lab.node(1).netns) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((node_ip, 7443))
        server.listen(64)
        thread = threading.Thread(target=_serve_http, args=(server, b"host-1\n", stop))
        thread.start()
        try:
            endpoint = k8s.endpoint(node_ip, node="node-1")
            cluster.publish(
                "kubernetes",
                [],
                endpoints=[endpoint],
                clusterIP="10.96.0.1",
                ports=[{"name": "https", "port": 80, "protocol": "TCP", "targetPort": 7443}],
                slice_ports=[{"name": "https", "port": 7443, "protocol": "TCP"}],
            )
            for k in (1, 2):
                assert traffic.spread_tcp(cluster.client(k), "10.96.0.1", 80, 5) == {"host-1\n": 5}
        finally:
            stop.set()
            thread.join(5)


def _zoned(cluster: Cluster, pod: int, *, hint: bool = True) -> dict[str, Any]:
    p = cluster.lab.pod(pod)
    node = cluster.lab.node_of(p)
    return k8s.endpoint(
        str(p.ip), node=node.name, zone=node.zone, for_zones=[node.zone] if hint else []
    )


def test_prefer_close_keeps_traffic_in_the_clients_zone(cluster: Cluster) -> None:
    """trafficDistribution: PreferClose with zone hints: each node's clients reach only
    their own zone's endpoints (zone-k is node-k's, from its Node labels)."""
    eps = [_zoned(cluster, i) for i in (1, 2, 3, 4)]
    wait = {
        "node-1": {"10.96.2.10:80/TCP": cluster.ips([1, 2])},
        "node-2": {"10.96.2.10:80/TCP": cluster.ips([3, 4])},
    }
    cluster.publish(
        "close", [1, 2, 3, 4], endpoints=eps, wait=wait, trafficDistribution="PreferClose"
    )
    assert set(traffic.spread_tcp(cluster.client(1), "10.96.2.10", 80, 40)) == names([1, 2])
    assert set(traffic.spread_tcp(cluster.client(2), "10.96.2.10", 80, 40)) == names([3, 4])
    # hints incomplete (one endpoint has none): every endpoint, as kube-proxy falls back
    eps[3] = _zoned(cluster, 4, hint=False)
    every = cluster.ips([1, 2, 3, 4])
    cluster.publish(
        "close",
        [1, 2, 3, 4],
        endpoints=eps,
        trafficDistribution="PreferClose",
        wait={"node-1": {"10.96.2.10:80/TCP": every}, "node-2": {"10.96.2.10:80/TCP": every}},
    )
    assert set(traffic.spread_tcp(cluster.client(1), "10.96.2.10", 80, 60)) == names([1, 2, 3, 4])


def test_health_check_node_port_reports_local_endpoints(cluster: Cluster) -> None:
    """externalTrafficPolicy: Local on a LoadBalancer: each node answers its
    healthCheckNodePort with its own count of local endpoints (503 when none), which
    an external load balancer uses to pick nodes."""
    status = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    wait: dict[str, dict[str, set[str]]] = {
        "node-1": {f"{LB_IP}:80/TCP": cluster.ips([1, 2])},
        "node-2": {f"{LB_IP}:80/TCP": set()},
    }
    cluster.publish(
        "hc",
        [1, 2],
        type="LoadBalancer",
        status=status,
        wait=wait,
        externalTrafficPolicy="Local",
        healthCheckNodePort=32100,
        ports=[dict(HTTP, nodePort=30080), dict(DNS, nodePort=30053)],
    )
    for k, code, count in ((1, 200, 2), (2, 503, 0)):
        with netns.socket_in(cluster.ext(1)) as s:
            s.settimeout(2.0)
            s.connect((cluster.node_ip(k), 32100))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := s.recv(4096):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == str(code).encode()
        assert json.loads(body)["localEndpoints"] == count
    # the LB's traffic to the node with endpoints keeps the client's address
    answer, _ = traffic.udp_request(cluster.ext(2), LB_IP, 53, b"whoami")
    assert answer.split()[1] == str(cluster.lab.outside[1].ip)


def _udp_from(ns: str, port: int, address: str, dport: int) -> str:
    """One UDP request from a fixed source port (the same 5-tuple every time); the
    answer must come back from the address asked."""
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(2.0)
        sock.bind(("0.0.0.0", port))
        sock.sendto(b"x", (address, dport))
        data, source = sock.recvfrom(100)
        assert source == (address, dport)
        return data.decode()


def test_maglev_sends_a_flow_to_the_same_backend_through_either_node(cluster: Cluster) -> None:
    """With --lb-algorithm maglev, both nodes choose the same backend for the same flow:
    the outside client's load-balancer traffic moved from node-1 to node-2 (as an ECMP
    change would) still reaches the same pods. (At random, 20 flows would all agree
    with a chance of 1 in 4**20.)"""
    ext = cluster.ext(1)
    cluster.restart("--lb-algorithm", "maglev")
    try:
        status = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
        every = cluster.ips([1, 2, 3, 4])
        wait = {f"node-{k}": {f"{LB_IP}:53/UDP": every} for k in (1, 2)}
        cluster.publish(
            "mg",
            [1, 2, 3, 4],
            type="LoadBalancer",
            status=status,
            wait=wait,
            ports=[dict(HTTP, nodePort=30082), dict(DNS, nodePort=30055)],
        )
        ports = range(42000, 42020)
        via_1 = [_udp_from(ext, p, LB_IP, 53) for p in ports]
        netns.ip_batch(ext, [f"route replace 192.168.60.0/24 via {cluster.node_ip(2)}"])
        try:
            via_2 = [_udp_from(ext, p, LB_IP, 53) for p in ports]
        finally:
            netns.ip_batch(ext, [f"route replace 192.168.60.0/24 via {cluster.node_ip(1)}"])
        assert via_1 == via_2
        assert len(set(via_1)) > 1  # still spread over the pods
        # each node carried one round, source-NATed (Cluster policy)
        assert cluster.counters(1)["snat"] >= 20 and cluster.counters(2)["snat"] >= 20
    finally:
        cluster.restart()
