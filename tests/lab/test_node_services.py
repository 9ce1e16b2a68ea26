"""What the agent serves for the node itself, with the real agent in the lab's node
namespace: the health check of a LoadBalancer Service with externalTrafficPolicy: Local
(healthCheckNodePort), asked from the client over the network, and the NodePort range
reserved against ephemeral ports in the node namespace only (never the root one)."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpflb.agent.nodeports import RESERVED_PORTS_SYSCTL, parse_ports
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

NODE = "node-1"
HEALTH_PORT = 32000
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}


class Env:
    def __init__(self, lab: layout.Lab, manifests: Path, pin_dir: str, state_dir: str) -> None:
        self.lab = lab
        self.node_ip = str(lab.gateway())  # a node address every client reaches
        self.manifests = manifests
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.agent: AgentProcess | None = None

    def start(self, *extra: str) -> AgentProcess:
        self.agent = AgentProcess(
            self.lab.node_ns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / "agent.log",
            extra_args=[
                "--cleanup",
                "--dataplane",
                "userspace",
                "--state-dir",
                self.state_dir,
                "--node-name",
                NODE,
                *extra,
            ],
        ).start()
        self.agent.wait_ready()
        return self.agent

    def stop(self) -> None:
        if self.agent is not None:
            assert self.agent.stop() == 0, self.agent.log_text()[-2000:]
            self.agent = None

    def web(self, *nodes: str) -> None:
        """Service web: one endpoint per pod, on the nodes given in order."""
        endpoints = [
            k8s.endpoint(str(pod.ip), node=node)
            for pod, node in zip(self.lab.pods, nodes, strict=False)
        ]
        k8s.write(
            self.manifests,
            "web",
            [
                k8s.service(
                    "web",
                    "10.96.0.50",
                    [HTTP],
                    type="LoadBalancer",
                    externalTrafficPolicy="Local",
                    healthCheckNodePort=HEALTH_PORT,
                ),
                k8s.endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], endpoints),
            ],
        )


def health(ns: str, address: str, port: int = HEALTH_PORT) -> tuple[int, dict[str, Any]]:
    """GET / from namespace ``ns``: the status code and the JSON body."""
    sock = netns.socket_in(ns)
    with sock:
        sock.settimeout(2.0)
        sock.connect((address, port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def reserved(ns: str | None) -> set[int]:
    """The reserved ports of a namespace (None: the root one), read from inside it."""
    if ns is None:
        return parse_ports(Path(RESERVED_PORTS_SYSCTL).read_text())
    out = netns.run(ns, ["cat", RESERVED_PORTS_SYSCTL])
    return parse_ports(out.stdout)


@pytest.fixture(scope="module", params=CNIS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    manifests = tmp_path_factory.mktemp("manifests")
    lab = build.up(layout.LabSpec(name, pods=2, cni=request.param))
    e = Env(lab, manifests, pin_dir, str(tmp_path_factory.mktemp("state")))
    try:
        k8s.write(manifests, "node", [k8s.node(NODE, e.node_ip)])
        yield e
    finally:
        if e.agent is not None:
            e.agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS)


def test_health_check_answers_with_the_local_endpoint_count(env: Env):
    env.web(NODE, NODE)
    agent = env.start()
    try:
        client = env.lab.client.netns
        assert health(client, env.node_ip) == (
            200,
            {
                "service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": True,
            },
        )
        env.web(NODE, "node-2")
        agent.wait_for(
            lambda: health(client, env.node_ip)[1]["localEndpoints"] == 1, what="one local endpoint"
        )
        env.web("node-2", "node-3")  # no endpoint on this node any more
        agent.wait_for(lambda: health(client, env.node_ip)[0] == 503, what="503")
        assert health(client, env.node_ip) == (
            503,
            {
                "service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 0,
                "serviceProxyHealthy": True,
            },
        )
        k8s.remove(env.manifests, "web")
        agent.wait_for(lambda: _refused(client, env.node_ip), what="the listener to close")
    finally:
        env.stop()


def test_nodeport_addresses_choose_where_health_checks_listen(env: Env):
    env.web(NODE)
    env.start("--nodeport-addresses", f"{env.node_ip}/32")
    try:
        assert health(env.lab.client.netns, env.node_ip)[0] == 200
        assert _refused(env.lab.node_ns, "127.0.0.1")  # not on every address
    finally:
        env.stop()


def test_nodeport_range_is_reserved_in_the_node_namespace_only(env: Env):
    root_before = Path(RESERVED_PORTS_SYSCTL).read_text()
    node_before = reserved(env.lab.node_ns)
    env.web(NODE)
    env.start("--nodeport-range", "30000-30099")
    try:
        assert reserved(env.lab.node_ns) == node_before | set(range(30000, 30100))
        assert Path(RESERVED_PORTS_SYSCTL).read_text() == root_before
        # An ephemeral port is never a NodePort: with an ephemeral range that overlaps
        # the NodePorts, many bound sockets get none of them.
        port_range = netns.run(
            env.lab.node_ns, ["cat", "/proc/sys/net/ipv4/ip_local_port_range"]
        ).stdout.split()
        with netns.enter(env.lab.node_ns):
            socks = [socket.socket() for _ in range(150)]
        try:
            netns.sysctl(env.lab.node_ns, "net.ipv4.ip_local_port_range", "30000 30299")
            ports = set()
            for s in socks:
                s.bind(("127.0.0.1", 0))
                ports.add(s.getsockname()[1])
            assert len(ports) == 150 and not ports & set(range(30000, 30100))
        finally:
            for s in socks:
                s.close()
            netns.sysctl(env.lab.node_ns, "net.ipv4.ip_local_port_range", " ".join(port_range))
    finally:
        env.stop()
    assert reserved(env.lab.node_ns) == node_before  # taken back: no data path serves it
    assert Path(RESERVED_PORTS_SYSCTL).read_text() == root_before


def _refused(ns: str, address: str) -> bool:
    sock = netns.socket_in(ns)
    with sock:
        sock.settimeout(2.0)
        return sock.connect_ex((address, HEALTH_PORT)) != 0
