"""Which interfaces the kernel path attaches to by default, read from a real network
namespace: veths (pod side) and the node's uplinks, among them overlay devices (VXLAN)
with or without an address; not a bridge (a CNI's cni0, or the userspace path's
ebpflb0 where dummy devices are missing), not loopback; and which bridge a pod veth
is a port of, whose sysctls the agent must set too. (This kernel has no bond, VLAN,
Geneve or dummy drivers to make more kinds with.)"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.bpf.attach import TcAttacher
from ebpflb.lab import netns

from .conftest import _require_root

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[str]:
    _require_root()
    name = f"tatt-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_default_interfaces(ns: str) -> None:
    netns.ip_batch(ns, [
        "link add vh1 type veth peer name vh1p",
        "addr add 192.0.2.1/24 dev vh1",
        "addr add fd00:192:168:50::1/64 dev vh1 nodad",
        "link add flannel.1 type vxlan id 1 dstport 8472",
        "link add vx2 type vxlan id 2 dstport 4789",
        "addr add 10.42.0.0/32 dev vx2",
        "link add ebpflb0 type bridge",
        "addr add 10.96.0.10/32 dev ebpflb0",
        "link add cni0 type bridge",
        "addr add 10.244.0.1/24 dev cni0",
        "link add vp1 type veth peer name vp1p",
        "link set vp1 master cni0",
        "link set lo up",
    ])  # fmt: skip
    attacher = TcAttacher(-1, netns=ns)
    try:
        assert attacher.veths() == ["vh1", "vh1p", "vp1", "vp1p"]
        assert attacher.uplinks() == ["flannel.1", "vx2"]
        assert attacher.scan().bridge_of == {"vp1": "cni0"}
        assert {str(a) for a in attacher.local_addresses()} == {
            "127.0.0.1",
            "192.0.2.1",
            "10.42.0.0",
            "10.96.0.10",
            "10.244.0.1",
            "::1",  # both families: a host-network backend may be at an IPv6 address
            "fd00:192:168:50::1",
        }
    finally:
        attacher.close()


def test_an_ipv6_only_default_route_names_the_primary_interface(ns: str) -> None:
    """On an IPv6-only node the default route is IPv6's: the interface it leaves by is
    the primary one, whose addresses come first among the node's own."""
    from ebpflb.rtnetlink import interfaces

    netns.ip_batch(ns, [
        "link add eth0 type veth peer name eth0p",
        "addr add fd00:192:168:50::7/64 dev eth0 nodad",
        "link set eth0 up",
        "link set eth0p up",
        "route add default via fd00:192:168:50::1 dev eth0",
    ])  # fmt: skip
    with netns.enter(ns):
        found = {i.name: i for i in interfaces()}
    assert found["eth0"].default_route
    assert not found["eth0p"].default_route
