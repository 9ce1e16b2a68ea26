"""The desired state of one node, as frozen values: what every frontend (ClusterIP:port,
NodePort, external address) must balance to. Pure: no I/O, no Kubernetes client types.

A *frontend* is the unit the data path programs: one address, port and protocol.
Every frontend of one Service port shares that port's backends.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from types import MappingProxyType
from typing import Any

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


# Backend.conditions' bits, in the order they compare (ready first)
READY, SERVING, TERMINATING = 4, 2, 1
# (node, zone, for_zones, for_nodes) -> that tuple: shared by every backend of one place
_places: dict[tuple[str | None, str | None, tuple[str, ...], tuple[str, ...]], object] = {}
_PLACES_MAX = 4096  # bounded: when full it starts again (sharing less, never wrongly)
_NOWHERE = (None, None, (), ())


class Backend:
    """One endpoint address and its resolved pod port, with its conditions.

    Frozen, equal and ordered by (address, port, ready, serving, terminating) as the
    dataclass it was; node, zone and the topology hints (the EndpointSlice's
    hints.forZones / hints.forNodes names) take no part in comparisons. Four slots,
    not nine, as there are 100,000s of them (64 B each, not 112): the conditions in one
    small int, and node, zone and hints in one tuple, shared by the backends of a place.
    """

    __slots__ = ("_place", "address", "conditions", "port")
    __match_args__ = ("address", "port", "ready", "serving", "terminating")

    address: IPAddress
    port: int
    conditions: int  # READY | SERVING | TERMINATING bits: one attribute read for all
    _place: tuple[str | None, str | None, tuple[str, ...], tuple[str, ...]] | None

    def __init__(
        self,
        address: IPAddress,
        port: int,
        ready: bool = True,
        serving: bool = True,
        terminating: bool = False,
        node: str | None = None,
        zone: str | None = None,
        for_zones: tuple[str, ...] = (),
        for_nodes: tuple[str, ...] = (),
    ) -> None:
        flags = (READY if ready else 0) | (SERVING if serving else 0)
        place = (node, zone, for_zones, for_nodes)
        if place == _NOWHERE:
            shared = None
        else:
            shared = _places.get(place)
            if shared is None:
                if len(_places) >= _PLACES_MAX:
                    _places.clear()
                _places[place] = shared = place
        setter = object.__setattr__
        setter(self, "address", address)
        setter(self, "port", port)
        setter(self, "conditions", flags | (TERMINATING if terminating else 0))
        setter(self, "_place", shared)

    @property
    def ready(self) -> bool:
        return bool(self.conditions & READY)

    @property
    def serving(self) -> bool:
        return bool(self.conditions & SERVING)

    @property
    def terminating(self) -> bool:
        return bool(self.conditions & TERMINATING)

    @property
    def node(self) -> str | None:
        return self._place[0] if self._place is not None else None

    @property
    def zone(self) -> str | None:
        return self._place[1] if self._place is not None else None

    @property
    def for_zones(self) -> tuple[str, ...]:
        return self._place[2] if self._place is not None else ()

    @property
    def for_nodes(self) -> tuple[str, ...]:
        return self._place[3] if self._place is not None else ()

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.address, self.port)

    def _order(self) -> tuple[IPAddress, int, int]:
        # (ready, serving, terminating) compare as the flags' int does, bit by bit
        return (self.address, self.port, self.conditions)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Backend:
            return NotImplemented
        assert isinstance(other, Backend)
        return self._order() == other._order()

    def __lt__(self, other: Backend) -> bool:
        if other.__class__ is not Backend:
            return NotImplemented
        return self._order() < other._order()

    def __le__(self, other: Backend) -> bool:
        if other.__class__ is not Backend:
            return NotImplemented
        return self._order() <= other._order()

    def __gt__(self, other: Backend) -> bool:
        if other.__class__ is not Backend:
            return NotImplemented
        return self._order() > other._order()

    def __ge__(self, other: Backend) -> bool:
        if other.__class__ is not Backend:
            return NotImplemented
        return self._order() >= other._order()

    def __hash__(self) -> int:
        return hash(self._order())

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def replace(self, **changes: Any) -> Backend:
        """A copy with ``changes`` (by the constructor's names), as dataclasses.replace."""
        fields: dict[str, Any] = dict(zip(_BACKEND_FIELDS, self._args(), strict=True))
        fields.update(changes)
        return Backend(**fields)

    def __reduce__(self) -> tuple[type[Backend], tuple[object, ...]]:
        return (Backend, self._args())

    def _args(self) -> tuple[object, ...]:
        return (
            self.address,
            self.port,
            self.ready,
            self.serving,
            self.terminating,
            self.node,
            self.zone,
            self.for_zones,
            self.for_nodes,
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(_BACKEND_FIELDS, self._args(), strict=True))
        return f"Backend({shown})"

    def __str__(self) -> str:
        return hostport(self.address, self.port)


_BACKEND_FIELDS = (
    "address",
    "port",
    "ready",
    "serving",
    "terminating",
    "node",
    "zone",
    "for_zones",
    "for_nodes",
)


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
