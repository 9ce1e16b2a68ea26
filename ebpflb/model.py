"""The desired state of one node, as frozen values: what every frontend (ClusterIP:port,
NodePort, external address) must balance to. Pure: no I/O, no Kubernetes client types.

A *frontend* is the unit the data path programs: one address, port and protocol.
Every frontend of one Service port shares that port's backends.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_CLUSTER_DOMAIN = "cluster.local"  # kubelet's and CoreDNS's usual --cluster-domain


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        return {"TCP": 6, "UDP": 17, "SCTP": 132}[self.value]


class FrontendKind(enum.StrEnum):
    CLUSTER_IP = "clusterip"
    NODE_PORT = "nodeport"
    EXTERNAL = "external"
    LOAD_BALANCER = "loadbalancer"


class ServiceType(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True, order=True, slots=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def dns_name(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
        """The Service's name in the cluster's DNS: ``<name>.<namespace>.svc.<domain>``
        (the Kubernetes DNS specification), without the root's trailing dot."""
        return f"{self.name}.{self.namespace}.svc.{cluster_domain.strip('.')}"


@dataclass(frozen=True, order=True, slots=True)
class ServicePortName:
    """One port of a Service (kube-proxy's ServicePortName): the load-balancing unit."""

    service: ServiceRef
    port: str  # the port's name; "" for an unnamed single port
    protocol: Protocol

    def __str__(self) -> str:
        name = f"{self.service}:{self.port}" if self.port else str(self.service)
        return f"{name}/{self.protocol}"


FrontendKey = tuple[IPAddress, int, Protocol]  # what a frontend is looked up by


def hostport(address: IPAddress | str, port: int | str) -> str:
    """``address:port``, an IPv6 address in brackets (``[fd00::a]:80``, RFC 3986): the
    one spelling of an endpoint in tables, plans, explanations and logs. A string
    address (a bind address such as ``::``) is IPv6 when it has a colon."""
    v6 = ":" in address if isinstance(address, str) else address.version == 6
    return f"[{address}]:{port}" if v6 else f"{address}:{port}"


@dataclass(frozen=True, order=True, slots=True)
class Frontend:
    address: IPAddress
    port: int
    protocol: Protocol
    kind: FrontendKind = field(compare=False, default=FrontendKind.CLUSTER_IP)
    # (address, port, protocol), made once: the desired state, the plan and the data
    # path's tables are all keyed by it, and share this one tuple (at 100,000s of
    # frontends, a tuple made per use was one kept per table).
    key: FrontendKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port, self.protocol))

    def __str__(self) -> str:
        return f"{hostport(self.address, self.port)}/{self.protocol}"


def frontend_order(fe: Frontend) -> tuple[int, int, int, str]:
    """A sort key that orders frontends as comparing them does (and IPv4 before IPv6,
    where that raises), without Frontend's and ipaddress' slow Python comparisons."""
    return (fe.address.version, int(fe.address), fe.port, fe.protocol)


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    """One endpoint address and its resolved pod port, with its conditions."""

    address: IPAddress
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node: str | None = field(default=None, compare=False)
    zone: str | None = field(default=None, compare=False)
    # Topology hints of the EndpointSlice (hints.forZones / hints.forNodes names).
    for_zones: tuple[str, ...] = field(default=(), compare=False)
    for_nodes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        return hostport(self.address, self.port)


def usable_backends(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """The backends that receive new flows: the ready ones, or, when none is ready,
    the serving-and-terminating ones (graceful drain, as kube-proxy does)."""
    items = tuple(backends)
    ready = tuple(b for b in items if b.ready)
    if ready:
        return ready
    return tuple(b for b in items if b.serving and b.terminating)


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One frontend with everything the data path needs to balance it."""

    frontend: Frontend
    port_name: ServicePortName
    backends: tuple[Backend, ...]  # every known endpoint, sorted; see `active`
    affinity_timeout: int = 0  # seconds of ClientIP session affinity; 0 = none
    # The node address that clients of this frontend are source-NATed to (NodePort,
    # external and load-balancer frontends under externalTrafficPolicy: Cluster, as
    # kube-proxy masquerades them), so replies come back through this node; None keeps
    # the client's address (ClusterIP, externalTrafficPolicy: Local).
    snat_address: IPAddress | None = None  # of the frontend's family
    # loadBalancerSourceRanges on a load-balancer frontend: only these clients are
    # admitted; () admits every client.
    source_ranges: tuple[IPNetwork, ...] = ()  # of the frontend's family
    # With no active backend: drop (a Local traffic policy left this node without the
    # Service's endpoints, as kube-proxy drops) rather than refuse (the Service has no
    # endpoint at all: kube-proxy's REJECT).
    drop_when_empty: bool = False

    @property
    def active(self) -> tuple[Backend, ...]:
        return usable_backends(self.backends)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A Service as the user sees it in `ebpflb services`, including the kinds that are
    never load-balanced (headless, ExternalName)."""

    ref: ServiceRef
    type: ServiceType
    cluster_ip: str | None  # "None" for headless
    external_name: str | None = None
    # A LoadBalancer Service with externalTrafficPolicy: Local: the node port where this
    # node answers load-balancer health checks (0 = none), and how many ready endpoints
    # (distinct addresses) the Service has on this node.
    health_check_node_port: int = 0
    local_endpoints: int = 0
    # Every ClusterIP of the Service as written (spec.clusterIPs: the primary family's
    # first, at most one per family; ("None",) when headless), of the families this node
    # serves or not; () for ExternalName.
    cluster_ips: tuple[str, ...] = ()

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything one node must do, keyed by frontend."""

    entries: Mapping[FrontendKey, ServiceEntry] = field(
        default_factory=lambda: MappingProxyType({})
    )
    services: Mapping[ServiceRef, ServiceInfo] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls, entries: Iterable[ServiceEntry], services: Iterable[ServiceInfo] = ()
    ) -> DesiredState:
        ordered = sorted(entries, key=lambda e: frontend_order(e.frontend))
        by_key = {e.frontend.key: e for e in ordered}
        by_ref = {s.ref: s for s in sorted(services, key=lambda s: (s.ref.namespace, s.ref.name))}
        return cls(MappingProxyType(by_key), MappingProxyType(by_ref))

    def __len__(self) -> int:
        return len(self.entries)
