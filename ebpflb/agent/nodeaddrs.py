"""This node's NodePort addresses and where they come from: the InternalIP/ExternalIP
addresses of its Node object, or, when it has no Node object (none named
``--node-name``, or no ``--node-name`` with a manifest directory) or its Node lists no
such address, the addresses of its own interfaces, as kube-proxy serves NodePorts on
the node's local addresses without any Node. ``--nodeport-addresses`` narrows either
set. Pure: the agent reads the interfaces (``rtnetlink``) and the Nodes (its source).

Which interface addresses are the node's own: every address of every interface except
- the loopback device and loopback addresses (127/8, ::1);
- link-local addresses (169.254/16, fe80::/10): the pod gateway of routed CNIs (and of
  the lab) lives there, as do node-local DNS caches;
- devices that hold other things' addresses: tunnels (flannel.1 holds its pod range's
  network address), dummy devices (kube-ipvs0 holds every ClusterIP; nodelocaldns),
  and pod bridges (flannel's cni0, docker0: a bridge whose every port is a veth holds
  the pods' gateway);
- devices enslaved to a bridge or bond (the master's address is the node's).
A veth is kept: on a kind node, and in the lab, the node's uplink is a veth, while the
host side of a pod's veth carries no address or a link-local one. Addresses of both
families are returned (IPv6 ones of global scope: not fe80::/10, not ::1, not
multicast; unique-local fd00::/8 is global scope to the kernel and kept); the interface
that holds the default route comes first (its address of each family is the "primary"
one, and the source NAT address for external and load-balancer IPs of that family).

The families this node serves (``NodePortChoice.families``) are those it has an
address of, in its Node object or on its own interfaces, before
``--nodeport-addresses`` narrows anything: kube-proxy runs a proxier for each family
the node can serve, and translation skips the Services of a family with none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ebpflb.agent.nodeports import NodePortAddresses
from ebpflb.model import IPAddress
from ebpflb.rtnetlink import Interface
from ebpflb.sources.translate import node_addresses

# Devices whose addresses are not the node's (see the module docstring).
FOREIGN_KINDS = frozenset(
    {
        "vxlan",
        "geneve",
        "ipip",
        "gre",
        "gretap",
        "sit",
        "ip6tnl",
        "ip6gre",
        "wireguard",
        "dummy",
    }
)
LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")


class AddressSource(StrEnum):
    """Where the NodePort addresses come from (stable values: the status file's)."""

    NODE_OBJECT = "node-object"
    LOCAL_INTERFACES = "local-interfaces"


@dataclass(frozen=True)
class NodePortChoice:
    """The addresses that serve NodePorts (after ``--nodeport-addresses``), their
    source, and why it is that source (for the log and ``ebpflb status``)."""

    addresses: tuple[IPAddress, ...]
    source: AddressSource
    why: str
    # the IP versions (4, 6) this node serves: those it has an address of, whatever
    # --nodeport-addresses selects (see the module docstring)
    families: frozenset[int] = frozenset({4})


def choose(
    nodes: Iterable[Mapping[str, Any]],
    node_name: str | None,
    local: Sequence[IPAddress],
    option: NodePortAddresses,
) -> NodePortChoice:
    """This node's NodePort addresses, from its Node among ``nodes`` when it names any
    InternalIP/ExternalIP, else from ``local`` (the node's own interface addresses,
    the primary one first). ``--nodeport-addresses primary`` takes the first InternalIP
    (or local address) of each family."""
    nodes = list(nodes)
    listed = node_addresses(nodes, node_name) if node_name else ()
    families = frozenset(a.version for a in (*listed, *local))
    if node_name:
        if listed:
            internal = _first_of_each_family(
                node_addresses(nodes, node_name, types=("InternalIP",))
            )
            return NodePortChoice(
                _select(option, listed, internal),
                AddressSource.NODE_OBJECT,
                f"Node {node_name}",
                families,
            )
        exists = any(_name(n) == node_name for n in nodes)
        why = (
            f"Node {node_name} lists no InternalIP or ExternalIP"
            if exists
            else f"no Node object named {node_name}"
        )
    else:
        why = "no --node-name"
    return NodePortChoice(
        _select(option, local, _first_of_each_family(local)),
        AddressSource.LOCAL_INTERFACES,
        why,
        families,
    )


def _first_of_each_family(addresses: Sequence[IPAddress]) -> tuple[IPAddress, ...]:
    """The first address of each family, in the order given."""
    first: dict[int, IPAddress] = {}
    for a in addresses:
        first.setdefault(a.version, a)
    return tuple(first.values())


def _select(
    option: NodePortAddresses, addresses: Sequence[IPAddress], primary: tuple[IPAddress, ...]
) -> tuple[IPAddress, ...]:
    """``option.select`` with ``primary`` as the node's primary address of each family
    (``select`` itself takes one primary address only)."""
    if option.primary:
        return primary
    return option.select(addresses, primary)


def own_addresses(interfaces: Iterable[Interface]) -> tuple[IPAddress, ...]:
    """The node's own addresses of both families among ``interfaces`` (see the module docstring),
    those of the default route's interface first, then by interface index."""
    interfaces = list(interfaces)
    ports: dict[int, list[str | None]] = {}
    for i in interfaces:
        if i.master is not None:
            ports.setdefault(i.master, []).append(i.kind)
    found: list[IPAddress] = []
    for i in sorted(interfaces, key=lambda i: (not i.default_route, i.index)):
        if i.loopback or i.master is not None or i.kind in FOREIGN_KINDS:
            continue
        if i.kind == "bridge" and all(k == "veth" for k in ports.get(i.index, [])):
            continue  # a pod bridge (or an empty one)
        found += [a for a in i.addresses if _own(a)]
    return tuple(dict.fromkeys(found))


def _own(address: IPAddress) -> bool:
    if address.is_loopback or address.is_multicast or address.is_unspecified:
        return False
    if address.version == 4:
        return address not in LINK_LOCAL_V4
    return not address.is_link_local and address.ipv4_mapped is None


def _name(node: Mapping[str, Any]) -> str | None:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else None
