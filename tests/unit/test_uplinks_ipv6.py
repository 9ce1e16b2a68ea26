"""An IPv6-only node's NIC is an uplink: the scan counts a global IPv6 address as
facing the network, never a link-local one (every IPv6 interface has one). The
kernel here has no driver to make a device of kind "physical" with, so the netlink
dumps are stood in for."""

from __future__ import annotations

import socket
from typing import Any

from ebpflb.dataplane.bpf.attach import TcAttacher


class _Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class _Ipr:
    def __init__(self, links: list[_Msg], addrs: dict[int, list[_Msg]]) -> None:
        self.links, self.addrs = links, addrs

    def get_links(self) -> list[_Msg]:
        return self.links

    def get_addr(self, family: int) -> list[_Msg]:
        return self.addrs.get(family, [])


def _scan(addrs: dict[int, list[_Msg]]) -> frozenset[str]:
    attacher = TcAttacher.__new__(TcAttacher)
    links = [_Msg({"IFLA_IFNAME": "lo"}, index=1), _Msg({"IFLA_IFNAME": "eth0"}, index=2)]
    attacher.ipr = _Ipr(links, addrs)
    return attacher.scan().uplinks


def test_a_nic_with_only_a_global_ipv6_address_is_an_uplink() -> None:
    v6 = socket.AF_INET6
    link_local = _Msg({}, index=2, scope=253)
    global_ = _Msg({}, index=2, scope=0)
    assert _scan({v6: [link_local]}) == frozenset()
    assert _scan({v6: [link_local, global_]}) == {"eth0"}
    assert _scan({socket.AF_INET: [_Msg({}, index=2, scope=0)]}) == {"eth0"}
