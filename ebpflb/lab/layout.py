"""The plan of a lab: its Kubernetes nodes, backend pods and clients, each in its own
network namespace, with their names, addresses and interfaces, and the record of a
built lab (``Lab``, read back from JSON). No side effects: ``build`` makes it real,
``processes`` runs the pod servers.

For lab ``NAME`` with one node (the default):

    NAME-node     the node; the agent runs here. Host-side veths ``vp<i>`` (pod i) and
                  ``vc1`` (client), each with 169.254.1.1/32 and a /32 route to its pod.
    NAME-pod-<i>  eth0 = 10.244.0.(10+i)/32, default via 169.254.1.1; runs podserver.
    NAME-client   eth0 = 10.244.0.200/32, default via 169.254.1.1.

With N nodes (2..4), node k is ``NAME-node`` (k = 1) or ``NAME-node-k``, with pod range
10.244.(k-1).0/24, the same veths, its own client (``NAME-client-k`` at .200 for
k >= 2) and the pods numbered on from the previous node's (pod i on node k is
10.244.(k-1).(10+i), so pod names stay unique). The nodes share an underlay:

    NAME-net      a bridge; node k's ``eth0`` = 192.168.50.k/24 is plugged into it, with
                  a route to every other node's pod range via that node's address.
    NAME-ext-<j>  a client outside the cluster: 192.168.50.(100+j)/24 on the bridge,
                  no pod routes, and 192.168.60.0/24 (load-balancer addresses) via
                  node 1, as a MetalLB-style announcement would deliver them.

How pods are plugged in is the lab's CNI shape (``LabSpec.cni``, see ``podnet``):
``routed`` (the default, as Calico: every host-side veth carries the link-local
gateway, pods are /32 routes, the nodes route pod ranges over the underlay) or
``bridge`` (as flannel: the veths are ports of ``cni0``, which holds the pod range's
.1 as the gateway, and with 2 nodes or more a VXLAN overlay ``flannel.1`` carries pod
traffic between nodes). Nothing is added to the root namespace: the veths are
created inside the node namespace with their peers created straight into the pod.

A dual-stack lab (``LabSpec.ipv6``, ``ebpflb lab up --ipv6``) keeps all of the above
and adds IPv6 beside it, every address without duplicate address detection (nodad):

    pods          node k's range fd00:10:244:<k-1>::/64; pod i = range + 10 + i
                  (fd00:10:244::b for pod-1), a node's client = range + 200 (::c8).
    routed        fe80::1/64 on every host-side veth, a /128 route per pod on the node;
                  pods hold a /128 and route default via fe80::1 dev eth0.
    bridge        cni0 holds the range's ::1/64; pods hold a /64, default via ::1. With
                  2+ nodes, flannel.1 carries IPv6 too (over the IPv4 underlay), each
                  remote pod range routed via a static link-local neighbour fe80::eb:<k>.
    underlay      fd00:192:168:50::/64: node k = ::k, outside client j = ::(100+j)
                  (::65, ::66); routed nodes reach each other's pod /64 via ::k.
    outside       fd00:192:168:60::/64 (load-balancer addresses) via node 1 (::1).
    Services      fd00:10:96::/112 (the examples use fd00:10:96::a and ::b).

Node namespaces forward IPv6 (net.ipv6.conf.all.forwarding=1) and take no router
advertisements nor redirects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from ebpflb.errors import LabError
from ebpflb.lab import kubeobjects, podnet
from ebpflb.lab.podnet import Cni
from ebpflb.lab.processes import _is_podserver

LAB_ROOT = Path("/run/ebpflb/labs")
GATEWAY = podnet.ROUTED_GATEWAY  # the routed shape's; see Lab.gateway
POD_NET = IPv4Address("10.244.0.0")  # node 1's pod range (a /24); node k's is k-1 /24s on
POD_IP_BASE = 10  # pod i gets its node's range + POD_IP_BASE + i
CLIENT_HOST = 200  # a node's client is its range + CLIENT_HOST
CLIENT_IP = POD_NET + CLIENT_HOST  # node 1's client, 10.244.0.200
MAX_PODS = 100  # per node, in a spec
MAX_POD_INDEX = CLIENT_HOST - POD_IP_BASE - 1  # keeps pod addresses below the clients'
MAX_NODES = 4
UNDERLAY_NET = IPv4Network("192.168.50.0/24")  # node k is .k, outside client j is .100+j
OUTSIDE_HOST_BASE = 100
OUTSIDE_CLIENTS = 2
LB_NET = IPv4Network("192.168.60.0/24")  # load-balancer / external IPs, routed to node 1
UPLINK = "eth0"
POD_NET6 = IPv6Network("fd00:10:244::/64")  # node 1's pod range; node k's: k-1 /64s on
SERVICE_NET6 = IPv6Network("fd00:10:96::/112")  # IPv6 ClusterIPs of the examples
UNDERLAY_NET6 = IPv6Network("fd00:192:168:50::/64")  # node k is ::k, outside j ::(100+j)
LB_NET6 = IPv6Network("fd00:192:168:60::/64")  # IPv6 load-balancer addresses, via node 1
# 4: IPv6 (a dual-stack lab); 3: the CNI shape; 2: nodes, outside clients, a pod's node
STATE_VERSION = 4

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class LabSpec:
    """What to build: the lab's name (a prefix of every namespace), the backend pods
    per node, the number of nodes, how pods are plugged in (the CNI shape) and whether
    every namespace also gets IPv6 (a dual-stack lab)."""

    name: str = "ebpflb"
    pods: int = 3
    nodes: int = 1
    cni: Cni = Cni.ROUTED
    ipv6: bool = False

    def __post_init__(self) -> None:
        _check_name(self.name)
        try:
            object.__setattr__(self, "cni", Cni(self.cni))
        except ValueError:
            raise LabError(
                f"lab CNI shape {self.cni!r}: use one of {', '.join(c.value for c in Cni)}"
            ) from None
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"a lab has 1 to {MAX_NODES} nodes, not {self.nodes}")
        if not 1 <= self.pods <= MAX_PODS:
            raise LabError(f"a lab has 1 to {MAX_PODS} pods, not {self.pods}")
        if self.pods * self.nodes > MAX_POD_INDEX:
            raise LabError(
                f"a lab of {self.nodes} nodes has at most "
                f"{MAX_POD_INDEX // self.nodes} pods per node, not {self.pods}"
            )


@dataclass(frozen=True)
class Pod:
    """One pod (or a client): its namespace, address, host-side veth (for a client
    outside the cluster: its port on the underlay's bridge), the index of the node
    it runs on (0: outside the cluster) and its IPv6 address in a dual-stack lab."""

    name: str
    netns: str
    ip: IPv4Address
    host_ifname: str
    node: int = 1
    ip6: IPv6Address | None = None

    @property
    def addresses(self) -> list[IPv4Address | IPv6Address]:
        """Its IPv4 address, then its IPv6 one in a dual-stack lab."""
        return [self.ip, *([self.ip6] if self.ip6 is not None else [])]


@dataclass(frozen=True)
class Node:
    """One node of the lab: its namespace, pod range, client, and underlay address and
    uplink (None in a one-node lab, which has no underlay); in a dual-stack lab also
    its IPv6 pod range and underlay address."""

    index: int  # 1-based
    netns: str
    pod_cidr: IPv4Network
    client: Pod
    address: IPv4Address | None = None
    uplink: str | None = None
    pod_cidr6: IPv6Network | None = None
    address6: IPv6Address | None = None

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def zone(self) -> str:
        return f"zone-{self.index}"

    @property
    def internal_ip(self) -> IPv4Address:
        """The Node's InternalIP: the underlay address; in a one-node lab, which has
        none, the pod range's first address (10.244.0.1). That one is configured
        nowhere: the client reaches it through its gateway, the node, so a translated
        NodePort on it works, but nothing can listen on it."""
        return self.address if self.address is not None else self.pod_cidr[1]

    @property
    def underlay_addresses(self) -> list[IPv4Address | IPv6Address]:
        """Its underlay addresses (IPv4, then IPv6 in a dual-stack lab); none in a
        one-node lab."""
        return [a for a in (self.address, self.address6) if a is not None]

    @property
    def internal_ip6(self) -> IPv6Address | None:
        """The Node's IPv6 InternalIP in a dual-stack lab, chosen as ``internal_ip`` is:
        the underlay address, or in a one-node lab the pod range's ::1."""
        if self.address6 is not None:
            return self.address6
        return self.pod_cidr6[1] if self.pod_cidr6 is not None else None


@dataclass
class Lab:
    """A built lab. ``pods`` is sorted by index and changes with add_pod/remove_pod."""

    spec: LabSpec
    node_ns: str  # node 1's
    pods: list[Pod]  # on every node
    client: Pod  # node 1's
    state_dir: Path
    server_pids: dict[str, int] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    outside: list[Pod] = field(default_factory=list)  # clients outside the cluster
    underlay_ns: str | None = None  # the bridge's namespace, with 2 nodes or more

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namespaces(self) -> list[str]:
        return [
            *(n.netns for n in self.nodes), *(n.client.netns for n in self.nodes),
            *(p.netns for p in self.pods), *([self.underlay_ns] if self.underlay_ns else []),
            *(o.netns for o in self.outside),
        ]  # fmt: skip

    @property
    def cni(self) -> Cni:
        return self.spec.cni

    @property
    def ipv6(self) -> bool:
        """Whether the lab is dual-stack (every pod, client and node also has IPv6)."""
        return self.spec.ipv6

    @property
    def host_ifnames(self) -> list[str]:
        """Node 1's pod-side veths (pods then client): where its agent attaches."""
        return [*(p.host_ifname for p in self.node_pods(1)), self.client.host_ifname]

    @property
    def overlay(self) -> str | None:
        """The overlay device of every node (flannel.1), or None without one."""
        return podnet.OVERLAY if self.cni is Cni.BRIDGE and self.underlay_ns else None

    def gateway(self, node: int = 1) -> IPv4Address:
        """The address node ``node``'s pods use as their gateway: an address of the node
        that every one of its pods and its client reaches."""
        return podnet.gateway(self.cni, self.node(node).pod_cidr)

    def gateway6(self, node: int = 1) -> IPv6Address:
        """The IPv6 gateway of node ``node``'s pods (fe80::1, or cni0's ::1)."""
        cidr6 = self.node(node).pod_cidr6
        if cidr6 is None:
            raise LabError(f"lab {self.name} has no IPv6 (build it with --ipv6)")
        return podnet.gateway6(self.cni, cidr6)

    @property
    def bridge(self) -> str | None:
        """The bridge the pod veths are ports of (cni0), or None when pods are routed."""
        return podnet.BRIDGE if self.cni is Cni.BRIDGE else None

    def pod(self, index: int) -> Pod:
        for p in self.pods:
            if p.name == f"pod-{index}":
                return p
        raise LabError(f"lab {self.name} has no pod-{index}")

    def node(self, index: int) -> Node:
        if not 1 <= index <= len(self.nodes):
            raise LabError(f"lab {self.name} has no node-{index}")
        return self.nodes[index - 1]

    def node_of(self, pod: Pod) -> Node:
        """The node ``pod`` (a backend pod or a node's client) runs on."""
        if pod.node == 0:
            raise LabError(f"{pod.name} of lab {self.name} is outside the cluster")
        return self.node(pod.node)

    def node_pods(self, index: int) -> list[Pod]:
        return [p for p in self.pods if p.node == index]

    def node_ifnames(self, index: int) -> list[str]:
        """Node ``index``'s host-side interfaces: pod veths, client veth, uplink and
        overlay."""
        node = self.node(index)
        uplink = [node.uplink] if node.uplink else []
        overlay = [self.overlay] if self.overlay else []
        return [
            *(p.host_ifname for p in self.node_pods(index)),
            node.client.host_ifname,
            *uplink,
            *overlay,
        ]

    def node_manifest(self, index: int) -> dict[str, Any]:
        """Node ``index`` as a Kubernetes Node object (see Node.internal_ip)."""
        node = self.node(index)
        return kubeobjects.node(
            node.name,
            internal_ip=node.internal_ip,
            zone=node.zone,
            pod_cidr=node.pod_cidr,
            internal_ip6=node.internal_ip6,
            pod_cidr6=node.pod_cidr6,
        )

    def endpoint(
        self,
        pod: Pod | int,
        *,
        ready: bool = True,
        serving: bool | None = None,
        terminating: bool = False,
        ipv6: bool = False,
    ) -> dict[str, Any]:
        """Pod ``pod`` (or pod number) as an EndpointSlice endpoint: its address (with
        ``ipv6``, its IPv6 one, for an IPv6 slice), node name and zone, and the
        conditions given."""
        p = self.pod(pod) if isinstance(pod, int) else pod
        node = self.node_of(p)
        return kubeobjects.endpoint(
            self.ip6(p) if ipv6 else p.ip,
            pod_name=p.name,
            node_name=node.name,
            zone=node.zone,
            ready=ready,
            serving=serving,
            terminating=terminating,
        )

    def ip6(self, pod: Pod) -> IPv6Address:
        """``pod``'s IPv6 address; LabError when the lab is IPv4-only."""
        if pod.ip6 is None:
            raise LabError(f"{pod.name} of lab {self.name} has no IPv6 (build it with --ipv6)")
        return pod.ip6

    def pod_manifest(self, pod: Pod | int, *, ready: bool = True) -> dict[str, Any]:
        """Pod ``pod`` (or pod number) as a Kubernetes Pod object: labelled ``app: web``,
        its addresses (both in a dual-stack lab), node, Ready condition and named ports."""
        p = self.pod(pod) if isinstance(pod, int) else pod
        return kubeobjects.pod(p.name, p.addresses, node_name=self.node_of(p).name, ready=ready)

    def manifests(self) -> list[dict[str, Any]]:
        """The lab as a cluster: its Node and Pod objects and the example Services
        selecting the Pods (dual-stack ones and an IPv6-only one in a dual-stack lab),
        as ``build`` writes them to ``manifests/cluster.yaml`` in the state directory;
        the manifest source derives their EndpointSlices from the Pods."""
        return [
            *(self.node_manifest(n.index) for n in self.nodes),
            *(self.pod_manifest(p) for p in self.pods),
            *kubeobjects.example_services(load_balancer=len(self.nodes) > 1, ipv6=self.ipv6),
        ]

    def servers_alive(self) -> dict[str, bool]:
        """Pod name -> whether its recorded server is still running."""
        return {p.name: _is_podserver(self.server_pids.get(p.name, 0), p.name) for p in self.pods}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "name": self.spec.name,
            "pods_requested": self.spec.pods,
            "nodes_requested": self.spec.nodes,
            "cni": self.spec.cni.value,
            "ipv6": self.spec.ipv6,
            "node_ns": self.node_ns,
            "client": _pod_json(self.client),
            "pods": [_pod_json(p) for p in self.pods],
            "server_pids": dict(self.server_pids),
            "nodes": [self._node_json(n) for n in self.nodes],
            "underlay_ns": self.underlay_ns,
            "outside": [_pod_json(o) for o in self.outside],
        }

    def _node_json(self, n: Node) -> dict[str, Any]:
        return {
            "name": n.name, "netns": n.netns, "pod_cidr": str(n.pod_cidr), "zone": n.zone,
            "address": str(n.address) if n.address else None, "uplink": n.uplink,
            "internal_ip": str(n.internal_ip), "client": _pod_json(n.client),
            "ifnames": self.node_ifnames(n.index),
            "pod_cidr6": _str_or_none(n.pod_cidr6), "address6": _str_or_none(n.address6),
            "internal_ip6": _str_or_none(n.internal_ip6),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any], state_dir: Path) -> Lab:
        """The recorded lab; nodes and outside clients follow from the spec, so
        records of versions 1 (one node) to 3 (no IPv6: an IPv4-only lab) read as well."""
        spec = LabSpec(
            data["name"],
            int(data["pods_requested"]),
            int(data.get("nodes_requested", 1)),
            Cni(data.get("cni", "routed")),
            bool(data.get("ipv6", False)),
        )
        lab = _plan(spec)
        lab.pods = [_pod_from_json(p) for p in data["pods"]]
        lab.state_dir = state_dir
        lab.server_pids = {str(k): int(v) for k, v in data["server_pids"].items()}
        return lab


def _pod_json(p: Pod) -> dict[str, Any]:
    return {
        "name": p.name,
        "netns": p.netns,
        "ip": str(p.ip),
        "host_ifname": p.host_ifname,
        "node": p.node,
        "ip6": _str_or_none(p.ip6),
    }


def _str_or_none(value: object | None) -> str | None:
    return None if value is None else str(value)


def _pod_from_json(d: dict[str, Any]) -> Pod:
    ip6 = d.get("ip6")
    return Pod(
        str(d["name"]),
        str(d["netns"]),
        IPv4Address(d["ip"]),
        str(d["host_ifname"]),
        int(d.get("node", 1)),
        IPv6Address(ip6) if ip6 else None,
    )


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise LabError(
            f"lab name {name!r}: use 1-8 lowercase letters and digits, starting with a letter"
        )


def _index(pod: Pod) -> int:
    return int(pod.name.rsplit("-", 1)[1])


def pod_cidr(node: int) -> IPv4Network:
    """Node ``node``'s pod range (1-based): node-1 = 10.244.0.0/24."""
    return IPv4Network((POD_NET + 256 * (node - 1), 24))


def pod_ip(index: int, node: int = 1) -> IPv4Address:
    """The address of pod ``index`` (1-based) on ``node``: pod-1 = 10.244.0.11."""
    return pod_cidr(node)[POD_IP_BASE + index]


def pod_cidr6(node: int) -> IPv6Network:
    """Node ``node``'s IPv6 pod range (1-based): node-1 = fd00:10:244::/64."""
    return IPv6Network((POD_NET6.network_address + ((node - 1) << 64), 64))


def pod_ip6(index: int, node: int = 1) -> IPv6Address:
    """The IPv6 address of pod ``index`` on ``node``: pod-1 = fd00:10:244::b."""
    return pod_cidr6(node)[POD_IP_BASE + index]


def _make_pod(name: str, index: int, node: int = 1, *, ipv6: bool = False) -> Pod:
    ip6 = pod_ip6(index, node) if ipv6 else None
    return Pod(f"pod-{index}", f"{name}-pod-{index}", pod_ip(index, node), f"vp{index}", node, ip6)


def _make_node(spec: LabSpec, k: int) -> Node:
    suffix = "" if k == 1 else f"-{k}"
    cidr = pod_cidr(k)
    cidr6 = pod_cidr6(k) if spec.ipv6 else None
    client = Pod(
        f"client{suffix}", f"{spec.name}-client{suffix}", cidr[CLIENT_HOST], "vc1", k,
        cidr6[CLIENT_HOST] if cidr6 else None,
    )  # fmt: skip
    if spec.nodes == 1:
        return Node(k, f"{spec.name}-node", cidr, client, pod_cidr6=cidr6)
    address6 = UNDERLAY_NET6[k] if spec.ipv6 else None
    return Node(
        k, f"{spec.name}-node{suffix}", cidr, client, UNDERLAY_NET[k], UPLINK, cidr6, address6
    )


def _outside(spec: LabSpec, j: int) -> Pod:
    host = OUTSIDE_HOST_BASE + j
    ip6 = UNDERLAY_NET6[host] if spec.ipv6 else None
    return Pod(f"ext-{j}", f"{spec.name}-ext-{j}", UNDERLAY_NET[host], f"x{j}", 0, ip6)


def _plan(spec: LabSpec) -> Lab:
    nodes = [_make_node(spec, k) for k in range(1, spec.nodes + 1)]
    multi = spec.nodes > 1
    return Lab(
        spec=spec,
        node_ns=nodes[0].netns,
        pods=[
            _make_pod(spec.name, (k - 1) * spec.pods + i, k, ipv6=spec.ipv6)
            for k in range(1, spec.nodes + 1)
            for i in range(1, spec.pods + 1)
        ],
        client=nodes[0].client,
        state_dir=LAB_ROOT / spec.name,
        nodes=nodes,
        outside=[_outside(spec, j) for j in range(1, OUTSIDE_CLIENTS + 1)] if multi else [],
        underlay_ns=f"{spec.name}-net" if multi else None,
    )
