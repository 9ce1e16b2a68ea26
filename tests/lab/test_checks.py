"""The cluster checks of ebpflb.lab.checks (the ones vagrant/smoke.sh runs on the Vagrant
cluster) run here on a two-node netns lab, through a netns adapter: an agent per node,
the Service published as manifests, clients in the nodes' client namespaces, the
outside client on the underlay. Then one node's agent is stopped with --cleanup and the
same checks must fail for that node, and only for it.

node-1: pod-1, pod-2, client, uplink 192.168.50.1 (192.168.60.0/24 routed to it)
node-2: pod-3, pod-4, client, uplink 192.168.50.2
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.inspect import BpfInspector
from ebpflb.lab import build, checks, layout, netns
from ebpflb.lab.agentproc import AgentProcess

from . import manifests as k8s
from .conftest import _require_root, unique_lab_name

pytestmark = pytest.mark.root

CLUSTER_IP = "10.96.7.10"
LB_IP = "192.168.60.20"
NODE_PORT = 30777
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NODE_PORT},
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090},
]
SLICE_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "dns", "port": 9090, "protocol": "UDP"},
]


class NetnsAdapter:
    """checks.Adapter on the netns lab: a client pod on node k is that node's client
    namespace, node k is its node namespace (with its own pin dir), outside is the
    first outside client. Commands run under nsenter --net, so they stay in the host's
    mount namespace and the CLI sees the pins."""

    def __init__(self, lab: layout.Lab, pins: dict[str, str]) -> None:
        self.lab = lab
        self.pins = pins

    def _node(self, name: str) -> layout.Node:
        return self.lab.node(int(name.removeprefix("node-")))

    def _run(self, ns: str, argv: Sequence[str], timeout: float) -> checks.Result:
        p = subprocess.run(
            ["nsenter", f"--net={netns.path(ns)}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return checks.Result(p.returncode, p.stdout, p.stderr)

    @staticmethod
    def _python(argv: Sequence[str]) -> list[str]:
        assert argv[0] == "python3", argv
        return [sys.executable, *argv[1:]]

    def in_pod(self, node: str, argv: Sequence[str], *, timeout: float) -> checks.Result:
        return self._run(self._node(node).client.netns, self._python(argv), timeout)

    def on_node(self, node: str, argv: Sequence[str], *, timeout: float) -> checks.Result:
        assert argv[0] == "ebpflb", argv
        cli = [sys.executable, "-m", "ebpflb", argv[1], "--pin-dir", self.pins[node], *argv[2:]]
        return self._run(self._node(node).netns, cli, timeout)

    def outside(self, argv: Sequence[str], *, timeout: float) -> checks.Result:
        return self._run(self.lab.outside[0].netns, self._python(argv), timeout)


class TwoNodes:
    def __init__(self, lab: layout.Lab, manifests: Path, pins: dict[str, str]) -> None:
        self.lab = lab
        self.manifests = manifests
        self.pins = pins
        self.agents: dict[str, AgentProcess] = {}

    def start(self, node: str) -> None:
        k = int(node.removeprefix("node-"))
        agent = AgentProcess(
            self.lab.node(k).netns,
            manifests=self.manifests,
            pin_dir=self.pins[node],
            log_path=self.lab.state_dir / f"checks-agent-{k}.log",
            extra_args=[
                "--cleanup",
                "--dataplane",
                "bpf",
                "--node-name",
                node,
                "--state-dir",
                str(self.manifests.parent / f"state-{k}"),
            ],
        )
        self.agents[node] = agent.start()
        agent.wait_ready()
        agent.wait_for(lambda: self._holds(node), what=f"{node} holds the Service")

    def _holds(self, node: str) -> bool:
        with BpfInspector(self.pins[node]) as insp:
            held = {str(v.frontend) for v in insp.services()}
        return {f"{CLUSTER_IP}:80/TCP", f"{CLUSTER_IP}:53/UDP", f"{LB_IP}:80/TCP"} <= held

    def subject(self) -> checks.Subject:
        return checks.Subject(
            service="demo/echo",
            nodes=("node-1", "node-2"),
            node_addresses={f"node-{k}": str(self.lab.node(k).address) for k in (1, 2)},
            cluster_ip=CLUSTER_IP,
            tcp_port=80,
            udp_port=53,
            node_port=NODE_PORT,
            lb_ip=LB_IP,
            backends=frozenset(f"pod-{i}" for i in range(1, 5)),
            requests=16,
        )


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    _require_root()
    name = unique_lab_name()
    pins = {f"node-{k}": f"/sys/fs/bpf/ebpflb-{name}-{k}-{secrets.token_hex(2)}" for k in (1, 2)}
    manifests = tmp_path_factory.mktemp("checks") / "manifests"
    manifests.mkdir()
    c = TwoNodes(build.up(layout.LabSpec(name, pods=2, nodes=2)), manifests, pins)
    try:
        svc = k8s.service("echo", CLUSTER_IP, PORTS, type="LoadBalancer")
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
        k8s.write(manifests, "nodes", [c.lab.node_manifest(1), c.lab.node_manifest(2)])
        k8s.write(
            manifests,
            "echo",
            [
                svc,
                k8s.endpoint_slice(
                    "echo-a", "echo", SLICE_PORTS, [c.lab.endpoint(i) for i in range(1, 5)]
                ),
            ],
        )
        for node in pins:
            c.start(node)
        yield c
    finally:
        for agent in c.agents.values():
            agent.stop()
        build.down(name)
        for pin_dir in pins.values():
            remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def test_the_cluster_checks_pass_on_the_netns_lab(two_nodes: TwoNodes) -> None:
    adapter = NetnsAdapter(two_nodes.lab, two_nodes.pins)
    report = checks.run_checks(adapter, two_nodes.subject(), cluster=False)
    print(report.text())
    assert report.ok, report.text()
    names = set(report.by_name())
    assert {
        "clusterip-tcp from a pod on node-1",
        "clusterip-udp from a pod on node-2",
        "nodeport on node-2 from outside",
        "loadbalancer from outside",
        "ebpflb services on node-1",
        "ebpflb services on node-2",
    } <= names
    # The two that need a real cluster are left out here, and said to be.
    assert sorted(report.left_out) == sorted(
        [
            f"{what} from a pod on node-{k}"
            for k in (1, 2)
            for what in ("cluster DNS", "kubernetes.default")
        ]
    )
    assert "2 failed" not in report.text() and report.text().endswith(
        f"{len(report.results)} passed, 0 failed"
    )


def test_the_checks_fail_where_the_agent_is_gone(two_nodes: TwoNodes) -> None:
    """Without node-2's agent (stopped with --cleanup: no data path there), node-2's
    checks fail and node-1's still pass; then it is started again."""
    adapter = NetnsAdapter(two_nodes.lab, two_nodes.pins)
    two_nodes.agents.pop("node-2").stop()
    try:  # few requests: each failing one waits for its timeout
        report = checks.run_checks(adapter, replace(two_nodes.subject(), requests=3), cluster=False)
    finally:
        two_nodes.start("node-2")
    results = report.by_name()
    assert not report.ok
    for name in (
        "clusterip-tcp from a pod on node-2",
        "clusterip-udp from a pod on node-2",
        "nodeport on node-2 from outside",
        "ebpflb services on node-2",
    ):
        assert not results[name].ok, results[name]
    for name in (
        "clusterip-tcp from a pod on node-1",
        "clusterip-udp from a pod on node-1",
        "nodeport on node-1 from outside",
        "loadbalancer from outside",
        "ebpflb services on node-1",
    ):
        assert results[name].ok, results[name]


def test_the_probe_prints_a_tally_as_json() -> None:
    """The probe's output is what the checks parse, on both labs; errors are counted,
    not raised (nothing listens on this loopback port)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ebpflb.lab.checks",
            "probe",
            "tcp",
            "127.0.0.1",
            "9",
            "--count",
            "2",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["count"] == 2 and data["answers"] == {} and len(data["errors"]) == 2
