"""What `ebpflb services|backends|conntrack|stats` show, independent of the data path
that produced it. Each view's `as_json()` keys are a stable contract."""

from __future__ import annotations

from dataclasses import dataclass, field

from ebpflb.dataplane.telemetry import drops_by_reason
from ebpflb.model import (
    DEFAULT_CLUSTER_DOMAIN,
    Frontend,
    FrontendKind,
    IPAddress,
    ServicePortName,
)


@dataclass(frozen=True)
class ServiceView:
    id: int
    frontend: Frontend
    port_name: ServicePortName | None  # None when the name is not recorded
    backends: int
    active_backends: int
    affinity_timeout: int = 0

    @property
    def kind(self) -> FrontendKind:
        return self.frontend.kind

    def dns_name(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str | None:
        """The Service's DNS name; None when the name is not recorded."""
        return self.port_name.service.dns_name(cluster_domain) if self.port_name else None

    def as_json(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> dict[str, object]:
        pn = self.port_name
        return {
            "id": self.id,
            "service": str(pn.service) if pn else None,
            "port_name": pn.port if pn else None,
            "protocol": str(self.frontend.protocol),
            "address": str(self.frontend.address),
            "port": self.frontend.port,
            "frontend": str(self.frontend),
            "kind": str(self.kind),
            "backends": self.backends,
            "active_backends": self.active_backends,
            "affinity_timeout": self.affinity_timeout,
            "dns_name": self.dns_name(cluster_domain),
        }


@dataclass(frozen=True)
class BackendView:
    id: int
    svc_id: int
    frontend: Frontend
    port_name: ServicePortName | None
    address: IPAddress
    port: int
    active: bool
    terminating: bool

    def as_json(self) -> dict[str, object]:
        pn = self.port_name
        return {
            "id": self.id,
            "svc_id": self.svc_id,
            "service": str(pn.service) if pn else None,
            "port_name": pn.port if pn else None,
            "frontend": str(self.frontend),
            "address": str(self.address),
            "port": self.port,
            "protocol": str(self.frontend.protocol),
            "active": self.active,
            "terminating": self.terminating,
        }


@dataclass(frozen=True)
class ConnView:
    protocol: str
    client_address: IPAddress
    client_port: int
    frontend_address: IPAddress
    frontend_port: int
    backend_address: IPAddress
    backend_port: int
    backend_id: int
    svc_id: int
    service: str | None
    age_seconds: float
    idle_seconds: float
    # The source the backend sees when the flow is source-NATed (NodePort traffic under
    # externalTrafficPolicy: Cluster, hairpin); None when the client's own is kept.
    snat_address: IPAddress | None = None
    snat_port: int | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "client_address": str(self.client_address),
            "client_port": self.client_port,
            "frontend_address": str(self.frontend_address),
            "frontend_port": self.frontend_port,
            "backend_address": str(self.backend_address),
            "backend_port": self.backend_port,
            "backend_id": self.backend_id,
            "svc_id": self.svc_id,
            "service": self.service,
            "age_seconds": round(self.age_seconds, 3),
            "idle_seconds": round(self.idle_seconds, 3),
            "snat_address": str(self.snat_address) if self.snat_address else None,
            "snat_port": self.snat_port,
        }


@dataclass(frozen=True)
class ServiceStats:
    svc_id: int
    frontend: Frontend
    port_name: ServicePortName | None
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int

    def as_json(self) -> dict[str, object]:
        pn = self.port_name
        return {
            "svc_id": self.svc_id,
            "service": str(pn.service) if pn else None,
            "port_name": pn.port if pn else None,
            "frontend": str(self.frontend),
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
        }


@dataclass(frozen=True)
class StatsView:
    services: tuple[ServiceStats, ...]
    counters: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # by reason (telemetry.DROP_REASONS)

    def drops_by_reason(self) -> dict[str, int]:
        """Every drop reason, in drop_reasons.h's order, 0 where none was counted."""
        return drops_by_reason(self.drops)

    def as_json(self) -> dict[str, object]:
        return {
            "services": [s.as_json() for s in self.services],
            "counters": dict(sorted(self.counters.items())),
            "drops": self.drops_by_reason(),
        }
