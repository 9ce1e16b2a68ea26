"""The bridge node shape (`ebpflb lab up --cni bridge`), as flannel builds a node: pod
veths are ports of cni0, which holds each node's gateway; nodes are joined by a VXLAN
overlay (flannel.1). Read back from the kernel, used by real traffic, recorded, shown
by the CLI, and nothing left behind, the root namespace untouched."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli.lab import app
from ebpflb.errors import LabError
from ebpflb.lab import build, layout, netns, podnet, traffic
from ebpflb.lab.processes import HTTP_PORT, UDP_PORT

pytestmark = pytest.mark.root


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


def test_two_bridged_nodes_on_an_overlay(lab_names: Callable[[], str]) -> None:
    before = _root_net()
    name = lab_names()
    result = CliRunner().invoke(
        app, ["up", "--name", name, "--nodes", "2", "--pods", "2", "--cni", "bridge"]
    )
    assert result.exit_code == 0, result.output
    assert "(bridge pods)" in result.output
    assert _root_net() == before
    lab = build.status(name)
    assert lab is not None and lab.cni == "bridge" and lab.overlay == "flannel.1"
    assert lab.node_ifnames(2) == ["vp3", "vp4", "vc1", "eth0", "flannel.1"]

    for node in lab.nodes:
        ns, gw = node.netns, lab.gateway(node.index)
        assert gw == node.pod_cidr[1]
        ports = _json(ns, "link", "show", "master", podnet.BRIDGE)
        assert sorted(str(p["ifname"]) for p in ports) == sorted(
            [*(p.host_ifname for p in lab.node_pods(node.index)), "vc1"]
        )
        addrs = {
            (a["ifname"], i["local"], i["prefixlen"])
            for a in _json(ns, "-4", "addr")
            for i in a["addr_info"]
        }
        assert {("cni0", str(gw), 24), ("flannel.1", str(node.pod_cidr[0]), 32)} <= addrs
        assert not any(ifname.startswith("vp") for ifname, _, _ in addrs)  # L2 ports only
        # Strict on the bridge, as some distributions default to: the agent must cope.
        assert _sysctl(ns, f"net.ipv4.conf.{podnet.BRIDGE}.rp_filter") == "1"
        assert _sysctl(ns, f"net.ipv4.conf.{podnet.BRIDGE}.accept_local") == "0"
        vxlan = _json(ns, "-d", "link", "show", "flannel.1")[0]
        info = vxlan["linkinfo"]["info_data"]
        assert (info["id"], info["port"], vxlan["mtu"]) == (1, 8472, 1450)
        assert vxlan["address"] == podnet.vtep_mac(node.index)
        other = lab.nodes[2 - node.index]
        routes = {(r["dst"], r.get("gateway"), r["dev"]) for r in _json(ns, "-4", "route")}
        assert (str(other.pod_cidr), str(other.pod_cidr[0]), "flannel.1") in routes
        fdb = subprocess.run(
            ["bridge", "-n", ns, "-j", "fdb", "show", "dev", "flannel.1"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert {(e["mac"], e.get("dst")) for e in json.loads(fdb)} >= {
            (podnet.vtep_mac(other.index), str(other.address))
        }

    pod = lab.pod(1)
    pod_routes = {(r["dst"], r.get("gateway")) for r in _json(pod.netns, "-4", "route")}
    assert pod_routes == {("default", "10.244.0.1"), ("10.244.0.0/24", None)}
    for node in lab.nodes:  # across the overlay both ways, TCP and UDP
        for target in lab.pods:
            assert traffic.http_get(node.client.netns, target.ip, HTTP_PORT) == (f"{target.name}\n")
            assert traffic.udp_request(node.client.netns, target.ip, UDP_PORT)[0] == (
                f"{target.name}\n"
            )

    result = CliRunner().invoke(app, ["status", "--name", name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cni"] == "bridge"
    assert data["nodes"][0]["ifnames"] == ["vp1", "vp2", "vc1", "eth0", "flannel.1"]

    result = CliRunner().invoke(app, ["down", "--name", name])
    assert result.exit_code == 0, result.output
    assert [ns for ns in netns.list_netns() if ns.startswith(f"{name}-")] == []
    assert _root_net() == before


def test_one_bridged_node_and_its_pods(lab_names: Callable[[], str]) -> None:
    name = lab_names()
    lab = build.up(layout.LabSpec(name, pods=2, cni=podnet.Cni.BRIDGE))
    assert lab.overlay is None and lab.bridge == "cni0"
    assert str(lab.gateway()) == "10.244.0.1"
    # Added and removed pods are bridge ports too, and the bridge keeps its MAC (a
    # bridge takes its lowest port's by default: every pod's gateway entry went stale).
    mac = _json(lab.node_ns, "link", "show", "cni0")[0]["address"]
    assert mac == "0a:58:0a:f4:00:01"
    added = build.add_pod(lab, 7)
    assert _json(lab.node_ns, "link", "show", "cni0")[0]["address"] == mac
    ports = _json(lab.node_ns, "link", "show", "master", podnet.BRIDGE)
    assert "vp7" in {p["ifname"] for p in ports}
    assert traffic.http_get(lab.client.netns, added.ip, HTTP_PORT) == "pod-7\n"
    build.remove_pod(lab, 7)
    ports = _json(lab.node_ns, "link", "show", "master", podnet.BRIDGE)
    assert "vp7" not in {p["ifname"] for p in ports}
    assert _json(lab.node_ns, "link", "show", "cni0")[0]["address"] == mac
    again = build.status(name)
    assert again is not None and again.cni == "bridge"


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(LabError, match="use one of routed, bridge"):
        layout.LabSpec("ok", cni="weave")  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["up", "--name", "ok", "--cni", "weave"])
    assert result.exit_code == 2 and "weave" in result.output
