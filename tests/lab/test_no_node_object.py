"""NodePorts on a node that has no Node object, with real traffic: the agent runs in
node-1 of a two-node lab (its uplink eth0 = 192.168.50.1 on the underlay) with
`--node-name node-1` and a manifest directory that holds no Node, on each data path and
each CNI shape. It must serve NodePorts (and their source NAT, and health checks) on
the node's own interface address, which an outside client reaches, say so in one log
line, and publish the addresses and their source in `ebpflb status --json`; a Node
object that appears later takes over, and when it goes the interfaces serve again.

Only node-1 runs an agent; the Services' endpoints are node-1's pods."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.traffic import Failure, fails

from . import manifests as k8s
from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

NODE = "node-1"
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090, "nodePort": 30053}
LOCAL_HTTP = dict(HTTP, nodePort=30081)
SLICE_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]
HEALTH_PORT = 32001
SERVED_LINE = "NodePorts are served on"


class Env:
    def __init__(self, lab: layout.Lab, base: Path) -> None:
        self.lab = lab
        self.manifests = base / "manifests"
        self.manifests.mkdir()
        self.state_dir = str(base / "state")
        self.pin_dir = f"/sys/fs/bpf/ebpflb-{lab.name}-{secrets.token_hex(2)}"
        self.agent: AgentProcess | None = None
        self.node_ip = str(lab.node(1).address)
        self.ext = lab.outside[0].netns

    def start(self, dataplane: str, *extra: str) -> AgentProcess:
        self.agent = AgentProcess(
            self.lab.node(1).netns,
            manifests=self.manifests,
            pin_dir=self.pin_dir,
            log_path=self.lab.state_dir / f"agent-{dataplane}-{secrets.token_hex(2)}.log",
            extra_args=[
                "--cleanup",
                "--dataplane",
                dataplane,
                "--node-name",
                NODE,
                "--state-dir",
                self.state_dir,
                *extra,
            ],
        ).start()
        self.agent.wait_ready()
        return self.agent

    def stop(self) -> None:
        if self.agent is not None:
            assert self.agent.stop() == 0, self.agent.log_text()[-3000:]
            self.agent = None

    def status(self) -> dict[str, Any]:
        out = CliRunner().invoke(app, ["status", "--json", "--state-dir", self.state_dir])
        assert out.exit_code == 0, out.output
        data: dict[str, Any] = json.loads(out.output)
        return data

    def served_lines(self) -> list[str]:
        assert self.agent is not None
        return [
            line.split(": ", 1)[1]
            for line in self.agent.log_text().splitlines()
            if SERVED_LINE in line
        ]


@pytest.fixture(scope="module", params=CNIS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    name = unique_lab_name()
    lab = build.up(layout.LabSpec(name, pods=2, nodes=2, cni=request.param))
    e = Env(lab, tmp_path_factory.mktemp("no-node"))
    try:
        pods = [lab.endpoint(1), lab.endpoint(2)]
        k8s.write(
            e.manifests,
            "np",
            [
                k8s.service("np", "10.96.3.10", [HTTP, DNS], type="NodePort"),
                k8s.endpoint_slice("np-a", "np", SLICE_PORTS, pods),
            ],
        )
        k8s.write(
            e.manifests,
            "local",
            [
                k8s.service(
                    "local",
                    "10.96.3.11",
                    [LOCAL_HTTP],
                    type="LoadBalancer",
                    externalTrafficPolicy="Local",
                    healthCheckNodePort=HEALTH_PORT,
                ),
                k8s.endpoint_slice("local-a", "local", SLICE_PORTS[:1], pods),
            ],
        )
        yield e
    finally:
        if e.agent is not None:
            e.agent.stop()
        build.down(name)
        remove_pins(e.pin_dir, abi.ALL_MAPS)


def health(ns: str, address: str) -> tuple[int, dict[str, Any]]:
    with netns.socket_in(ns) as sock:
        sock.settimeout(2.0)
        sock.connect((address, HEALTH_PORT))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("dataplane", ["bpf", "userspace"])
def test_nodeports_open_on_the_nodes_own_address_without_a_node_object(
    env: Env, dataplane: str
) -> None:
    env.start(dataplane)
    try:
        pods = {"pod-1\n", "pod-2\n"}
        # From outside the cluster, at the node's uplink address: both pods answer.
        assert set(traffic.spread_tcp(env.ext, env.node_ip, 30080, 30)) == pods
        answer, source = traffic.udp_request(env.ext, env.node_ip, 30053)
        assert answer in pods and source == (env.node_ip, 30053)
        # externalTrafficPolicy: Cluster: the backend does not see the outside client.
        seen = {
            traffic.udp_request(env.ext, env.node_ip, 30053, b"whoami")[0].split()[1]
            for _ in range(10)
        }
        assert str(env.lab.outside[0].ip) not in seen
        # externalTrafficPolicy: Local: the client's address is kept, and the health
        # check answers at the node's address.
        assert traffic.http_get(env.ext, env.node_ip, 30081) in pods
        assert health(env.ext, env.node_ip) == (
            200,
            {
                "service": {"namespace": "demo", "name": "local"},
                "localEndpoints": 2,
                "serviceProxyHealthy": True,
            },
        )

        status = env.status()
        assert status["dataplane"] == dataplane
        # Only the uplink's address: not the pods' link-local gateway (routed) nor the
        # pod bridge's gateway (bridge).
        assert status["nodeport_addresses"] == [env.node_ip]
        assert status["nodeport_address_source"] == "local-interfaces"
        assert status["nodeport_address_reason"] == f"no Node object named {NODE}"
        assert status["nodeport_addresses_filter"] is None
        assert env.served_lines() == [
            f"no Node object named {NODE}: NodePorts are served on this node's interface "
            f"addresses: {env.node_ip}"
        ]
        text = CliRunner().invoke(app, ["status", "--state-dir", env.state_dir]).output
        assert (f"{env.node_ip} (from this node's interfaces: no Node object named {NODE})") in text
    finally:
        env.stop()


def test_a_node_object_takes_over_and_the_interfaces_serve_again_when_it_goes(env: Env) -> None:
    """With --nodeport-addresses narrowing both sets; the bpf data path."""
    agent = env.start("bpf", "--nodeport-addresses", "192.168.50.0/24,10.9.0.0/16")
    try:
        assert env.status()["nodeport_addresses_filter"] == "192.168.50.0/24,10.9.0.0/16"
        assert traffic.http_get(env.ext, env.node_ip, 30080) in {"pod-1\n", "pod-2\n"}
        # A Node object for this node, with an address the filter keeps and one it
        # drops (a made-up InternalIP: the frontend is only checked in the status).
        k8s.write(
            env.manifests,
            "node",
            [
                {
                    **k8s.node(NODE, "10.9.0.1"),
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": "10.9.0.1"},
                            {"type": "ExternalIP", "address": "172.16.0.1"},
                        ]
                    },
                }
            ],
        )
        agent.wait_for(
            lambda: env.status()["nodeport_address_source"] == "node-object",
            what="the Node object's addresses",
        )
        assert env.status()["nodeport_addresses"] == ["10.9.0.1"]
        with fails(Failure.REFUSED):
            traffic.http_get(env.ext, env.node_ip, 30080, timeout=0.5)
        k8s.remove(env.manifests, "node")
        agent.wait_for(
            lambda: env.status()["nodeport_address_source"] == "local-interfaces",
            what="the interfaces' addresses again",
        )
        assert env.status()["nodeport_addresses"] == [env.node_ip]
        assert traffic.http_get(env.ext, env.node_ip, 30080) in {"pod-1\n", "pod-2\n"}
        narrowed = " (--nodeport-addresses 192.168.50.0/24,10.9.0.0/16)"
        assert env.served_lines() == [
            f"no Node object named {NODE}: NodePorts are served on this node's interface "
            f"addresses{narrowed}: {env.node_ip}",
            f"NodePorts are served on the addresses of Node {NODE} again{narrowed}: 10.9.0.1",
            f"no Node object named {NODE}: NodePorts are served on this node's interface "
            f"addresses{narrowed}: {env.node_ip}",
        ]
    finally:
        env.stop()
