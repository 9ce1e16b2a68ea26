"""What one Service publishes in the cluster's DNS, read from its Service object and its
EndpointSlices (plain dicts in the API's shape): pure, no sockets, no dnspython.

The Kubernetes DNS specification (github.com/kubernetes/dns, docs/specification.md)
decides the content: a ClusterIP Service publishes its ClusterIPs (both families of a
dual-stack one) and one SRV target per named port, the Service port; a headless Service
(``clusterIP: None``) publishes its *ready* endpoints' addresses, each under a hostname
(the endpoint's ``hostname``, else a name made from its address, as CoreDNS makes it:
``10-244-0-11``, ``fd00-10-244--b``), and SRV targets per endpoint and named port with
the endpoint's port, as CoreDNS answers; an ExternalName Service publishes its external
name. "Ready" is the EndpointSlice condition (absent means ready, as the API says), or
any endpoint when the Service sets ``publishNotReadyAddresses`` (or the older
``service.alpha.kubernetes.io/tolerate-unready-endpoints`` annotation).

A malformed object gives no records rather than an exception: the DNS answerer must
never fail the agent over one bad Service (the data path's translation logs it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebpflb.model import IPAddress, ServiceRef
from ebpflb.sources.services import CompactService

TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class NamedPort:
    """A named port as SRV publishes it: ``_<name>._<protocol>`` → ``port``."""

    name: str  # lower-case
    protocol: str  # lower-case: tcp, udp, sctp
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ready endpoint of a headless Service under its hostname label."""

    hostname: str  # lower-case DNS label
    addresses: tuple[IPAddress, ...]
    ports: tuple[NamedPort, ...]  # of its EndpointSlice, named ones only


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    """Everything the DNS holds for one Service."""

    ref: ServiceRef
    cluster_ips: tuple[IPAddress, ...] = ()  # a ClusterIP Service's, in clusterIPs order
    ports: tuple[NamedPort, ...] = ()  # a ClusterIP Service's named Service ports
    headless: bool = False
    endpoints: tuple[Endpoint, ...] = ()  # a headless Service's ready ones
    external_name: str | None = None  # an ExternalName Service's target (no final dot)

    def addresses(self) -> tuple[IPAddress, ...]:
        """The addresses the Service name resolves to (ClusterIPs, or ready endpoints)."""
        if not self.headless:
            return self.cluster_ips
        return tuple(dict.fromkeys(a for ep in self.endpoints for a in ep.addresses))

    def endpoint(self, hostname: str) -> Endpoint | None:
        for ep in self.endpoints:
            if ep.hostname == hostname:
                return ep
        return None


def service_records(
    service: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]
) -> ServiceRecords | None:
    """The records of ``service`` given its EndpointSlices; None when it has no usable
    name (nothing can be published for it)."""
    small = service if type(service) is CompactService else None
    meta: Mapping[str, Any]
    name: Any
    namespace: Any
    if small is not None:  # the Kubernetes source's usual Service: read its slots
        meta, name, namespace = _NO_META, small.name, small.namespace
    else:
        meta = _mapping(service.get("metadata"))
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not (_is_label(name) and _is_label(namespace)):
        return None
    ref = ServiceRef(str(namespace).lower(), str(name).lower())
    spec = _mapping(service.get("spec"))
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName")
        if not isinstance(target, str) or not target.strip(". "):
            return ServiceRecords(ref)
        return ServiceRecords(ref, external_name=target.strip().rstrip(".").lower())
    if small is not None and small.shape.single and type(small.cluster_ip) is int:
        # what _cluster_ips reads of a dotted quad, without parsing it back
        ips: tuple[IPAddress, ...] | None = (ipaddress.IPv4Address(small.cluster_ip),)
    else:
        ips = _cluster_ips(spec)
    if ips is None:  # headless
        tolerate = bool(spec.get("publishNotReadyAddresses")) or (
            str(_mapping(meta.get("annotations")).get(TOLERATE_UNREADY, "")).lower() == "true"
        )
        return ServiceRecords(ref, headless=True, endpoints=_endpoints(slices, tolerate))
    return ServiceRecords(ref, cluster_ips=ips, ports=_service_ports(spec))


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[IPAddress, ...] | None:
    """The ClusterIPs (``clusterIPs``, else ``clusterIP``); None for a headless Service."""
    raw = spec.get("clusterIPs")
    values: list[Any] = list(raw) if isinstance(raw, list) and raw else [spec.get("clusterIP")]
    if any(isinstance(v, str) and v.strip() == "None" for v in values):
        return None
    out: list[IPAddress] = []
    for value in values:
        try:
            out.append(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            continue
    return tuple(dict.fromkeys(out))


def _service_ports(spec: Mapping[str, Any]) -> tuple[NamedPort, ...]:
    return tuple(dict.fromkeys(p for raw in _list(spec.get("ports")) if (p := _named_port(raw))))


def _named_port(raw: object, number_key: str = "port") -> NamedPort | None:
    port = _mapping(raw)
    name, number = port.get("name"), port.get(number_key)
    protocol = str(port.get("protocol") or "TCP").upper()
    if not _is_label(name) or protocol not in PROTOCOLS:
        return None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
        return None
    return NamedPort(str(name).lower(), protocol.lower(), number)


def _endpoints(slices: Iterable[Mapping[str, Any]], tolerate: bool) -> tuple[Endpoint, ...]:
    """The ready endpoints of every slice, merged by hostname (a dual-stack endpoint
    appears once in each family's slice), in the order first seen."""
    merged: dict[str, tuple[list[IPAddress], dict[NamedPort, None]]] = {}
    for sl in slices:
        if not isinstance(sl, Mapping):
            continue
        ports = [p for raw in _list(sl.get("ports")) if (p := _named_port(raw))]
        for raw in _list(sl.get("endpoints")):
            ep = _mapping(raw)
            ready = _mapping(ep.get("conditions")).get("ready")
            if ready is False and not tolerate:
                continue
            addresses = [a for v in _list(ep.get("addresses")) if (a := _address(v)) is not None]
            if not addresses:
                continue
            hostname = ep.get("hostname")
            label = str(hostname).lower() if _is_label(hostname) else _address_label(addresses[0])
            have_addresses, have_ports = merged.setdefault(label, ([], {}))
            have_addresses.extend(a for a in addresses if a not in have_addresses)
            have_ports.update(dict.fromkeys(ports))
    return tuple(Endpoint(h, tuple(a), tuple(p)) for h, (a, p) in merged.items())


def _address(value: object) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def _address_label(address: IPAddress) -> str:
    """A label made from an address, as CoreDNS names an endpoint without a hostname."""
    return str(address).replace(".", "-").replace(":", "-")


def address_from_label(label: str) -> IPAddress | None:
    """The address a dashed label names (``10-244-0-11``, ``fd00--1``), or None: the
    deprecated ``<a-b-c-d>.<ns>.pod.<zone>`` records."""
    for text in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            continue
    return None


def _is_label(value: object) -> bool:
    """A DNS label as Kubernetes names are (RFC 1123, at most 63 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= 63:
        return False
    return (
        value[0].isalnum()
        and value[-1].isalnum()
        and all(c.isalnum() or c == "-" for c in value)
        and value.isascii()
    )


_NO_META: Mapping[str, Any] = {}  # a CompactService's: no annotation; never filled


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    # a list, or the Kubernetes source's packed endpoints (a Sequence, not a list)
    return value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else ()
