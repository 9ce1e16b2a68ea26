"""How a lab node wires its pods: the node shapes that CNIs build, so every Service
feature is tested on each shape a user's cluster may have.

- ``routed`` (Calico): every host-side veth is an L3 hop of its own. It carries the
  link-local gateway 169.254.1.1/32 and a /32 route to its pod; the pod has a /32
  address and a default route via the gateway. Between nodes: plain routes to the
  other nodes' pod ranges over the underlay (as BGP would announce them).
- ``bridge`` (flannel's ``cni0``, the bridge plugin, kubenet's ``cbr0``; most kubeadm,
  k3s and kind clusters): the host-side veths are ports of a Linux bridge that holds
  the pod range's first address as the gateway; a pod has a /24 address and a default
  route via the bridge. A packet the tc program lets pass on a pod veth therefore
  enters the IP stack on the bridge, so the bridge's own sysctls decide its fate.
  Between nodes: a VXLAN overlay as flannel's ``vxlan`` backend builds it
  (``flannel.1`` with the node's pod-range network address, static ARP and FDB entries
  per remote node, pod-range routes via the remote VTEP ``onlink``, MTU 1450).

IPv6 (a dual-stack lab) mirrors each shape: ``routed`` puts fe80::1/64 on every
host-side veth and a /128 route per pod, the pod a /128 and ``default via fe80::1 dev
eth0`` (as Calico does); ``bridge`` gives cni0 the pod range's ::1/64 and the pod a /64
with a default route via it, and ``flannel.1`` carries IPv6 pod traffic too, each remote
pod /64 routed via a static link-local neighbour ``fe80::eb:<node>`` whose MAC is that
node's VTEP (flannel proper uses a second device, flannel-v6.1, over an IPv6 underlay;
one device over the IPv4 underlay serves the data path's tests the same way). Every
address is added ``nodad``: duplicate address detection would hold it tentative.

The bridge gets strict reverse-path filtering, the default of several distributions:
the lab must not make life easier for the data path than a real node would.

Generic wiring by namespace names and addresses only; ``layout`` decides the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ebpflb.lab import netns

ROUTED_GATEWAY = IPv4Address("169.254.1.1")
ROUTED_GATEWAY6 = IPv6Address("fe80::1")
BRIDGE = "cni0"
OVERLAY = "flannel.1"
VXLAN_ID = 1  # flannel's VNI
VXLAN_PORT = 8472  # flannel's (Linux's legacy VXLAN port), not IANA's 4789
OVERLAY_MTU = 1450  # 1500 less the VXLAN, UDP, IP and inner Ethernet headers
STRICT_RP_FILTER = 1


class Cni(StrEnum):
    """A node shape: how pods are plugged into their node."""

    ROUTED = "routed"
    BRIDGE = "bridge"


@dataclass(frozen=True)
class OverlayPeer:
    """Another node as this node's overlay sees it: its pod range, underlay address
    and node index (which fixes its VTEP's MAC address)."""

    pod_cidr: IPv4Network
    underlay: IPv4Address
    index: int
    pod_cidr6: IPv6Network | None = None


def gateway(cni: Cni, pod_cidr: IPv4Network) -> IPv4Address:
    """The address pods use as their default gateway."""
    return ROUTED_GATEWAY if cni is Cni.ROUTED else pod_cidr[1]


def gateway6(cni: Cni, pod_cidr6: IPv6Network) -> IPv6Address:
    """The address pods use as their IPv6 default gateway."""
    return ROUTED_GATEWAY6 if cni is Cni.ROUTED else pod_cidr6[1]


def vtep6(index: int) -> IPv6Address:
    """Node ``index``'s IPv6 next hop on the overlay: a link-local address that only
    the other nodes' static neighbour entries name (nothing needs to hold it)."""
    return IPv6Address(f"fe80::eb:{index}")


def enable_ipv6(ns: str, *, forwarding: bool) -> None:
    """IPv6 in ``ns`` as a lab wants it: no duplicate address detection on interfaces
    made from now on (their link-local addresses are usable at once), no router
    advertisements nor redirects taken, and on a node, forwarding."""
    for conf in ("all", "default"):
        netns.sysctl(ns, f"net.ipv6.conf.{conf}.accept_ra", 0)
        netns.sysctl(ns, f"net.ipv6.conf.{conf}.accept_redirects", 0)
        netns.sysctl(ns, f"net.ipv6.conf.{conf}.accept_dad", 0)
        netns.sysctl(ns, f"net.ipv6.conf.{conf}.disable_ipv6", 0)
    if forwarding:
        netns.sysctl(ns, "net.ipv6.conf.all.forwarding", 1)


def gateway_mac(pod_cidr: IPv4Network) -> str:
    """The bridge's MAC: 0a:58 and its IPv4 address, as the CNI plugins derive one."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in pod_cidr[1].packed)


def vtep_mac(index: int) -> str:
    """Node ``index``'s overlay MAC: fixed, so the other nodes' static entries match
    (locally administered, unicast)."""
    return f"0e:eb:00:00:00:{index:02x}"


def prepare_node(
    ns: str, cni: Cni, pod_cidr: IPv4Network, pod_cidr6: IPv6Network | None = None
) -> None:
    """What the node needs before its first pod: for a bridge shape, the bridge with
    the gateway address (and the IPv6 one), up, with strict reverse-path filtering;
    for the routed shape with IPv6, a global IPv6 address of its own."""
    if cni is Cni.ROUTED:
        if pod_cidr6 is not None:
            # The node's own IPv6 sockets need a global source address: fe80::1 on the
            # veths is link-local, and a pod answers a link-local source from its own
            # link-local address, which no translation can match. The range's ::1 (the
            # one-node lab's IPv6 InternalIP) on lo, as a routed CNI's node has its
            # own address.
            netns.ip_batch(ns, [f"addr add {pod_cidr6[1]}/128 dev lo nodad"])
        return
    # A fixed MAC, as CNIs give their bridge: by default a bridge takes the lowest MAC
    # of its ports, so it changed as pods came and went, and every pod's ARP entry for
    # the gateway went on naming the old one (all traffic via the node lost for 30 s).
    netns.ip_batch(ns, [
        f"link add {BRIDGE} address {gateway_mac(pod_cidr)} type bridge stp_state 0"
        " forward_delay 0",
        f"addr add {pod_cidr[1]}/{pod_cidr.prefixlen} dev {BRIDGE}",
        f"link set {BRIDGE} up",
    ])  # fmt: skip
    netns.sysctl(ns, f"net.ipv4.conf.{BRIDGE}.rp_filter", STRICT_RP_FILTER)
    if pod_cidr6 is not None:
        # No multicast snooping: without an MLD querier in the lab, a snooping bridge
        # may stop flooding the neighbour solicitations pods send to each other.
        netns.ip_batch(ns, [
            f"link set {BRIDGE} type bridge mcast_snooping 0",
            f"addr add {pod_cidr6[1]}/{pod_cidr6.prefixlen} dev {BRIDGE} nodad",
        ])  # fmt: skip


def plug_pod(
    node_ns: str,
    pod_ns: str,
    *,
    cni: Cni,
    host_ifname: str,
    ip: IPv4Address,
    pod_cidr: IPv4Network,
    mtu: int | None = None,
    ip6: IPv6Address | None = None,
    pod_cidr6: IPv6Network | None = None,
) -> None:
    """A veth pair made inside the node with its peer ``eth0`` created straight into the
    pod (nothing appears in the root namespace), wired as ``cni`` wires pods; with
    ``ip6`` (and ``pod_cidr6``) for IPv6 as well."""
    gw = gateway(cni, pod_cidr)
    mtu_arg = f" mtu {mtu}" if mtu else ""
    netns.ip_batch(
        node_ns,
        [f"link add {host_ifname}{mtu_arg} type veth peer name eth0{mtu_arg} netns {pod_ns}"],
    )
    netns.sysctl(node_ns, f"net.ipv4.conf.{host_ifname}.rp_filter", 0)
    if cni is Cni.ROUTED:
        netns.ip_batch(node_ns, [
            f"addr add {gw}/32 dev {host_ifname}",
            f"link set {host_ifname} up",
            f"route add {ip}/32 dev {host_ifname} scope link",
        ])  # fmt: skip
        pod_lines = [
            f"addr add {ip}/32 dev eth0",
            "link set eth0 up",
            f"route add {gw} dev eth0 scope link",
        ]
    else:
        netns.ip_batch(
            node_ns, [f"link set {host_ifname} master {BRIDGE}", f"link set {host_ifname} up"]
        )
        pod_lines = [f"addr add {ip}/{pod_cidr.prefixlen} dev eth0", "link set eth0 up"]
    netns.ip_batch(pod_ns, ["link set lo up", *pod_lines, f"route add default via {gw} dev eth0"])
    if ip6 is not None and pod_cidr6 is not None:
        _plug_pod6(node_ns, pod_ns, cni=cni, host_ifname=host_ifname, ip6=ip6, cidr6=pod_cidr6)


def _plug_pod6(
    node_ns: str, pod_ns: str, *, cni: Cni, host_ifname: str, ip6: IPv6Address, cidr6: IPv6Network
) -> None:
    gw6 = gateway6(cni, cidr6)
    if cni is Cni.ROUTED:
        netns.ip_batch(node_ns, [
            f"addr add {gw6}/64 dev {host_ifname} nodad",
            f"route add {ip6}/128 dev {host_ifname}",
        ])  # fmt: skip
        prefix = 128
    else:
        prefix = cidr6.prefixlen
    netns.ip_batch(pod_ns, [
        f"addr add {ip6}/{prefix} dev eth0 nodad",
        f"route add ::/0 via {gw6} dev eth0",
    ])  # fmt: skip


def forget_pod(namespaces: Sequence[str], ip: IPv4Address | IPv6Address) -> None:
    """Drop every neighbour entry for a removed bridged pod's address: a pod added
    later with that address has another MAC, and an entry left behind would send its
    first packets to the old one for seconds (the bridge plugin announces a new pod
    with a gratuitous ARP; forgetting the old one has the same effect here)."""
    for ns in namespaces:
        if netns.netns_exists(ns):
            netns.ip_batch(ns, [f"neigh flush to {ip}"])


def build_overlay(
    ns: str,
    *,
    index: int,
    pod_cidr: IPv4Network,
    underlay: IPv4Address,
    uplink: str,
    peers: Sequence[OverlayPeer],
) -> None:
    """flannel's VXLAN backend on node ``index``: ``flannel.1`` over ``uplink``, and for
    each peer a static neighbour (its VTEP MAC at its pod range's network address), an
    FDB entry sending that MAC to its underlay address, and a route to its pod range."""
    lines = [
        f"link add {OVERLAY} address {vtep_mac(index)} mtu {OVERLAY_MTU} type vxlan"
        f" id {VXLAN_ID} local {underlay} dev {uplink} dstport {VXLAN_PORT} nolearning",
        f"addr add {pod_cidr.network_address}/32 dev {OVERLAY}",
        f"link set {OVERLAY} up",
    ]
    for peer in peers:
        vtep = peer.pod_cidr.network_address
        lines += [
            f"neigh add {vtep} lladdr {vtep_mac(peer.index)} dev {OVERLAY} nud permanent",
            f"route add {peer.pod_cidr} via {vtep} dev {OVERLAY} onlink",
        ]
    for peer in peers:
        if peer.pod_cidr6 is not None:
            lines += [
                f"neigh add {vtep6(peer.index)} lladdr {vtep_mac(peer.index)} dev {OVERLAY}"
                " nud permanent",
                f"route add {peer.pod_cidr6} via {vtep6(peer.index)} dev {OVERLAY}",
            ]
    netns.ip_batch(ns, lines)
    for peer in peers:  # FDB entries are `bridge` commands, not `ip` ones
        netns.run(
            ns,
            [
                "bridge",
                "fdb",
                "append",
                vtep_mac(peer.index),
                "dev",
                OVERLAY,
                "dst",
                str(peer.underlay),
                "self",
                "permanent",
            ],
        )
