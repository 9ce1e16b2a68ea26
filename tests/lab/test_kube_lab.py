"""End to end through the Kubernetes source: the agent runs in the lab's node namespace
with --kubeconfig pointing at the API server stand-in (listening inside that namespace),
and Services and EndpointSlices created, changed and deleted through the API change
the real traffic the client sends. The data path keeps serving while the API is down,
and `ebpflb status` says the agent is stale meanwhile."""

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
from ebpflb.dataplane.bpf.inspect import BpfInspector
from ebpflb.lab import build, layout, traffic
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.apiserver import ApiServerStandIn
from ebpflb.lab.traffic import Failure, fails

from .conftest import _require_root, unique_lab_name

pytestmark = pytest.mark.root

NODE = "lab-node"
CLUSTER_IP = "10.96.0.30"


def service(name: str, ip: str, *, port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "ports": [
                {"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"},
                {"name": "echo", "port": 53, "protocol": "UDP", "targetPort": 9090},
            ],
        },
    }


def endpoint_slice(name: str, addresses: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abcde",
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "echo", "port": 9090, "protocol": "UDP"},
        ],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": NODE} for a in addresses
        ],
    }


class KubeLab:
    def __init__(
        self, lab: layout.Lab, api: ApiServerStandIn, pin_dir: str, state_dir: str, kubeconfig: Path
    ) -> None:
        self.lab, self.api, self.pin_dir, self.state_dir = lab, api, pin_dir, state_dir
        self.kubeconfig = kubeconfig
        self.agent: AgentProcess | None = None

    @property
    def client(self) -> str:
        return self.lab.client.netns

    def pods(self, *numbers: int) -> list[str]:
        return [str(self.lab.pods[n - 1].ip) for n in numbers]

    def frontends(self) -> dict[str, set[str]]:
        """frontend -> its active backends, as the pinned maps hold them."""
        with BpfInspector(self.pin_dir) as insp:
            out: dict[str, set[str]] = {str(v.frontend): set() for v in insp.services()}
            for b in insp.backends():
                if b.active:
                    out[str(b.frontend)].add(str(b.address))
        return out

    def wait_for(self, want: dict[str, set[str]], what: str) -> None:
        assert self.agent is not None
        self.agent.wait_for(lambda: self.frontends() == want, timeout=10, what=what)

    def status(self) -> dict[str, Any]:
        result = CliRunner().invoke(app, ["status", "--json", "--state-dir", self.state_dir])
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.output)
        return data


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeLab]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    state_dir = str(tmp_path_factory.mktemp("state"))
    lab = build.up(layout.LabSpec(name, pods=3))
    api = ApiServerStandIn(netns=lab.node_ns)
    h: KubeLab | None = None
    try:
        api.start()
        kubeconfig = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        h = KubeLab(lab, api, pin_dir, state_dir, kubeconfig)
        yield h
    finally:
        if h is not None and h.agent is not None:
            h.agent.stop()
        api.close()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS)


def start_agent(h: KubeLab) -> AgentProcess:
    """The module's agent, started on first use."""
    if h.agent is not None and h.agent.alive():
        return h.agent
    h.agent = AgentProcess(
        h.lab.node_ns,
        kubeconfig=h.kubeconfig,
        pin_dir=h.pin_dir,
        log_path=h.lab.state_dir / "agent.log",
        extra_args=[
            "--cleanup",
            "--dataplane",
            "bpf",
            "--node-name",
            NODE,
            "--state-dir",
            h.state_dir,
        ],
    ).start()
    h.agent.wait_ready()
    return h.agent


def names(counts: dict[str, int]) -> set[str]:
    return {k.strip() for k in counts}


def test_services_created_changed_and_deleted_through_the_api_change_traffic(kube: KubeLab):
    kube.api.apply(service("web", CLUSTER_IP))
    kube.api.apply(endpoint_slice("web", kube.pods(1, 2)))
    start_agent(kube)
    both = set(kube.pods(1, 2))
    kube.wait_for({f"{CLUSTER_IP}:80/TCP": both, f"{CLUSTER_IP}:53/UDP": both}, "created")
    assert names(traffic.spread_tcp(kube.client, CLUSTER_IP, 80, 120)) == {"pod-1", "pod-2"}
    assert names(traffic.spread_udp(kube.client, CLUSTER_IP, 53, 120)) == {"pod-1", "pod-2"}
    assert traffic.udp_request(kube.client, CLUSTER_IP, 53)[1] == (CLUSTER_IP, 53)

    # An endpoint added: it takes new connections.
    kube.api.apply(endpoint_slice("web", kube.pods(1, 2, 3)))
    every = set(kube.pods(1, 2, 3))
    kube.wait_for({f"{CLUSTER_IP}:80/TCP": every, f"{CLUSTER_IP}:53/UDP": every}, "scaled")
    assert names(traffic.spread_tcp(kube.client, CLUSTER_IP, 80, 150)) == {
        "pod-1",
        "pod-2",
        "pod-3",
    }

    # The Service port changed: the new one answers, the old one no longer does.
    kube.api.apply(service("web", CLUSTER_IP, port=8000))
    kube.wait_for({f"{CLUSTER_IP}:8000/TCP": every, f"{CLUSTER_IP}:53/UDP": every}, "port changed")
    assert traffic.http_get(kube.client, CLUSTER_IP, 8000).strip() in {"pod-1", "pod-2", "pod-3"}
    # no route on the node: ICMP net unreachable, or no answer at all once the
    # node's kernel rate-limits those ICMP errors
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):
        traffic.http_get(kube.client, CLUSTER_IP, 80, timeout=0.5)

    # Deleted: it stops answering.
    kube.api.delete("Service", "demo", "web")
    kube.api.delete("EndpointSlice", "demo", "web-abcde")
    kube.wait_for({}, "deleted")
    # no route on the node: ICMP net unreachable, or no answer at all once the
    # node's kernel rate-limits those ICMP errors
    with fails(Failure.UNREACHABLE, Failure.TIMEOUT):
        traffic.http_get(kube.client, CLUSTER_IP, 8000, timeout=0.5)
    status = kube.status()
    assert status["source"] == "kubernetes" and status["full_syncs"] == 1  # all incremental


def test_traffic_keeps_flowing_while_the_api_server_is_down(kube: KubeLab):
    agent = start_agent(kube)
    kube.api.apply(service("steady", "10.96.0.31"))
    kube.api.apply(endpoint_slice("steady", kube.pods(1, 3)))
    want = set(kube.pods(1, 3))
    kube.wait_for({"10.96.0.31:80/TCP": want, "10.96.0.31:53/UDP": want}, "steady")
    with kube.api.down():
        agent.wait_for(lambda: kube.status()["stale"], timeout=10, what="stale")
        assert names(traffic.spread_tcp(kube.client, "10.96.0.31", 80, 60)) == {"pod-1", "pod-3"}
        assert kube.frontends() == {"10.96.0.31:80/TCP": want, "10.96.0.31:53/UDP": want}
    # Back: no longer stale, and a change made after the outage applies.
    agent.wait_for(lambda: not kube.status()["stale"], timeout=15, what="recovery")
    kube.api.apply(endpoint_slice("steady", kube.pods(2)))
    kube.wait_for(
        {"10.96.0.31:80/TCP": set(kube.pods(2)), "10.96.0.31:53/UDP": set(kube.pods(2))},
        "a change after the outage",
    )
    assert names(traffic.spread_tcp(kube.client, "10.96.0.31", 80, 30)) == {"pod-2"}
