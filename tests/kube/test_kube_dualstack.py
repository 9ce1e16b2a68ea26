"""Dual-stack Services through the real ``kubernetes`` client and the API server
stand-in: the source keeps clusterIPs, ipFamilies, ipFamilyPolicy and IPv6 slices as
the API gives them, and translation serves both families from them."""

from __future__ import annotations

import ipaddress

from ebpflb.sources.translate import node_addresses, translate
from tests.kube.conftest import NODE_NAME
from tests.kube.objects import endpoint_slice, node, service
from tests.kube.test_kube_source import started


def test_kube_source_serves_a_dual_stack_service(apiserver, make_source):
    svc = service("web", "10.96.0.10")
    svc["spec"].update(
        type="NodePort",
        clusterIPs=["10.96.0.10", "fd00:10:96::a"],
        ipFamilies=["IPv4", "IPv6"],
        ipFamilyPolicy="RequireDualStack",
    )
    svc["spec"]["ports"][0]["nodePort"] = 30080
    v6 = endpoint_slice("web", ["fd00:10:244::11"], suffix="v6")
    v6["addressType"] = "IPv6"
    this_node = node(NODE_NAME, "192.168.0.10")
    this_node["status"]["addresses"].append({"type": "InternalIP", "address": "fd00:192::10"})
    apiserver.apply(svc)
    apiserver.apply(endpoint_slice("web", ["10.244.0.11"]))
    apiserver.apply(v6)
    apiserver.apply(this_node)
    snap = started(make_source).load()

    (kept,) = snap.services
    assert kept["spec"]["ipFamilyPolicy"] == "RequireDualStack"
    nodes = node_addresses(snap.nodes, NODE_NAME)
    result = translate(snap.services, snap.slices, node_name=NODE_NAME, node_addresses=nodes)
    assert result.errors == ()
    got = {
        f"{e.frontend.kind} {e.frontend}": [str(b) for b in e.active]
        for e in result.state.entries.values()
    }
    assert got == {
        "clusterip 10.96.0.10:80/TCP": ["10.244.0.11:8080"],
        "nodeport 192.168.0.10:30080/TCP": ["10.244.0.11:8080"],
        "clusterip [fd00:10:96::a]:80/TCP": ["[fd00:10:244::11]:8080"],
        "nodeport [fd00:192::10]:30080/TCP": ["[fd00:10:244::11]:8080"],
    }
    assert ipaddress.ip_address("fd00:192::10") in nodes
