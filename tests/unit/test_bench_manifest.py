"""The data-path bench's Services as the agent reads them: the dual-stack manifest gives
each Service an IPv4 and an IPv6 ClusterIP frontend, each with its own family's pods,
and the IPv4-only manifest gives IPv4 frontends only."""

from __future__ import annotations

from ipaddress import IPv6Address

from bench import lbmodes
from bench.harness import PORTS
from ebpflb.lab import layout
from ebpflb.sources.translate import translate

PODS4 = ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
PODS6 = ["fd00:10:244::b", "fd00:10:244::c", "fd00:10:244::d"]


def _frontends(pods6: list[str] | None) -> dict[str, set[str]]:
    doc = lbmodes.ebpflb_manifest(3, PODS4, pods6)
    services = [o for o in doc["items"] if o["kind"] == "Service"]
    slices = [o for o in doc["items"] if o["kind"] == "EndpointSlice"]
    result = translate(services, slices)
    assert result.errors == ()
    return {str(e.frontend): {str(b) for b in e.active} for e in result.state.entries.values()}


def test_dual_stack_manifest_gives_both_families_their_own_pods() -> None:
    got = _frontends(PODS6)
    tcp, udp = PORTS["ebpflb"]
    assert len(got) == 3 * 4
    last6 = lbmodes.cluster_ip6(2)
    assert last6 == "fd00:10:96::3"
    assert got[f"[{last6}]:80/TCP"] == {f"[{p}]:{tcp}" for p in PODS6}
    assert got[f"[{last6}]:53/UDP"] == {f"[{p}]:{udp}" for p in PODS6}
    assert got["10.96.0.3:80/TCP"] == {f"{p}:{tcp}" for p in PODS4}


def test_ipv4_manifest_has_no_ipv6_frontend() -> None:
    got = _frontends(None)
    assert len(got) == 3 * 2
    assert all(not fe.startswith("[") for fe in got)


def test_ipv6_cluster_ips_stay_in_the_service_range() -> None:
    assert lbmodes.cluster_ip6(9_999) == str(layout.SERVICE_NET6[10_000])
    assert IPv6Address(lbmodes.cluster_ip6(9_999)) in layout.SERVICE_NET6
