"""Attaching the tc programs with pyroute2: a clsact qdisc and one direct-action bpf
filter on ingress of each interface (and, on pod veths, one on egress), identified by a
fixed priority and handle so a restarted agent replaces its predecessor's filter in
place (atomically: no packet sees an interface without a program)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from ebpflb.errors import AttachError, DataplaneError
from ebpflb.model import IPAddress

log = logging.getLogger(__name__)

FILTER_NAME = "ebpflb_tc"
TC_PRIO = 1
TC_HANDLE = 1
INGRESS = "ffff:fff2"
INGRESS_PARENT = 0xFFFFFFF2
EGRESS = "ffff:fff3"
EGRESS_PARENT = 0xFFFFFFF3
UPLINK_KINDS = (None, "bond", "vlan", "team")  # None: a physical device
RT_SCOPE_UNIVERSE = 0  # an address's scope: global (fe80::/10 is RT_SCOPE_LINK, 253)
# Overlay devices of the usual CNIs (flannel.1, cilium_vxlan...): replies from backends
# on other nodes arrive decapsulated here. Ethernet devices only: the program parses
# an Ethernet header, so L3 tunnels (ipip, wireguard) are left alone.
TUNNEL_KINDS = ("vxlan", "geneve")


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


@dataclass(frozen=True)
class Links:
    """One look at the namespace's interfaces, by the role each plays for the program."""

    veths: frozenset[str]  # pod side (and a lab's veth uplinks)
    uplinks: frozenset[str]  # see TcAttacher.uplinks
    # veth -> the bridge it is a port of (flannel's cni0, kubenet's cbr0, the bridge
    # plugin): what the program lets pass on such a veth enters the IP stack on the
    # bridge, so the bridge's sysctls apply to it (see dataplane.relax_source_checks).
    bridge_of: Mapping[str, str]


class TcAttacher:
    def __init__(self, prog_fd: int, *, netns: str | None = None, egress_fd: int = -1) -> None:
        from pyroute2 import IPRoute, NetNS

        self.prog_fd = prog_fd
        self.egress_fd = egress_fd
        self.ipr: Any = NetNS(netns) if netns else IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def links(self) -> dict[str, int]:
        return {link.get_attr("IFLA_IFNAME"): link["index"] for link in self.ipr.get_links()}

    def scan(self) -> Links:
        """Veths, uplinks and pod bridges, from one dump of links and one of addresses.

        Uplinks are the node's own interfaces towards the network (a NIC, bond or VLAN
        with an IPv4 address or a global IPv6 one, and overlay devices): where NodePort,
        external and load-balancer traffic arrives, and replies from backends on other
        nodes. (Every IPv6 interface has a link-local address; only a global one says
        the device faces the network, as on an IPv6-only node.)"""
        links = list(self.ipr.get_links())
        addressed = {a["index"] for a in self.ipr.get_addr(family=socket.AF_INET)} | {
            a["index"]
            for a in self.ipr.get_addr(family=socket.AF_INET6)
            if a["scope"] == RT_SCOPE_UNIVERSE
        }
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        kinds = {link["index"]: _kind(link) for link in links}
        veths = [link for link in links if kinds[link["index"]] == "veth"]
        return Links(
            veths=frozenset(names[link["index"]] for link in veths),
            uplinks=frozenset(
                names[i] for i, kind in kinds.items() if names[i] != "lo" and (
                    kind in TUNNEL_KINDS or (kind in UPLINK_KINDS and i in addressed))),
            bridge_of={names[link["index"]]: names[m] for link in veths
                       if (m := link.get_attr("IFLA_MASTER")) in names
                       and kinds[m] == "bridge"},
        )  # fmt: skip

    def veths(self) -> list[str]:
        return sorted(self.scan().veths)

    def uplinks(self) -> list[str]:
        """See scan."""
        return sorted(self.scan().uplinks)

    def local_addresses(self) -> frozenset[IPAddress]:
        """Every IPv4 and IPv6 address of the namespace's interfaces (a host-network
        backend may be at either)."""
        return frozenset(
            ip_address(a.get_attr("IFA_ADDRESS"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for a in self.ipr.get_addr(family=family)
        )

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(f"interface {ifname} does not exist")
        return int(found[0])

    def attach(self, ifname: str, *, egress: bool = False) -> None:
        """The ingress program on ifname; with egress, the egress one too."""
        idx = self._index(ifname)
        try:
            self.ipr.tc("add", "clsact", idx)
        except Exception as exc:
            if getattr(exc, "code", None) != errno.EEXIST:
                raise AttachError(f"cannot add clsact qdisc on {ifname}: {exc}") from exc
        hooks = [(INGRESS, self.prog_fd, FILTER_NAME)]
        if egress:
            hooks.append((EGRESS, self.egress_fd, f"{FILTER_NAME}_egress"))
        for parent, fd, name in hooks:
            try:
                self.ipr.tc(
                    "replace-filter",
                    "bpf",
                    idx,
                    handle=TC_HANDLE,
                    fd=fd,
                    name=name,
                    parent=parent,
                    classid=1,
                    direct_action=True,
                    prio=TC_PRIO,
                )
            except Exception as exc:
                raise AttachError(f"cannot attach tc program {name} to {ifname}: {exc}") from exc
        if not self.is_attached(ifname):
            raise AttachError(f"tc filter on {ifname} not found after attaching")

    def _our_filters(self, idx: int, parent: int = INGRESS_PARENT) -> list[Any]:
        out = []
        for flt in self.ipr.get_filters(idx, parent=parent):
            opts = flt.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
            if flt.get_attr("TCA_KIND") == "bpf" and name and name.startswith(FILTER_NAME):
                out.append(flt)
        return out

    def is_attached(self, ifname: str) -> bool:
        try:
            return bool(self._our_filters(self._index(ifname)))
        except DataplaneError:
            return False

    def attached(self) -> list[str]:
        """Interfaces that carry our filter (also those a previous agent attached)."""
        return sorted(name for name, idx in self.links().items() if self._our_filters(idx))

    def detach(self, ifname: str) -> None:
        try:
            idx = self._index(ifname)
        except DataplaneError:
            return
        if self._our_filters(idx, EGRESS_PARENT):
            self.ipr.tc("del-filter", "bpf", idx, handle=TC_HANDLE, parent=EGRESS, prio=TC_PRIO)
        if not self._our_filters(idx):
            return
        self.ipr.tc("del-filter", "bpf", idx, handle=TC_HANDLE, parent=INGRESS, prio=TC_PRIO)
        # Remove the qdisc only when nothing else uses it (another tool's filters stay).
        remaining = [f for f in self.ipr.get_filters(idx, parent=INGRESS_PARENT) if f.get("handle")]
        remaining += [f for f in self.ipr.get_filters(idx, parent=EGRESS_PARENT) if f.get("handle")]
        if not remaining:
            try:
                self.ipr.tc("del", "clsact", idx)
            except Exception as exc:  # already gone
                log.debug("clsact on %s: %s", ifname, exc)
