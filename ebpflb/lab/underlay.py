"""The network between a multi-node lab's nodes: one namespace holding a Linux bridge
(the "switch"), and a veth per attached namespace whose peer is a bridge port.

Generic wiring, by namespace names and addresses only: ``layout`` decides who is
plugged in and where. As for the pods, every veth is created inside the namespace
that keeps it with its peer created straight into the switch, so nothing ever
appears in the root namespace.

In a dual-stack lab an attached namespace also gets its IPv6 underlay address
(``nodad``) and IPv6 routes, and the bridge does no multicast snooping (the lab has no
MLD querier, and neighbour discovery must simply be flooded).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from ebpflb.errors import LabError
from ebpflb.lab import netns

BRIDGE = "br0"
CHECK_TIMEOUT = 2.0


def no_rp_filter(ns: str, *ifnames: str) -> None:
    """rp_filter=0 in ``ns`` (all, default and the named interfaces): a lab routes
    replies whose addresses a load balancer rewrote, which strict filtering drops."""
    for conf in ("all", "default", *ifnames):
        netns.sysctl(ns, f"net.ipv4.conf.{conf}.rp_filter", 0)


def no_redirects(ns: str, *ifnames: str) -> None:
    """Neither send nor accept ICMP redirects in ``ns``: a node forwards translated
    packets back out of the interface they came in on (the underlay), and a redirect
    would teach the sender to bypass the node, and the load balancer with it."""
    for conf in ("all", "default", *ifnames):
        netns.sysctl(ns, f"net.ipv4.conf.{conf}.send_redirects", 0)
        netns.sysctl(ns, f"net.ipv4.conf.{conf}.accept_redirects", 0)


def build_switch(ns: str, *, ipv6: bool = False) -> None:
    """Create namespace ``ns`` with bridge ``br0`` up (no STP: ports forward at once;
    with ``ipv6``, no multicast snooping either)."""
    netns.create(ns)
    no_rp_filter(ns)
    snooping = " mcast_snooping 0" if ipv6 else ""
    netns.ip_batch(ns, [
        "link set lo up",
        f"link add {BRIDGE} type bridge stp_state 0{snooping}",
        f"link set {BRIDGE} up",
    ])  # fmt: skip


def plug(
    switch_ns: str,
    ns: str,
    *,
    ifname: str,
    port: str,
    address: IPv4Interface,
    address6: IPv6Interface | None = None,
) -> None:
    """Connect namespace ``ns`` to the switch: ``ifname`` in ``ns`` with ``address``
    (and ``address6``), its peer ``port`` enslaved to the bridge."""
    netns.ip_batch(ns, [f"link add {ifname} type veth peer name {port} netns {switch_ns}"])
    netns.ip_batch(switch_ns, [f"link set {port} master {BRIDGE}", f"link set {port} up"])
    no_rp_filter(ns, ifname)
    v6 = [f"addr add {address6} dev {ifname} nodad"] if address6 is not None else []
    netns.ip_batch(ns, [f"addr add {address} dev {ifname}", *v6, f"link set {ifname} up"])


Route = tuple[IPv4Network, IPv4Address] | tuple[IPv6Network, IPv6Address]


def add_routes(ns: str, routes: Iterable[Route], *, dev: str) -> None:
    """Routes ``network via gateway dev`` in ``ns`` (nothing when there are none)."""
    lines = [f"route add {net} via {gw} dev {dev}" for net, gw in routes]
    if lines:
        netns.ip_batch(ns, lines)


def check_tcp(src_ns: str, dst_ns: str, address: IPv4Address | IPv6Address) -> None:
    """A TCP connection from ``src_ns`` to a short-lived listener on ``address`` in
    ``dst_ns`` is accepted; LabError names both ends otherwise."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with netns.socket_in(dst_ns, family) as listener:
        listener.bind((str(address), 0))
        listener.listen(1)
        listener.settimeout(CHECK_TIMEOUT)
        port = listener.getsockname()[1]
        try:
            with netns.socket_in(src_ns, family) as client:
                client.settimeout(CHECK_TIMEOUT)
                client.connect((str(address), port))
                conn, _ = listener.accept()
                conn.close()
        except OSError as exc:
            raise LabError(f"{src_ns} cannot reach {address} in {dst_ns}: {exc}") from exc
