"""Socket-LB for IPv6 with the agent: a dual-stack lab, the agent in its node namespace
writing a dual-stack Service from manifests, and the node's own sockets reaching both
of its ClusterIPs: the IPv6 one, and the IPv4 one as an IPv4-mapped address of a
dual-stack socket. tests/lab/test_socket_lb6.py tests the hooks alone."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.socklb import remove_links
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess

from . import manifests as k8s
from .conftest import CNIS, _require_root, kernel_counters, unique_lab_name

pytestmark = pytest.mark.root

IP4 = "10.96.6.10"
IP6 = "fd00:10:96::6:a"
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
PODS = {"pod-1\n", "pod-2\n"}


class Node:
    def __init__(self, lab: layout.Lab, pin_dir: str) -> None:
        self.lab, self.pin_dir = lab, pin_dir
        self.agent: AgentProcess | None = None


@pytest.fixture(scope="module", params=CNIS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2, cni=request.param, ipv6=True))
    manifests: Path = tmp_path_factory.mktemp("manifests")
    n = Node(lab, pin_dir)
    try:
        slice6 = k8s.endpoint_slice(
            "web-6", "web", SLICE, [k8s.endpoint(str(lab.ip6(p))) for p in lab.pods]
        )
        slice6["addressType"] = "IPv6"
        k8s.write(
            manifests,
            "web",
            [
                k8s.service(
                    "web",
                    IP4,
                    PORTS,
                    clusterIPs=[IP4, IP6],
                    ipFamilies=["IPv4", "IPv6"],
                    ipFamilyPolicy="RequireDualStack",
                ),
                k8s.endpoint_slice(
                    "web-4", "web", SLICE, [k8s.endpoint(str(p.ip)) for p in lab.pods]
                ),
                slice6,
            ],
        )
        n.agent = AgentProcess(
            lab.node_ns,
            manifests=manifests,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf"],
        ).start()
        n.agent.wait_ready()
        yield n
    finally:
        if n.agent is not None:
            n.agent.stop()
        remove_links(pin_dir)
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def _get(ns: str, addr: str) -> tuple[str, str]:
    """One HTTP request from an AF_INET6 socket: the body and getpeername()'s address."""
    with netns.socket_in(ns, socket.AF_INET6) as s:
        s.settimeout(2.0)
        s.connect((addr, 80))
        peer = s.getpeername()
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode(), f"{peer[0]}:{peer[1]}"


def test_the_nodes_ipv6_sockets_reach_both_clusterips(node: Node) -> None:
    ns = node.lab.node_ns
    before = kernel_counters(node.pin_dir)["sock_lb"]
    bodies = set()
    for _ in range(20):
        body, peer = _get(ns, IP6)
        assert peer == f"{IP6}:80"
        bodies.add(body)
    assert bodies == PODS
    body, peer = _get(ns, f"::ffff:{IP4}")  # IPv4 on the wire, from an AF_INET6 socket
    assert body in PODS and peer == f"::ffff:{IP4}:80"
    answer, source = traffic.udp_request(ns, IP6, 53)  # unconnected: sendmsg6 + recvmsg6
    assert answer in PODS and source == (IP6, 53)
    assert kernel_counters(node.pin_dir)["sock_lb"] >= before + 22
