"""The multi-node lab: nodes joined by an underlay bridge, pods answering clients on
other nodes, outside clients that reach node addresses only, the Kubernetes objects
that describe it, the CLI, and nothing left behind (not even in the root namespace)."""

from __future__ import annotations

import atexit
import errno
import functools
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli.lab import app
from ebpflb.errors import LabError
from ebpflb.lab import build, layout, netns, traffic, underlay
from ebpflb.lab.layout import Lab
from ebpflb.lab.processes import HTTP_PORT, UDP_PORT
from ebpflb.sources.translate import node_addresses
from tests.lab.conftest import _down_quietly, _require_root

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def mlab() -> Iterator[Lab]:
    """A two-node lab, two pods per node, shared by the module."""
    _require_root()
    name = "mn" + secrets.token_hex(3)[:5]
    fallback = functools.partial(_down_quietly, name)
    atexit.register(fallback)
    try:
        yield build.up(layout.LabSpec(name, pods=2, nodes=2))
    finally:
        build.down(name)
        atexit.unregister(fallback)


def _root_net() -> tuple[str, str]:
    def ip(*args: str) -> str:
        return subprocess.run(
            ["ip", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    return ip("-o", "addr"), ip("route", "show", "table", "all")


def _routes(ns: str) -> set[tuple[str, str | None, str]]:
    out = json.loads(netns.run(ns, ["ip", "-j", "-4", "route"]).stdout)
    return {(r["dst"], r.get("gateway"), r["dev"]) for r in out}


def _sysctl(ns: str, key: str) -> str:
    return netns.run(ns, ["sysctl", "-n", key]).stdout.strip()


def test_two_nodes_are_built_as_described(mlab: Lab) -> None:
    name = mlab.name
    assert [(n.name, n.netns, str(n.address), str(n.pod_cidr)) for n in mlab.nodes] == [
        ("node-1", f"{name}-node", "192.168.50.1", "10.244.0.0/24"),
        ("node-2", f"{name}-node-2", "192.168.50.2", "10.244.1.0/24"),
    ]
    assert [(p.name, str(p.ip), p.host_ifname, p.node) for p in mlab.pods] == [
        ("pod-1", "10.244.0.11", "vp1", 1), ("pod-2", "10.244.0.12", "vp2", 1),
        ("pod-3", "10.244.1.13", "vp3", 2), ("pod-4", "10.244.1.14", "vp4", 2),
    ]  # fmt: skip
    assert [(n.client.netns, str(n.client.ip)) for n in mlab.nodes] == [
        (f"{name}-client", "10.244.0.200"),
        (f"{name}-client-2", "10.244.1.200"),
    ]
    assert (mlab.node_ns, mlab.client) == (mlab.nodes[0].netns, mlab.nodes[0].client)
    assert [(o.netns, str(o.ip)) for o in mlab.outside] == [
        (f"{name}-ext-1", "192.168.50.101"),
        (f"{name}-ext-2", "192.168.50.102"),
    ]
    assert mlab.node_of(mlab.pod(3)) is mlab.nodes[1]
    assert mlab.host_ifnames == ["vp1", "vp2", "vc1"]
    assert mlab.node_ifnames(2) == ["vp3", "vp4", "vc1", "eth0"]
    assert all(netns.netns_exists(ns) for ns in mlab.namespaces)
    assert all(mlab.servers_alive().values())


def test_node_wiring_read_back_from_the_kernel(mlab: Lab) -> None:
    n1, n2 = mlab.nodes
    assert _routes(n1.netns) >= {
        ("10.244.0.11", None, "vp1"),
        ("10.244.0.200", None, "vc1"),
        ("10.244.1.0/24", "192.168.50.2", "eth0"),
        ("192.168.50.0/24", None, "eth0"),
    }
    assert _routes(n2.netns) >= {
        ("10.244.1.13", None, "vp3"),
        ("10.244.1.200", None, "vc1"),
        ("10.244.0.0/24", "192.168.50.1", "eth0"),
    }
    for node in mlab.nodes:
        assert _sysctl(node.netns, "net.ipv4.ip_forward") == "1"
        for conf in ("all", "eth0"):
            assert _sysctl(node.netns, f"net.ipv4.conf.{conf}.send_redirects") == "0"
            assert _sysctl(node.netns, f"net.ipv4.conf.{conf}.rp_filter") == "0"
    assert mlab.underlay_ns is not None
    ports = json.loads(
        netns.run(mlab.underlay_ns, ["ip", "-j", "link", "show", "master", underlay.BRIDGE]).stdout
    )
    assert sorted(p["ifname"] for p in ports) == ["n1", "n2", "x1", "x2"]
    for ext in mlab.outside:
        assert _routes(ext.netns) == {
            ("192.168.50.0/24", None, "eth0"),
            ("192.168.60.0/24", "192.168.50.1", "eth0"),
        }


def test_every_client_reaches_every_pod_across_the_underlay(mlab: Lab) -> None:
    for node in mlab.nodes:
        for pod in mlab.pods:
            assert traffic.http_get(node.client.netns, pod.ip, HTTP_PORT) == f"{pod.name}\n"
            assert traffic.udp_request(node.client.netns, pod.ip, UDP_PORT) == (
                f"{pod.name}\n",
                (str(pod.ip), UDP_PORT),
            )


def test_keepalive_across_nodes(mlab: Lab) -> None:
    pod = mlab.pod(4)
    with traffic.KeepAliveClient(mlab.client.netns, pod.ip, HTTP_PORT) as client:
        assert [client.get() for _ in range(3)] == ["pod-4\n"] * 3


def test_outside_clients_reach_node_addresses_but_not_pods(mlab: Lab) -> None:
    for ext in mlab.outside:
        for node in mlab.nodes:
            assert node.address is not None
            underlay.check_tcp(ext.netns, node.netns, node.address)
        for pod in (mlab.pod(1), mlab.pod(3)):
            with pytest.raises(OSError) as info:
                traffic.http_get(ext.netns, pod.ip, HTTP_PORT, timeout=0.5)
            assert info.value.errno == errno.ENETUNREACH


def test_recorded_state_reads_back(mlab: Lab) -> None:
    recorded = build.status(mlab.name)
    assert recorded is not None
    assert (recorded.spec, recorded.nodes, recorded.outside, recorded.pods) == (
        mlab.spec,
        mlab.nodes,
        mlab.outside,
        mlab.pods,
    )
    assert recorded.underlay_ns == f"{mlab.name}-net"


def test_node_manifests_and_endpoints(mlab: Lab) -> None:
    manifests = [mlab.node_manifest(k) for k in (1, 2)]
    node2 = manifests[1]
    assert node2["kind"] == "Node" and node2["metadata"]["name"] == "node-2"
    assert node2["metadata"]["labels"] == {
        "kubernetes.io/hostname": "node-2",
        "topology.kubernetes.io/zone": "zone-2",
    }
    assert {"type": "InternalIP", "address": "192.168.50.2"} in node2["status"]["addresses"]
    # What the agent reads from them: each node's own underlay address.
    assert node_addresses(manifests, "node-1") == (IPv4Address("192.168.50.1"),)
    assert node_addresses(manifests, "node-2") == (IPv4Address("192.168.50.2"),)
    endpoint = mlab.endpoint(3)
    assert (endpoint["addresses"], endpoint["nodeName"], endpoint["zone"]) == (
        ["10.244.1.13"],
        "node-2",
        "zone-2",
    )
    assert endpoint["conditions"] == {"ready": True, "serving": True, "terminating": False}
    draining = mlab.endpoint(mlab.pod(1), ready=False, serving=True, terminating=True)
    assert draining["conditions"] == {"ready": False, "serving": True, "terminating": True}
    with pytest.raises(LabError, match="no node-3"):
        mlab.node_manifest(3)
    with pytest.raises(LabError, match="outside the cluster"):
        mlab.endpoint(mlab.outside[0])


def test_single_node_lab_has_no_underlay(lab: Lab) -> None:
    assert [(n.name, n.netns, n.address, n.uplink) for n in lab.nodes] == [
        ("node-1", lab.node_ns, None, None)
    ]
    assert lab.outside == [] and lab.underlay_ns is None
    assert lab.node_ifnames(1) == lab.host_ifnames
    # No underlay address: the pod range's first address stands in (see Node.internal_ip).
    assert node_addresses([lab.node_manifest(1)], "node-1") == (IPv4Address("10.244.0.1"),)
    assert "eth0" not in netns.run(lab.node_ns, ["ip", "-o", "link"]).stdout


def test_add_and_remove_a_pod_on_node_2(mlab: Lab) -> None:
    node2 = mlab.node(2)
    pod = build.add_pod(mlab, 9, node=2)
    try:
        assert (pod.name, str(pod.ip), pod.host_ifname, pod.node) == (
            "pod-9",
            "10.244.1.19",
            "vp9",
            2,
        )
        assert ("10.244.1.19", None, "vp9") in _routes(node2.netns)
        for client in (mlab.client, node2.client):
            assert traffic.http_get(client.netns, pod.ip, HTTP_PORT) == "pod-9\n"
            assert traffic.udp_request(client.netns, pod.ip, UDP_PORT)[0] == "pod-9\n"
        recorded = build.status(mlab.name)
        assert recorded is not None and recorded.pod(9).node == 2
        assert mlab.endpoint(pod)["nodeName"] == "node-2"
        with pytest.raises(LabError, match="no node-3"):
            build.add_pod(mlab, 10, node=3)
    finally:
        build.remove_pod(mlab, 9)
    assert not netns.netns_exists(pod.netns)
    assert ("10.244.1.19", None, "vp9") not in _routes(node2.netns)
    assert [p.name for p in mlab.pods] == ["pod-1", "pod-2", "pod-3", "pod-4"]


def test_bad_specs_are_refused() -> None:
    cases: list[dict[str, Any]] = [{"nodes": 0}, {"nodes": 5}, {"pods": 50, "nodes": 4}]
    for kwargs in cases:
        with pytest.raises(LabError, match="nodes"):
            layout.LabSpec("ok", **kwargs)
    result = CliRunner().invoke(app, ["up", "--name", "ok", "--nodes", "5"])
    assert result.exit_code == 1
    assert "1 to 4 nodes" in result.output


def test_version_1_record_reads_as_one_node() -> None:
    v1: dict[str, Any] = {
        "version": 1, "name": "old", "pods_requested": 1, "node_ns": "old-node",
        "client": {"name": "client", "netns": "old-client", "ip": "10.244.0.200",
                   "host_ifname": "vc1"},
        "pods": [{"name": "pod-1", "netns": "old-pod-1", "ip": "10.244.0.11",
                  "host_ifname": "vp1"}],
        "server_pids": {"pod-1": 1},
    }  # fmt: skip
    lab = Lab.from_json(v1, Path("/nonexistent"))
    assert [n.netns for n in lab.nodes] == ["old-node"] and lab.pod(1).node == 1
    assert lab.node(1).pod_cidr == IPv4Network("10.244.0.0/24")


def test_cli_up_status_down_leaves_nothing(lab_names: Callable[[], str]) -> None:
    before = _root_net()
    name = lab_names()
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--name", name, "--nodes", "2", "--pods", "1"])
    assert result.exit_code == 0, result.output
    assert "192.168.50.2" in result.output
    assert _root_net() == before
    assert set(build.leftovers(name)) == {
        f"{name}-{suffix}"
        for suffix in (
            "node",
            "node-2",
            "client",
            "client-2",
            "pod-1",
            "pod-2",
            "net",
            "ext-1",
            "ext-2",
        )
    }

    result = runner.invoke(app, ["status", "--name", name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(n["name"], n["address"], n["ifnames"]) for n in data["nodes"]] == [
        ("node-1", "192.168.50.1", ["vp1", "vc1", "eth0"]),
        ("node-2", "192.168.50.2", ["vp2", "vc1", "eth0"]),
    ]
    assert [o["ip"] for o in data["outside"]] == ["192.168.50.101", "192.168.50.102"]
    assert [(p["name"], p["node"]) for p in data["pods"]] == [("pod-1", 1), ("pod-2", 2)]
    result = runner.invoke(app, ["status", "--name", name])
    assert result.exit_code == 0, result.output
    assert f"{name}-node-2" in result.output and f"{name}-ext-2" in result.output

    result = runner.invoke(app, ["down", "--name", name])
    assert result.exit_code == 0, result.output
    assert [ns for ns in netns.list_netns() if ns.startswith(f"{name}-")] == []
    assert not (layout.LAB_ROOT / name).exists()
    assert _root_net() == before
