"""IPv6 and dual-stack Services through translation: tables of Services and
EndpointSlices -> frontends and backends per family, and each bad input -> one error
naming the object while every other object applies."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.nodeaddrs import AddressSource, choose
from ebpflb.agent.nodeports import NodePortAddresses
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import DesiredState, IPAddress, ServiceRef
from ebpflb.sources.lastgood import LastGood, problems
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate
from tests.unit.test_translate import ep, eps, port, sport, svc

IP = ipaddress.ip_address
V4_NODE = IP("192.168.1.10")
V6_NODE = IP("fd00:192:168:50::1")
NODES: tuple[IPAddress, ...] = (V4_NODE, V6_NODE)
HTTP = port("http", 80, target=8080, node_port=30080)
HTTP_SLICE = sport("http", 8080, "TCP")
LB_STATUS = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}, {"ip": "fd00:192:168:60::7"}]}}


def dual(name: str = "web", **spec: Any) -> dict[str, Any]:
    """A dual-stack LoadBalancer Service, IPv4 primary, with an external IP of each family."""
    fields: dict[str, Any] = {
        "type": "LoadBalancer",
        "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
        "ipFamilies": ["IPv4", "IPv6"],
        "ipFamilyPolicy": "PreferDualStack",
        "externalIPs": ["198.51.100.5", "fd00:198:51::5"],
    }
    fields.update(spec)
    primary = spec.get("clusterIP", fields["clusterIPs"][0])
    fields.pop("clusterIP", None)
    return svc(name, HTTP, ip=primary, status=LB_STATUS, **fields)


SLICES = [
    eps("web-v4", "web", [HTTP_SLICE], ep("10.244.0.11"), ep("10.244.0.12")),
    eps("web-v6", "web", [HTTP_SLICE], ep("fd00:10:244::11"), address_type="IPv6"),
]


def table(state: DesiredState) -> dict[str, tuple[list[str], str | None, list[str]]]:
    """frontend -> (active backends, source NAT address, source ranges)."""
    return {
        f"{e.frontend.kind} {e.frontend}": (
            [str(b) for b in e.active],
            str(e.snat_address) if e.snat_address else None,
            [str(r) for r in e.source_ranges],
        )
        for e in state.entries.values()
    }


V4 = ["10.244.0.11:8080", "10.244.0.12:8080"]
V6 = ["[fd00:10:244::11]:8080"]
Row = tuple[list[str], str | None, list[str]]
V4_FRONTENDS: dict[str, Row] = {
    "clusterip 10.96.0.10:80/TCP": (V4, None, []),
    "nodeport 192.168.1.10:30080/TCP": (V4, "192.168.1.10", []),
    "external 198.51.100.5:80/TCP": (V4, "192.168.1.10", []),
    "loadbalancer 192.0.2.7:80/TCP": (V4, "192.168.1.10", []),
}
V6_FRONTENDS: dict[str, Row] = {
    "clusterip [fd00:10:96::a]:80/TCP": (V6, None, []),
    "nodeport [fd00:192:168:50::1]:30080/TCP": (V6, "fd00:192:168:50::1", []),
    "external [fd00:198:51::5]:80/TCP": (V6, "fd00:192:168:50::1", []),
    "loadbalancer [fd00:192:168:60::7]:80/TCP": (V6, "fd00:192:168:50::1", []),
}

GOOD: list[Any] = [
    pytest.param([dual()], NODES, None, {**V4_FRONTENDS, **V6_FRONTENDS}, id="dual-stack"),
    pytest.param(
        [dual(clusterIPs=["fd00:10:96::a", "10.96.0.10"], ipFamilies=["IPv6", "IPv4"])],
        NODES,
        None,
        {**V4_FRONTENDS, **V6_FRONTENDS},
        id="dual-stack-ipv6-primary",
    ),
    pytest.param(
        [dual(clusterIPs=["fd00:10:96::a"], ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack")],
        NODES,
        None,
        V6_FRONTENDS,
        id="ipv6-only-ignores-ipv4-slices-and-addresses",
    ),
    pytest.param([dual()], (V4_NODE,), {4}, V4_FRONTENDS, id="prefer-dual-on-ipv4-node"),
    pytest.param([dual()], (V6_NODE,), {6}, V6_FRONTENDS, id="prefer-dual-on-ipv6-node"),
    pytest.param(
        [dual(loadBalancerSourceRanges=["203.0.113.0/24", "fd00:203::/48"])],
        NODES,
        None,
        {
            **V4_FRONTENDS,
            **V6_FRONTENDS,
            "loadbalancer 192.0.2.7:80/TCP": (V4, "192.168.1.10", ["203.0.113.0/24"]),
            "loadbalancer [fd00:192:168:60::7]:80/TCP": (
                V6,
                "fd00:192:168:50::1",
                ["fd00:203::/48"],
            ),
        },
        id="source-ranges-per-family",
    ),
    pytest.param(
        [dual(externalTrafficPolicy="Local")],
        NODES,
        None,
        {
            k: ([], None, r) if "clusterip" not in k else (b, s, r)
            for k, (b, s, r) in {**V4_FRONTENDS, **V6_FRONTENDS}.items()
        },
        id="local-policy-keeps-client-address",
    ),
]


@pytest.mark.parametrize(("services", "nodes", "families", "want"), GOOD)
def test_dual_stack_translates_per_family(services, nodes, families, want):
    result = translate(
        services, SLICES, node_name="node-a", node_addresses=nodes, node_families=families
    )
    assert result.errors == ()
    assert table(result.state) == want


def test_service_info_lists_both_cluster_ips():
    result = translate([dual()], [])
    info = result.state.services[ServiceRef("demo", "web")]
    assert info.cluster_ip == "10.96.0.10"
    assert info.cluster_ips == ("10.96.0.10", "fd00:10:96::a")
    headless = translate([svc("h", HTTP, ip="None", clusterIPs=["None"])], [])
    assert headless.state.services[ServiceRef("demo", "h")].cluster_ips == ("None",)
    assert not headless.state.entries


GOOD_SVC = svc("good", port("http", 80, target=8080), ip="fd00:10:96::20")
GOOD_SLICE = eps("good-1", "good", [HTTP_SLICE], ep("fd00:10:244::1"), address_type="IPv6")
GOOD_KEY = (IP("fd00:10:96::20"), 80)

BAD: list[Any] = [
    # (objects, node families, error "Kind ns/name", message part, frontends left of them)
    pytest.param(
        [dual("bad", clusterIP="10.96.0.10", clusterIPs=["10.96.0.11", "fd00:10:96::a"])],
        None,
        "Service demo/bad",
        "spec.clusterIP 10.96.0.10 is not spec.clusterIPs[0] 10.96.0.11",
        0,
        id="clusterip-not-clusterips0",
    ),
    pytest.param(
        [dual("bad", clusterIPs=["10.96.0.10", "10.96.0.11"], ipFamilies=None)],
        None,
        "Service demo/bad",
        "two IPv4 addresses",
        0,
        id="two-of-one-family",
    ),
    pytest.param(
        [dual("bad", ipFamilies=["IPv6", "IPv4"])],
        None,
        "Service demo/bad",
        "spec.clusterIPs[0] 10.96.0.10 is not of spec.ipFamilies[0]",
        0,
        id="families-disagree-with-ipfamilies",
    ),
    pytest.param(
        [dual("bad", ipFamilyPolicy="SingleStack")],
        None,
        "Service demo/bad",
        "SingleStack but two families",
        0,
        id="singlestack-with-two",
    ),
    pytest.param(
        [dual("bad", ipFamilyPolicy="BothPlease")],
        None,
        "Service demo/bad",
        "spec.ipFamilyPolicy 'BothPlease'",
        0,
        id="unknown-policy",
    ),
    pytest.param(
        [dual("bad", ipFamilies=["IPv4", "IPv4"])],
        None,
        "Service demo/bad",
        "names IPv4 twice",
        0,
        id="ipfamilies-twice",
    ),
    pytest.param(
        [dual("bad", clusterIPs=["10.96.0.10", "fd00:10:96::zz"])],
        None,
        "Service demo/bad",
        "spec.clusterIPs 'fd00:10:96::zz' is not an IP address",
        0,
        id="malformed-clusterips",
    ),
    pytest.param(
        [dual("bad", clusterIPs=["10.96.0.10"], ipFamilies=["IPv4"])],
        {6},
        "Service demo/bad",
        "has no ClusterIP of a family this node serves (IPv6); Service skipped",
        0,
        id="ipv4-service-on-ipv6-node",
    ),
    pytest.param(
        [dual("bad", ipFamilyPolicy="RequireDualStack")],
        {6},
        "Service demo/bad",
        "RequireDualStack, but this node has no IPv4 address; only IPv6 served",
        4,
        id="require-dual-on-ipv6-node",
    ),
    pytest.param(
        [dual("bad", loadBalancerSourceRanges=["203.0.113.0/24"])],
        None,
        "Service demo/bad",
        "no IPv6 range; its IPv6 load-balancer addresses are skipped",
        7,
        id="ranges-of-other-family-only",
    ),
    pytest.param(
        [eps("bad-1", "good", [HTTP_SLICE], ep("10.244.0.9"), address_type="IPv6")],
        None,
        "EndpointSlice demo/bad-1",
        "endpoints[0]: address 10.244.0.9 is not IPv6 (the slice's addressType)",
        0,
        id="ipv4-address-in-ipv6-slice",
    ),
    pytest.param(
        [eps("bad-4", "web", [HTTP_SLICE], ep("fd00:10:244::9"), ep("10.244.0.13"))],
        None,
        "EndpointSlice demo/bad-4",
        "endpoints[0]: address fd00:10:244::9 is not IPv4 (the slice's addressType)",
        0,
        id="ipv6-address-in-ipv4-slice",
    ),
]


@pytest.mark.parametrize(("objects", "families", "names", "message", "left"), BAD)
def test_bad_dual_stack_input_is_one_error_naming_the_object(
    objects, families, names, message, left
):
    services = [GOOD_SVC, *(o for o in objects if o["kind"] == "Service")]
    slices = [GOOD_SLICE, *(o for o in objects if o["kind"] == "EndpointSlice")]
    result = translate(
        services, slices, node_name="node-a", node_addresses=NODES, node_families=families
    )
    assert [str(e) for e in result.errors] == [f"{names}: {e.message}" for e in result.errors]
    assert len(result.errors) == 1, result.errors
    assert message in result.errors[0].message, result.errors[0].message
    assert f"{result.errors[0].kind} {result.errors[0].object}" == names
    if families is None or 6 in families:  # the good IPv6 Service is untouched
        good = result.state.entries[(*GOOD_KEY, next(iter(result.state.entries))[2])]
        assert [str(b) for b in good.active] == ["[fd00:10:244::1]:8080"]
    others = [e for e in result.state.entries.values() if e.port_name.service.name != "good"]
    assert len(others) == left


def test_wrong_family_endpoint_is_skipped_the_rest_of_the_slice_kept():
    bad = eps("web-v4", "web", [HTTP_SLICE], ep("fd00:10:244::9"), ep("10.244.0.13"))
    result = translate([dual()], [bad], node_addresses=NODES)
    entry = result.state.entries[(IP("10.96.0.10"), 80, next(iter(result.state.entries))[2])]
    assert [str(b) for b in entry.active] == ["10.244.0.13:8080"]
    v6 = result.state.entries[(IP("fd00:10:96::a"), 80, entry.frontend.protocol)]
    assert v6.active == ()  # the stray IPv6 address never reaches the IPv6 frontend


def test_ranges_of_the_other_family_close_only_that_family():
    result = translate(
        [dual(loadBalancerSourceRanges=["203.0.113.0/24"])], SLICES, node_addresses=NODES
    )
    lb = {
        str(e.frontend): e.source_ranges
        for e in result.state.entries.values()
        if e.frontend.kind == "loadbalancer"
    }
    assert lb == {"192.0.2.7:80/TCP": (ipaddress.ip_network("203.0.113.0/24"),)}


# --- the agent logs each bad object once, by name --------------------------------------


def test_agent_logs_one_line_per_bad_object(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import yaml

    caplog.set_level(logging.INFO)
    objects = [
        dual(),
        *SLICES,
        eps("web-mixed", "web", [HTTP_SLICE], ep("fd00:10:244::77"), ep("10.244.0.13")),
        dual("mismatch", clusterIP="10.96.0.98", clusterIPs=["10.96.0.99", "fd00:10:96::99"]),
    ]
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(objects))
    dp = FakeDataplane()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(min_sync_interval=0.0))
    agent.step()
    agent.step()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "EndpointSlice demo/web-mixed" in m]) == 1
    assert len([m for m in lines if "Service demo/mismatch" in m]) == 1
    assert any("fd00:10:244::77" in m for m in lines)
    served = {str(k[0]) for k in dp.state}
    assert {"10.96.0.10", "fd00:10:96::a"} <= served
    assert "10.96.0.99" not in served and "fd00:10:96::99" not in served
    agent.close()


# --- the last good version: dual-stack fields ---------------------------------------------


def test_last_good_holds_a_mismatched_clusterips_edit():
    good = {"kind": "Service", **dual()}
    bad = {"kind": "Service", **dual(clusterIP="10.96.0.10", clusterIPs=["10.96.0.11", "::a"])}
    assert problems(good) == ()
    store = LastGood()
    key = ("Service", "demo", "web")
    assert store.choose(key, good) == (good, None)
    served, why = store.choose(key, bad)
    assert served is good and why is not None and "clusterIPs[0]" in why


def test_last_good_applies_ranges_of_one_family_and_node_facts():
    # Not the object's fault: node facts and per-family ranges are never held back
    # (holding would keep an older version open to every client).
    ranged = {"kind": "Service", **dual(loadBalancerSourceRanges=["203.0.113.0/24"])}
    assert problems(ranged) == ()
    ipv6_only = {"kind": "Service", **svc("v6", HTTP, ip="fd00:10:96::b")}
    assert problems(ipv6_only) == ()


# --- node addresses ---------------------------------------------------------------------


def node(*addresses: tuple[str, str]) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


NODE_DUAL = node(
    ("InternalIP", "192.168.1.10"),
    ("InternalIP", "fd00:192:168:50::1"),
    ("ExternalIP", "203.0.113.10"),
    ("ExternalIP", "2001:db8::10"),
)


@pytest.mark.parametrize(
    ("nodes", "local", "option", "addresses", "families"),
    [
        pytest.param(
            [NODE_DUAL],
            (),
            "",
            ["192.168.1.10", "fd00:192:168:50::1", "203.0.113.10", "2001:db8::10"],
            {4, 6},
            id="node-object-both-families",
        ),
        pytest.param(
            [NODE_DUAL], (), "primary", ["192.168.1.10", "fd00:192:168:50::1"], {4, 6}, id="primary"
        ),
        pytest.param(
            [NODE_DUAL],
            (),
            "fd00::/8,203.0.113.0/24",
            ["fd00:192:168:50::1", "203.0.113.10"],
            {4, 6},
            id="nodeport-addresses-of-both-families",
        ),
        pytest.param(
            [NODE_DUAL], (), "192.168.0.0/16", ["192.168.1.10"], {4, 6}, id="narrowed-keeps-family"
        ),
        pytest.param(
            [node(("InternalIP", "192.168.1.10"))],
            (IP("fd00:192:168:50::1"),),
            "",
            ["192.168.1.10"],
            {4, 6},
            id="families-of-node-and-interfaces",
        ),
        pytest.param(
            [],
            (IP("fd00:192:168:50::1"), IP("192.168.1.10"), IP("fd00:192:168:50::2")),
            "primary",
            ["fd00:192:168:50::1", "192.168.1.10"],
            {4, 6},
            id="local-primary-of-each-family",
        ),
        pytest.param([], (V4_NODE,), "", ["192.168.1.10"], {4}, id="ipv4-only-node"),
    ],
)
def test_node_addresses_of_both_families(nodes, local, option, addresses, families):
    choice = choose(nodes, "node-a", local, NodePortAddresses.parse(option))
    assert [str(a) for a in choice.addresses] == addresses
    assert choice.families == frozenset(families)
    assert choice.source is (AddressSource.NODE_OBJECT if nodes else AddressSource.LOCAL_INTERFACES)
