"""Kubernetes objects -> the model. Pure: plain dicts in (as parsed from YAML/JSON or
returned by the API), a ``DesiredState`` and a list of ``ObjectError`` out; no I/O,
no logging (the caller logs the errors it has not logged before).

What one bad field costs (the unit that is skipped is always complete, so an error
never leaves half a Service port applied; every other object still applies):

- **the whole Service** (no entries, no ``ServiceInfo``): missing ``metadata.name`` or
  ``spec``, unknown ``spec.type``, a missing or malformed ``clusterIP``, a ClusterIP
  with no IPv4 address (this node is IPv4-only), a bad ``sessionAffinity`` /
  ``timeoutSeconds`` / traffic policy, ``spec.ports`` not a list, the same
  namespace/name defined twice (the later copy);
- **one Service port** (the other ports apply): ``port``, ``targetPort`` number or
  ``nodePort`` outside 1-65535, unknown protocol, a missing name on a multi-port
  Service, a (port, protocol), name or (nodePort, protocol) already used by an
  earlier port of the same Service;
- **one frontend address**: a malformed ``spec.externalIPs`` or load-balancer ingress
  IP; a frontend (address, port, protocol) already claimed by a Service earlier in
  (namespace, name) order (the error names the later Service);
- **the whole EndpointSlice**: missing name, missing ``kubernetes.io/service-name``
  label, unknown ``addressType``, ``ports``/``endpoints`` not lists;
- **one slice port**: missing or out-of-range port, unknown protocol;
- **one endpoint**: no address, a malformed or wrong-family address, conditions that
  are not booleans.

Quietly ignored (normal, not errors): Services labelled
``service.kubernetes.io/service-proxy-name`` (another proxy owns them, as in
kube-proxy), IPv6 and FQDN slices, IPv6 external/ingress IPs and node addresses
(dual-stack objects are normal on an IPv4 node), ingress entries with only a
hostname or ``ipMode: Proxy``, a NodePort/LoadBalancer port without ``nodePort``
(the API server allocates it; a manifest may leave it out), slices whose Service
is unknown.

Traffic policies need to know which backends are local, so they apply only when
``node_name`` is given: ``externalTrafficPolicy: Local`` keeps only node-local
backends on NodePort/external/load-balancer frontends, ``internalTrafficPolicy:
Local`` on the ClusterIP frontend. Without ``node_name`` both act as ``Cluster``.
Under a ``Cluster`` policy, a Service that asks for topology-aware routing
(``spec.trafficDistribution`` or the topology annotations) gives new flows only to the
endpoints hinted for this node or ``node_zone`` (see ``topology``). A LoadBalancer
Service with ``externalTrafficPolicy: Local`` carries its ``healthCheckNodePort`` and
its count of ready endpoints on ``node_name`` in its ``ServiceInfo``.

Named ports: a Service port's ``targetPort`` may be a pod port's name; each
EndpointSlice carries the resolved number for its own endpoints (pods of one Service
may number the port differently), so backends take the port of the slice they are in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from ebpflb.model import (
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    ServiceEntry,
    ServiceInfo,
    ServicePortName,
    ServiceRef,
    ServiceType,
    frontend_order,
    usable_backends,
)
from ebpflb.sources import topology
from ebpflb.sources.endpointslices import _Backends, _collect_backends
from ebpflb.sources.fields import Obj, ObjectError, _error, _error_order, _ip
from ebpflb.sources.services import _parse_services, _Service
from ebpflb.sources.topology import Preference

__all__ = [
    "ObjectError",
    "TranslateResult",
    "Translation",
    "node_addresses",
    "translate",
    "translate_dicts",
]


@dataclass(frozen=True)
class TranslateResult:
    state: DesiredState
    errors: tuple[ObjectError, ...] = ()


def translate(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    *,
    node_name: str | None = None,
    node_zone: str | None = None,
    node_addresses: Sequence[IPAddress] = (),
) -> TranslateResult:
    """Translate Services and EndpointSlices into this node's desired state.

    ``node_addresses`` get the NodePort frontends (IPv4 only for now); ``node_name``
    enables the Local traffic policies, and with ``node_zone`` topology-aware routing
    (see the module docstring).
    """
    t = translate_dicts(
        services, slices, node_name=node_name, node_zone=node_zone, node_addresses=node_addresses
    )
    state = DesiredState(MappingProxyType(t.entries), MappingProxyType(t.services))
    return TranslateResult(state, t.errors)


@dataclass(frozen=True)
class Translation:
    """translate()'s result as plain dicts that the caller owns, so that the
    incremental translator can keep them without copying 10,000s of entries."""

    entries: dict[FrontendKey, ServiceEntry]  # in frontend order
    services: dict[ServiceRef, ServiceInfo]  # in (namespace, name) order
    keys_of: dict[ServiceRef, set[FrontendKey]]  # the frontends each Service got, if any
    errors: tuple[ObjectError, ...]


def translate_dicts(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    *,
    node_name: str | None = None,
    node_zone: str | None = None,
    node_addresses: Sequence[IPAddress] = (),
) -> Translation:
    """translate(), without the read-only wrapping."""
    errors: list[ObjectError] = []
    parsed = _parse_services(services, errors)
    backends = _collect_backends(slices, errors)
    nodes = tuple(dict.fromkeys(a for a in node_addresses if a.version == 4))
    ordered = [parsed[name] for name in sorted(parsed)]
    entries, keys_of = _claim(
        ((s.info.ref, _entries(s, backends, node_name, node_zone, nodes)) for s in ordered), errors
    )
    return Translation(
        entries=entries,
        services={s.info.ref: _info(s, backends, node_name) for s in ordered},
        keys_of=keys_of,
        errors=tuple(sorted(set(errors), key=_error_order)),
    )


def _claim(
    entries_of: Iterable[tuple[ServiceRef, list[ServiceEntry]]], errors: list[ObjectError]
) -> tuple[dict[FrontendKey, ServiceEntry], dict[ServiceRef, set[FrontendKey]]]:
    """Each frontend to the first Service (in the order given) that asks for it, the
    entries in frontend order, and the frontends each Service got."""
    claimed: dict[FrontendKey, ServiceEntry] = {}
    keys_of: dict[ServiceRef, set[FrontendKey]] = {}
    for ref, entries in entries_of:
        for entry in entries:
            key = entry.frontend.key
            owner = claimed.get(key)
            if owner is not None:
                fe = entry.frontend
                msg = (
                    f"{fe.kind} frontend {fe} is already used by Service "
                    f"{owner.port_name.service}; skipped"
                )
                errors.append(_error("Service", ref, msg))
                continue
            claimed[key] = entry
            keys_of.setdefault(ref, set()).add(key)
    in_order = sorted(claimed.items(), key=lambda item: frontend_order(item[1].frontend))
    return dict(in_order), keys_of  # the key tuples shared with keys_of, not copies


def node_addresses(
    nodes: Iterable[Obj], node_name: str, *, types: Collection[str] = ("InternalIP", "ExternalIP")
) -> tuple[IPAddress, ...]:
    """The addresses of these ``types`` (by default InternalIP and ExternalIP) of the
    Node named ``node_name`` (malformed ones are left out), in the Node's order; () when
    there is no such Node."""
    for node in nodes:
        meta = node.get("metadata")
        if not isinstance(meta, Mapping) or meta.get("name") != node_name:
            continue
        status = node.get("status")
        items = status.get("addresses") if isinstance(status, Mapping) else None
        found: list[IPAddress] = []
        for item in items if isinstance(items, list) else ():
            if isinstance(item, Mapping) and item.get("type") in types:
                address = _ip(item.get("address"))
                if address is not None:
                    found.append(address)
        return tuple(dict.fromkeys(found))
    return ()


# --- Entries -----------------------------------------------------------------------------


def _entries(
    svc: _Service,
    backends: _Backends,
    node_name: str | None,
    node_zone: str | None,
    nodes: tuple[IPAddress, ...],
) -> list[ServiceEntry]:
    """One entry per frontend of every port of one Service, in a stable order."""
    if svc.address is None:
        return []
    ref = svc.info.ref
    node_port_type = svc.info.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)
    entries: list[ServiceEntry] = []
    for port in svc.ports:
        name = ServicePortName(ref, port.name, port.protocol)
        known = backends.get((ref.namespace, ref.name, port.name, port.protocol), {})
        every = tuple([known[k] for k in sorted(known)])  # (address, port) order
        # Topology narrows what the Cluster policies use, never the Local ones'.
        cluster = every
        if svc.topology is not Preference.NONE:
            cluster = topology.prefer(every, svc.topology, node_name=node_name, zone=node_zone)
        internal = external = cluster
        if node_name and (svc.internal_local or svc.external_local):
            local = tuple(b for b in every if b.node == node_name)
            internal = local if svc.internal_local else cluster
            external = local if svc.external_local else cluster
        # A Local policy that leaves a frontend empty while the Service has endpoints
        # elsewhere drops its traffic; a Service without any endpoint refuses it.
        elsewhere = bool(node_name) and bool(usable_backends(every))
        entries.append(
            ServiceEntry(
                Frontend(svc.address, port.port, port.protocol),
                name,
                internal,
                svc.affinity_timeout,
                drop_when_empty=elsewhere and svc.internal_local,
            )
        )
        frontends: list[tuple[IPAddress, int, FrontendKind]] = []
        if node_port_type and port.node_port is not None:
            frontends += [(a, port.node_port, FrontendKind.NODE_PORT) for a in nodes]
        if svc.external:  # the common case has none: no empty comprehensions
            frontends += [(a, port.port, FrontendKind.EXTERNAL) for a in svc.external]
        if svc.load_balancer:
            frontends += [(a, port.port, FrontendKind.LOAD_BALANCER) for a in svc.load_balancer]
        for address, number, kind in frontends:
            entries.append(
                ServiceEntry(
                    Frontend(address, number, port.protocol, kind),
                    name,
                    external,
                    svc.affinity_timeout,
                    _snat_address(svc, kind, address, nodes),
                    svc.source_ranges if kind is FrontendKind.LOAD_BALANCER else (),
                    elsewhere and svc.external_local,
                )
            )
    return entries


def _info(svc: _Service, backends: _Backends, node_name: str | None) -> ServiceInfo:
    """The Service's info; with a health check, its count of distinct ready endpoint
    addresses on this node over all its ports (what kube-proxy's health check reports)."""
    info = svc.info
    if not info.health_check_node_port or not node_name:
        return info
    ref = info.ref
    local: set[IPAddress] = set()
    for port in svc.ports:
        known = backends.get((ref.namespace, ref.name, port.name, port.protocol), {})
        local.update(b.address for b in known.values() if b.ready and b.node == node_name)
    return replace(info, local_endpoints=len(local))


def _snat_address(
    svc: _Service, kind: FrontendKind, address: IPAddress, nodes: tuple[IPAddress, ...]
) -> ipaddress.IPv4Address | None:
    """What external clients are source-NATed to: nothing under externalTrafficPolicy:
    Local (the client's address is kept); else the node address the NodePort was
    reached at, or the node's first address for an external or load-balancer IP."""
    if svc.external_local:
        return None
    chosen = address if kind is FrontendKind.NODE_PORT else (nodes[0] if nodes else None)
    return chosen if isinstance(chosen, ipaddress.IPv4Address) else None
