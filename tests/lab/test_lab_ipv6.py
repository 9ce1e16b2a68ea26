"""The dual-stack lab (`ebpflb lab up --ipv6`) on both node shapes, with one node and
two: every namespace keeps its IPv4 wiring and gets IPv6 beside it, read back from
the kernel, used by real traffic (no load balancer: pods and clients reach each other
directly), recorded in the state, written out as dual-stack manifests, shown by the
CLI, and nothing left behind, the root namespace untouched."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml
from typer.testing import CliRunner

from ebpflb.cli.lab import app
from ebpflb.lab import build, layout, netns, podnet, traffic, underlay
from ebpflb.lab.layout import Lab, LabSpec
from ebpflb.lab.processes import HTTP_PORT, UDP_PORT
from ebpflb.sources.manifests import ManifestSource
from tests.lab.conftest import CNIS


def _root_net() -> tuple[str, str]:
    def ip(*args: str) -> str:
        return subprocess.run(
            ["ip", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    return ip("-o", "addr"), ip("route", "show", "table", "all")


def _json(ns: str, *args: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(netns.run(ns, ["ip", "-j", *args]).stdout)
    return data


def _sysctl(ns: str, key: str) -> str:
    return netns.run(ns, ["sysctl", "-n", key]).stdout.strip()


def _global6(ns: str, ifname: str) -> set[tuple[str, int]]:
    """(address, prefix length) of the global IPv6 addresses on ``ifname``; a
    tentative one (still in duplicate address detection) would fail the test."""
    out = set()
    for link in _json(ns, "-6", "addr", "show", "dev", ifname):
        for a in link["addr_info"]:
            if a.get("scope") == "global":
                assert not a.get("tentative"), a
                out.add((a["local"], a["prefixlen"]))
    return out


def _default6(ns: str) -> tuple[str | None, str]:
    route = next(r for r in _json(ns, "-6", "route") if r["dst"] == "default")
    return route.get("gateway"), route["dev"]


def _answers(ns: str, ip: traffic.Address) -> tuple[str, str]:
    return (
        traffic.http_get(ns, ip, HTTP_PORT),
        traffic.udp_request(ns, ip, UDP_PORT)[0],
    )


def _check_kernel(lab: Lab) -> None:
    """What each namespace holds, as the kernel reports it."""
    for node in lab.nodes:
        ns = node.netns
        cidr6 = node.pod_cidr6
        assert cidr6 is not None
        assert _sysctl(ns, "net.ipv6.conf.all.forwarding") == "1"
        assert _sysctl(ns, "net.ipv6.conf.all.accept_ra") == "0"
        assert _sysctl(ns, "net.ipv6.conf.default.accept_ra") == "0"
        routes6 = {r["dst"]: r for r in _json(ns, "-6", "route")}
        for pod in [*lab.node_pods(node.index), node.client]:
            assert pod.ip6 is not None and pod.ip6 in cidr6
            gw, dev = _default6(pod.netns)
            assert (gw, dev) == (str(lab.gateway6(node.index)), "eth0")
            if lab.cni == "routed":
                assert _global6(pod.netns, "eth0") == {(str(pod.ip6), 128)}
                assert routes6[str(pod.ip6)]["dev"] == pod.host_ifname
                host = {
                    a["local"]
                    for link in _json(ns, "-6", "addr", "show", "dev", pod.host_ifname)
                    for a in link["addr_info"]
                }
                assert "fe80::1" in host
            else:
                assert _global6(pod.netns, "eth0") == {(str(pod.ip6), 64)}
        if lab.cni == "bridge":
            assert (str(cidr6[1]), 64) in _global6(ns, podnet.BRIDGE)
        for other in lab.nodes:
            if other is node or other.pod_cidr6 is None:
                continue
            via = routes6[str(other.pod_cidr6)]
            if lab.cni == "bridge":
                assert (via["gateway"], via["dev"]) == (str(podnet.vtep6(other.index)), "flannel.1")
            else:
                assert (via["gateway"], via["dev"]) == (str(other.address6), "eth0")
        if node.address6 is not None:
            assert _global6(ns, "eth0") == {(str(node.address6), 64)}
    for ext in lab.outside:
        assert ext.ip6 is not None
        assert _global6(ext.netns, "eth0") == {(str(ext.ip6), 64)}
        lb = next(r for r in _json(ext.netns, "-6", "route") if r["dst"] == str(layout.LB_NET6))
        assert lb["gateway"] == str(lab.nodes[0].address6) == "fd00:192:168:50::1"


def _check_traffic(lab: Lab) -> None:
    """Every pod answers every other pod and every node's client over IPv6, on any
    node, TCP and UDP, and sees the sender's own IPv6 address (nothing translates)."""
    senders = [*lab.pods, *(n.client for n in lab.nodes)]
    for pod in lab.pods:
        ip6 = lab.ip6(pod)
        for src in senders:
            if src is pod:
                continue
            assert _answers(src.netns, ip6) == (f"{pod.name}\n",) * 2, (src.name, pod.name)
        answer, source = traffic.udp_request(lab.client.netns, ip6, UDP_PORT, b"whoami")
        assert answer == f"{pod.name} {lab.client.ip6}\n"
        assert ip_address(source[0]) == ip6 and source[1] == UDP_PORT
        # IPv4 still answers as before, and the bracketed form is taken too.
        assert _answers(lab.client.netns, pod.ip) == (f"{pod.name}\n",) * 2
        assert traffic.http_get(lab.client.netns, f"[{ip6}]", HTTP_PORT) == f"{pod.name}\n"
    with traffic.UdpSession(lab.client.netns, lab.ip6(lab.pods[0]), UDP_PORT) as session:
        assert session.request()[0] == f"{lab.pods[0].name}\n"
    with traffic.KeepAliveClient(lab.client.netns, lab.ip6(lab.pods[0]), HTTP_PORT) as keep:
        assert [keep.get(), keep.get()] == [f"{lab.pods[0].name}\n"] * 2
    for ext in lab.outside:  # the underlay, node by node
        for node in lab.nodes:
            assert node.address6 is not None
            underlay.check_tcp(ext.netns, node.netns, node.address6)
        # No pod routes outside the cluster, as for IPv4.
        with traffic.fails(traffic.Failure.UNREACHABLE, traffic.Failure.TIMEOUT):
            traffic.http_get(ext.netns, lab.ip6(lab.pods[0]), HTTP_PORT, timeout=0.5)


def _check_state(lab: Lab, name: str) -> None:
    data = json.loads((layout.LAB_ROOT / name / "state.json").read_text())
    assert data["version"] == layout.STATE_VERSION == 4
    assert data["ipv6"] is True and data["complete"] is True
    assert {p["name"]: p["ip6"] for p in data["pods"]} == {p.name: str(p.ip6) for p in lab.pods}
    assert data["client"]["ip6"] == "fd00:10:244::c8"
    for n, recorded in zip(lab.nodes, data["nodes"], strict=True):
        assert IPv6Network(recorded["pod_cidr6"]) == IPv6Network(f"fd00:10:244:{n.index - 1}::/64")
        assert recorded["internal_ip6"] == str(n.internal_ip6)
        assert recorded["client"]["ip6"] == str(n.client.ip6)
    assert [o["ip6"] for o in data["outside"]] == [str(o.ip6) for o in lab.outside]


def _check_manifests(lab: Lab, name: str) -> None:
    """manifests/cluster.yaml parses, and carries both families as Kubernetes has them."""
    text = (layout.LAB_ROOT / name / "manifests" / "cluster.yaml").read_text()
    objs = list(yaml.safe_load_all(text))
    assert objs == lab.manifests()
    for obj in objs:  # against the API's schema, strictly (no unknown fields)
        kv.validate(obj, "1.33", strict=True)
    nodes = [o for o in objs if o["kind"] == "Node"]
    assert len(nodes) == len(lab.nodes)
    for obj, node in zip(nodes, lab.nodes, strict=True):
        internal = [a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [str(node.internal_ip), str(node.internal_ip6)]
        assert obj["spec"]["podCIDRs"] == [str(node.pod_cidr), str(node.pod_cidr6)]
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "Pod"} == {p.name for p in lab.pods}
    # the slices are derived from the Pods by the manifest source, per family
    slices = list(ManifestSource(layout.LAB_ROOT / name / "manifests").load().slices)
    web = services["web"]["spec"]
    assert web["ipFamilyPolicy"] == "RequireDualStack"
    assert web["ipFamilies"] == ["IPv4", "IPv6"]
    assert [ip_address(a).version for a in web["clusterIPs"]] == [4, 6]
    assert ip_address(web["clusterIPs"][1]) in layout.SERVICE_NET6
    v6only = services["web6"]["spec"]
    assert (v6only["ipFamilyPolicy"], v6only["ipFamilies"]) == ("SingleStack", ["IPv6"])
    pod6 = {str(p.ip6) for p in lab.pods}
    pod4 = {str(p.ip) for p in lab.pods}
    for svc, family in (("web", "IPv4"), ("web", "IPv6"), ("web6", "IPv6")):
        (sl,) = [
            s
            for s in slices
            if s["metadata"]["labels"]["kubernetes.io/service-name"] == svc
            and s["addressType"] == family
        ]
        addresses = {a for e in sl["endpoints"] for a in e["addresses"]}
        assert addresses == (pod6 if family == "IPv6" else pod4), (svc, family)
    assert not any(
        s["metadata"]["labels"]["kubernetes.io/service-name"] == "web6"
        and s["addressType"] == "IPv4"
        for s in slices
    )
    if len(lab.nodes) > 1:
        ingress = [i["ip"] for i in services["edge"]["status"]["loadBalancer"]["ingress"]]
        assert [ip_address(i).version for i in ingress] == [4, 6]
        assert IPv6Address(ingress[1]) in layout.LB_NET6


@pytest.mark.root
@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("cni", CNIS)
def test_dual_stack_lab(cni: str, nodes: int, lab_names: Callable[[], str]) -> None:
    before = _root_net()
    name = lab_names()
    args = ["up", "--name", name, "--pods", "2", "--nodes", str(nodes), "--cni", cni, "--ipv6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"({cni} pods, dual-stack)" in result.output
    assert "fd00:10:244::b" in result.output  # pod-1's IPv6 address in the table
    assert _root_net() == before
    lab = build.status(name)
    assert lab is not None and lab.ipv6 and lab.cni == cni and len(lab.nodes) == nodes
    assert lab.ip6(lab.pod(1)) == IPv6Address("fd00:10:244::b")
    if nodes == 2:
        assert lab.ip6(lab.pod(3)) == IPv6Address("fd00:10:244:1::d")
        assert [o.ip6 for o in lab.outside] == [
            IPv6Address("fd00:192:168:50::65"),
            IPv6Address("fd00:192:168:50::66"),
        ]

    _check_kernel(lab)
    _check_traffic(lab)
    _check_state(lab, name)
    _check_manifests(lab, name)

    status = CliRunner().invoke(app, ["status", "--name", name])
    assert status.exit_code == 0, status.output
    assert "dual-stack" in status.output and str(lab.client.ip6) in status.output
    as_json = json.loads(CliRunner().invoke(app, ["status", "--name", name, "--json"]).output)
    assert as_json["ipv6"] is True and as_json["pods"][0]["ip6"] == "fd00:10:244::b"

    # `lab up` again with the same spec keeps the lab as it is.
    assert build.up(LabSpec(name, 2, nodes, podnet.Cni(cni), True)).server_pids == lab.server_pids
    assert _root_net() == before

    down = CliRunner().invoke(app, ["down", "--name", name])
    assert down.exit_code == 0, down.output
    assert build.leftovers(name) == []
    assert not (layout.LAB_ROOT / name).exists()
    assert _root_net() == before


@pytest.mark.root
@pytest.mark.parametrize("cni", CNIS)
def test_pods_added_to_a_dual_stack_lab_get_ipv6(cni: str, lab_names: Callable[[], str]) -> None:
    name = lab_names()
    lab = build.up(LabSpec(name, pods=1, cni=podnet.Cni(cni), ipv6=True))
    pod = build.add_pod(lab, 5)
    assert pod.ip6 == IPv6Address("fd00:10:244::f")
    assert _answers(lab.client.netns, pod.ip6) == ("pod-5\n",) * 2
    manifests = yaml.safe_load_all((lab.state_dir / "manifests" / "cluster.yaml").read_text())
    assert "fd00:10:244::f" in json.dumps(list(manifests))
    build.remove_pod(lab, 5)
    with traffic.fails(traffic.Failure.UNREACHABLE, traffic.Failure.TIMEOUT):
        traffic.http_get(lab.client.netns, pod.ip6, HTTP_PORT, timeout=0.5)
    build.down(name)
    assert build.leftovers(name) == []


@pytest.mark.root
def test_ipv4_lab_stays_ipv4_only(lab_names: Callable[[], str]) -> None:
    """Without --ipv6 nothing changes: no global IPv6 address anywhere, single-stack
    manifests, and the record says so."""
    name = lab_names()
    lab = build.up(LabSpec(name, pods=1))
    assert not lab.ipv6 and lab.pods[0].ip6 is None and lab.node(1).pod_cidr6 is None
    for ns in lab.namespaces:
        assert not any(
            a.get("scope") == "global"
            for link in _json(ns, "-6", "addr")
            for a in link["addr_info"]
        ), ns
    objs = list(yaml.safe_load_all((lab.state_dir / "manifests" / "cluster.yaml").read_text()))
    assert {o["spec"].get("ipFamilyPolicy") for o in objs if o["kind"] == "Service"} == {
        "SingleStack"
    }
    slices = ManifestSource(lab.state_dir / "manifests").load().slices
    assert {o["addressType"] for o in slices} == {"IPv4"}
    assert json.loads((lab.state_dir / "state.json").read_text())["ipv6"] is False
    build.down(name)


def test_an_older_record_reads_as_an_ipv4_lab(tmp_path: Path) -> None:
    """A version 3 record (before IPv6) still reads: an IPv4-only lab."""
    data = layout._plan(LabSpec("old", pods=2, nodes=2)).to_json()
    data["version"] = 3
    del data["ipv6"]
    for pod in data["pods"]:
        del pod["ip6"]
    lab = Lab.from_json(data, tmp_path)
    assert not lab.ipv6 and [p.ip6 for p in lab.pods] == [None] * 4
    assert lab.pods[0].ip == IPv4Address("10.244.0.11")
    with pytest.raises(Exception, match="no IPv6"):
        lab.ip6(lab.pods[0])


def test_ipv6_plan() -> None:
    """The addressing plan, without building anything."""
    lab = layout._plan(LabSpec("plan", pods=2, nodes=3, ipv6=True))
    assert [n.pod_cidr6 for n in lab.nodes] == [
        IPv6Network(f"fd00:10:244:{k}::/64") for k in range(3)
    ]
    assert [str(p.ip6) for p in lab.pods] == [
        "fd00:10:244::b", "fd00:10:244::c", "fd00:10:244:1::d",
        "fd00:10:244:1::e", "fd00:10:244:2::f", "fd00:10:244:2::10",
    ]  # fmt: skip
    assert [str(n.address6) for n in lab.nodes] == [f"fd00:192:168:50::{k}" for k in (1, 2, 3)]
    assert [str(n.client.ip6) for n in lab.nodes] == [
        f"fd00:10:244:{k}::c8".replace(":0::", "::") for k in range(3)
    ]
    one = layout._plan(LabSpec("one", ipv6=True))
    assert one.node(1).address6 is None and one.node(1).internal_ip6 == IPv6Address(
        "fd00:10:244::1"
    )
    assert one.gateway6() == IPv6Address("fe80::1")
    bridged = layout._plan(LabSpec("br", ipv6=True, cni=podnet.Cni.BRIDGE))
    assert bridged.gateway6() == IPv6Address("fd00:10:244::1")
    endpoint = lab.endpoint(3, ipv6=True)
    assert endpoint["addresses"] == ["fd00:10:244:1::d"] and endpoint["nodeName"] == "node-2"


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _slices(path: Path) -> dict[str, list[str]]:
    return {
        o["metadata"]["name"]: [a for e in o["endpoints"] for a in e["addresses"]]
        for o in yaml.safe_load_all(path.read_text())
        if o["kind"] == "EndpointSlice"
    }


def test_the_dual_stack_examples_follow_the_lab_plan() -> None:
    """examples/dualstack and examples/multinode-dualstack name the lab's addresses."""
    one = _slices(EXAMPLES / "dualstack" / "web.yaml")
    assert one["web-v6"] == [str(layout.pod_ip6(i)) for i in (1, 2, 3, 4)]
    assert one["web-v4"] == [str(layout.pod_ip(i)) for i in (1, 2, 3, 4)]
    mn = layout._plan(LabSpec("mn", pods=2, nodes=2, ipv6=True))
    two = _slices(EXAMPLES / "multinode-dualstack" / "cluster.yaml")
    assert two["web-mn-v6"] == [str(p.ip6) for p in mn.pods]
    nodes = [
        o for o in yaml.safe_load_all((EXAMPLES / "multinode-dualstack" / "cluster.yaml").open())
        if o["kind"] == "Node"
    ]  # fmt: skip
    assert [[a["address"] for a in n["status"]["addresses"]] for n in nodes] == [
        [str(n.address), str(n.address6)] for n in mn.nodes
    ]
    assert (
        "fd00:192:168:50::65/128" in (EXAMPLES / "multinode-dualstack" / "cluster.yaml").read_text()
    )
    assert mn.outside[0].ip6 == IPv6Address("fd00:192:168:50::65")
