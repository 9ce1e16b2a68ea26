"""Topology-aware routing, rule by rule and fallback by fallback (kube-proxy's
CategorizeEndpoints): which endpoints take new flows on this node, and that the zone
reaches translation from the Node's label or --zone, through every path."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.model import FrontendKind, ServiceEntry
from ebpflb.sources.compact import compact
from ebpflb.sources.incremental import IncrementalTranslator
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.topology import Preference, node_zone, preference
from ebpflb.sources.translate import translate

NODE, ZONE = "node-a", "zone-a"
MODE = "service.kubernetes.io/topology-mode"
LEGACY = "service.kubernetes.io/topology-aware-hints"


def service(
    *,
    distribution: str | None = None,
    annotations: dict[str, str] | None = None,
    etp: str | None = None,
    itp: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "clusterIP": "10.96.0.10",
        "type": "NodePort",
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
    }
    if distribution is not None:
        spec["trafficDistribution"] = distribution
    if etp is not None:
        spec["externalTrafficPolicy"] = etp
    if itp is not None:
        spec["internalTrafficPolicy"] = itp
    meta: dict[str, Any] = {"name": "web", "namespace": "demo"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"kind": "Service", "metadata": meta, "spec": spec}


def ep(
    last: int,
    *,
    zones: tuple[str, ...] | None = None,
    nodes: tuple[str, ...] | None = None,
    node: str | None = None,
    ready: bool = True,
    terminating: bool = False,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "addresses": [f"10.244.0.{last}"],
        "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
    }
    hints: dict[str, Any] = {}
    if zones is not None:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes is not None:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        item["hints"] = hints
    if node is not None:
        item["nodeName"] = node
    return item


def slice_of(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": list(endpoints),
    }


def entries(
    svc: dict[str, Any],
    *endpoints: dict[str, Any],
    node: str | None = NODE,
    zone: str | None = ZONE,
) -> dict[FrontendKind, ServiceEntry]:
    result = translate(
        [svc],
        [slice_of(*endpoints)],
        node_name=node,
        node_zone=zone,
        node_addresses=[ipaddress.ip_address("192.168.1.10")],
    )
    assert result.errors == ()
    return {e.frontend.kind: e for e in result.state.entries.values()}


def active(
    svc: dict[str, Any],
    *endpoints: dict[str, Any],
    node: str | None = NODE,
    zone: str | None = ZONE,
    kind: FrontendKind = FrontendKind.CLUSTER_IP,
) -> set[int]:
    """The last octets of the endpoints that take new flows on one frontend."""
    entry = entries(svc, *endpoints, node=node, zone=zone)[kind]
    return {int(str(b.address).rsplit(".", 1)[1]) for b in entry.active}


ZONED = (ep(1, zones=("zone-a",)), ep(2, zones=("zone-b",)), ep(3, zones=("zone-a", "zone-c")))


@pytest.mark.parametrize(
    "svc",
    [
        service(distribution="PreferClose"),
        service(distribution="PreferSameZone"),
        service(annotations={MODE: "Auto"}),
        service(annotations={MODE: "auto"}),
        service(annotations={LEGACY: "auto"}),
        service(annotations={LEGACY: "Auto"}),
    ],
    ids=["PreferClose", "PreferSameZone", "mode-Auto", "mode-auto", "legacy-auto", "legacy-Auto"],
)
def test_zone_hints_pick_the_endpoints_hinted_for_this_zone(svc):
    assert active(svc, *ZONED) == {1, 3}
    assert active(svc, *ZONED, kind=FrontendKind.NODE_PORT) == {1, 3}


@pytest.mark.parametrize(
    "svc",
    [
        service(),
        service(annotations={MODE: "Disabled"}),
        service(annotations={MODE: ""}),
        service(annotations={"other": "Auto"}),
        service(annotations={MODE: "Disabled", LEGACY: "auto"}),  # the current one decides
    ],
    ids=["no-request", "Disabled", "empty", "unrelated", "mode-beats-legacy"],
)
def test_hints_are_ignored_unless_the_service_asks(svc):
    assert active(svc, *ZONED) == {1, 2, 3}


def test_a_ready_endpoint_without_a_zone_hint_means_every_endpoint():
    svc = service(distribution="PreferClose")
    assert active(svc, *ZONED, ep(4)) == {1, 2, 3, 4}


def test_hints_of_endpoints_that_are_not_ready_do_not_matter():
    svc = service(distribution="PreferClose")
    unhinted_not_ready = ep(4, ready=False)
    assert active(svc, *ZONED, unhinted_not_ready) == {1, 3}


def test_no_endpoint_for_this_zone_means_every_endpoint():
    svc = service(distribution="PreferClose")
    assert active(svc, *ZONED, zone="zone-z") == {1, 2, 3}


def test_unknown_zone_means_every_endpoint():
    assert active(service(distribution="PreferClose"), *ZONED, zone=None) == {1, 2, 3}


def test_same_node_uses_node_hints_first():
    svc = service(distribution="PreferSameNode")
    eps = (
        ep(1, zones=("zone-a",), nodes=("node-b",)),
        ep(2, zones=("zone-a",), nodes=("node-a",)),
        ep(3, zones=("zone-b",), nodes=("node-c",)),
    )
    assert active(svc, *eps) == {2}


def test_same_node_falls_back_to_zone_hints_when_none_is_for_this_node():
    svc = service(distribution="PreferSameNode")
    eps = (ep(1, zones=("zone-a",), nodes=("node-b",)), ep(2, zones=("zone-b",), nodes=("node-c",)))
    assert active(svc, *eps) == {1}


def test_same_node_falls_back_to_zone_hints_when_node_hints_are_incomplete():
    svc = service(distribution="PreferSameNode")
    eps = (
        ep(1, zones=("zone-a",), nodes=("node-a",)),
        ep(2, zones=("zone-a",)),
        ep(3, zones=("zone-b",)),
    )
    assert active(svc, *eps) == {1, 2}


def test_same_node_falls_back_to_every_endpoint_without_usable_hints():
    svc = service(distribution="PreferSameNode")
    eps = (ep(1, nodes=("node-b",)), ep(2, nodes=("node-c",)))
    assert active(svc, *eps) == {1, 2}


def test_same_node_without_a_node_name_uses_zone_hints():
    svc = service(distribution="PreferSameNode")
    eps = (
        ep(1, zones=("zone-a",), nodes=("node-a",)),
        ep(2, zones=("zone-a",), nodes=("node-b",)),
        ep(3, zones=("zone-b",), nodes=("node-a",)),
    )
    assert active(svc, *eps, node=None) == {1, 2}


def test_zone_distribution_ignores_node_hints():
    svc = service(distribution="PreferClose")
    eps = (ep(1, zones=("zone-a",), nodes=("node-b",)), ep(2, zones=("zone-a",), nodes=("node-a",)))
    assert active(svc, *eps) == {1, 2}


def test_excluded_endpoints_keep_their_flows_but_take_no_new_ones():
    """Out-of-zone endpoints stay known to the frontend (inactive), so a flow already on
    one keeps it, as conntrack does for kube-proxy; they only take no new flows."""
    entry = entries(service(distribution="PreferClose"), *ZONED)[FrontendKind.CLUSTER_IP]
    assert len(entry.backends) == 3 and len(entry.active) == 2
    assert not next(b for b in entry.backends if str(b.address) == "10.244.0.2").ready


def test_no_ready_endpoint_falls_back_to_terminating_ones_whatever_their_zone():
    svc = service(distribution="PreferClose")
    eps = (
        ep(1, zones=("zone-b",), ready=False, terminating=True),
        ep(2, zones=("zone-a",), ready=False),
    )
    assert active(svc, *eps) == {1}


def test_local_policies_are_not_narrowed_by_topology():
    """externalTrafficPolicy: Local uses every local endpoint; the ClusterIP (Cluster
    policy) is narrowed to this zone."""
    svc = service(distribution="PreferClose", etp="Local")
    eps = (
        ep(1, zones=("zone-a",), node="node-b"),
        ep(2, zones=("zone-b",), node=NODE),
        ep(3, zones=("zone-b",), node="node-c"),
    )
    assert active(svc, *eps) == {1}
    assert active(svc, *eps, kind=FrontendKind.NODE_PORT) == {2}
    internal_local = service(distribution="PreferClose", itp="Local")
    assert active(internal_local, *eps) == {2}
    assert active(internal_local, *eps, kind=FrontendKind.NODE_PORT) == {1}


def test_unknown_traffic_distribution_is_reported_and_ignored():
    svc = service(distribution="PreferFar", annotations={MODE: "Auto"})
    result = translate([svc], [slice_of(*ZONED)], node_name=NODE, node_zone=ZONE)
    assert [str(e) for e in result.errors] == [
        "Service demo/web: spec.trafficDistribution 'PreferFar' is not PreferClose, "
        "PreferSameZone or PreferSameNode; ignored"
    ]
    entry = next(iter(result.state.entries.values()))
    assert len(entry.active) == 2  # the annotation still asks for zone hints


def test_malformed_hints_skip_the_endpoint_by_name():
    bad = ep(4)
    bad["hints"] = {"forZones": ["zone-a"]}
    result = translate([service()], [slice_of(ep(1), bad)])
    assert [str(e) for e in result.errors] == [
        "EndpointSlice demo/web-1: endpoints[1]: hints.forZones[] is not an object; "
        "endpoint skipped"
    ]


def test_preference_table():
    assert preference({}, None) == (Preference.NONE, None)
    assert preference({"trafficDistribution": "PreferSameNode"}, {MODE: "Auto"}) == (
        Preference.NODE,
        None,
    )
    assert preference({}, {LEGACY: "auto"}) == (Preference.ZONE, None)


# --- the zone, through every path ------------------------------------------------------------

NODE_OBJ: dict[str, Any] = {
    "kind": "Node",
    "metadata": {
        "name": NODE,
        "labels": {"topology.kubernetes.io/zone": ZONE, "kubernetes.io/hostname": NODE},
    },
    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]},
}


def test_node_zone_comes_from_the_node_label():
    assert node_zone([NODE_OBJ], NODE) == ZONE
    assert node_zone([NODE_OBJ], "node-b") is None
    assert node_zone([{"kind": "Node", "metadata": {"name": NODE}}], NODE) is None


def test_the_kubernetes_source_keeps_hints_topology_annotations_and_node_labels():
    svc = service(
        annotations={MODE: "Auto", "kubectl.kubernetes.io/last-applied-configuration": "x" * 500}
    )
    kept = compact("Service", svc)
    assert kept["metadata"]["annotations"] == {MODE: "Auto"}
    sl = compact("EndpointSlice", slice_of(*ZONED))
    assert sl["endpoints"][0]["hints"] == {"forZones": [{"name": "zone-a"}]}
    assert node_zone([compact("Node", NODE_OBJ)], NODE) == ZONE
    whole = translate([svc], [slice_of(*ZONED)], node_name=NODE, node_zone=ZONE)
    assert translate([kept], [sl], node_name=NODE, node_zone=ZONE) == whole


def test_incremental_translator_passes_the_zone():
    svc = service(distribution="PreferClose")
    tr = IncrementalTranslator(node_name=NODE, node_zone=ZONE)
    tr.rebuild([svc], [slice_of(*ZONED)])
    update = tr.update(
        [next(iter(tr.state.services))],
        service_of=lambda _: svc,
        slices_of=lambda _: [slice_of(*ZONED, ep(9, zones=("zone-a",)))],
    )
    entry = next(iter(update.state.entries.values()))
    assert {str(b.address) for b in entry.active} == {"10.244.0.1", "10.244.0.3", "10.244.0.9"}


MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.0.1], hints: {forZones: [{name: zone-a}]}}
- {addresses: [10.244.0.2], hints: {forZones: [{name: zone-b}]}}
"""


def node_manifest(zone: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Node
        metadata:
          name: {NODE}
          labels: {{topology.kubernetes.io/zone: {zone}}}
        status:
          addresses: [{{type: InternalIP, address: 192.168.1.10}}]
        """)


def _slots(dp: FakeDataplane) -> set[str]:
    return {str(a) for st in dp.state.values() for a, _ in st.slots}


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_agent_takes_the_zone_from_its_node_and_follows_a_label_change(tmp_path: Path):
    (tmp_path / "web.yaml").write_text(MANIFEST)
    (tmp_path / "node.yaml").write_text(node_manifest("zone-a"))
    dp, clock = FakeDataplane(), Clock()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(node_name=NODE), clock=clock)
    try:
        agent.step()
        assert _slots(dp) == {"10.244.0.1"}
        (tmp_path / "node.yaml").write_text(node_manifest("zone-b"))
        clock.t += 1
        agent.step()
        assert _slots(dp) == {"10.244.0.2"}
    finally:
        agent.close()


def test_zone_option_wins_over_the_node_label(tmp_path: Path):
    (tmp_path / "web.yaml").write_text(MANIFEST)
    (tmp_path / "node.yaml").write_text(node_manifest("zone-a"))
    dp = FakeDataplane()
    agent = Agent(ManifestSource(tmp_path), dp, AgentConfig(node_name=NODE, zone="zone-b"))
    try:
        agent.step()
        assert _slots(dp) == {"10.244.0.2"}
    finally:
        agent.close()
