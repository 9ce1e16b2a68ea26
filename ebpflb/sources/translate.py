"""Kubernetes objects -> the model. Pure: plain dicts in (as parsed from YAML/JSON or
returned by the API), a ``DesiredState`` and a list of ``ObjectError`` out; no I/O,
no logging (the caller logs the errors it has not logged before).

What one bad field costs (the unit that is skipped is always complete, so an error
never leaves half a Service port applied; every other object still applies):

- **the whole Service** (no entries, no ``ServiceInfo``): missing ``metadata.name`` or
  ``spec``, unknown ``spec.type``, a missing or malformed ``clusterIP``, ``clusterIPs``
  that the API server would refuse (``clusterIP`` not ``clusterIPs[0]``, two addresses
  of one family, families other than ``ipFamilies`` says, two families under
  ``ipFamilyPolicy: SingleStack``), a bad ``ipFamilies`` / ``ipFamilyPolicy``, a bad
  ``sessionAffinity`` / ``timeoutSeconds`` / traffic policy, ``spec.ports`` not a
  list, the same namespace/name defined twice (the later copy);
- **the Service's frontends, not its info** (it still shows in ``ebpflb services``):
  no ClusterIP of a family this node serves (see *IP families* below);
- **one family of a Service**: the family this node lacks under ``ipFamilyPolicy:
  RequireDualStack`` (the other family is served, as kube-proxy serves the families it
  runs for); the load-balancer addresses of a family that
  ``loadBalancerSourceRanges`` gives no range of while it gives ranges of the other;
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
kube-proxy), FQDN slices, external/ingress IPs, source ranges and slices of a family
the Service or this node does not serve (dual-stack objects are normal on a
single-stack node; kube-proxy ignores them too), the missing family of a
``PreferDualStack`` Service, ingress entries with only a hostname or ``ipMode:
Proxy``, a NodePort/LoadBalancer port without ``nodePort`` (the API server allocates
it; a manifest may leave it out), slices whose Service is unknown.

IP families: each family is translated as kube-proxy's proxier of that family does.
A Service gets, for each of its ClusterIPs of a family this node serves, a ClusterIP
frontend per port, NodePort frontends on the node addresses of that family, and
frontends for its external and load-balancer IPs of that family; those frontends take
the backends of the Service's EndpointSlices of that family only, and the source
ranges of that family only. This node serves a family when it has an address of it
(its Node object's or its own interfaces': ``node_families``, computed by the agent's
``nodeaddrs``), as kube-proxy runs a proxier only for the families the node can
serve; without ``node_families`` both are served.

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

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple

from ebpflb.model import (
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    IPNetwork,
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
    node_families: Collection[int] | None = None,
) -> TranslateResult:
    """Translate Services and EndpointSlices into this node's desired state.

    ``node_addresses`` get the NodePort frontends (of both families); ``node_families``
    are the IP versions (4, 6) this node serves, None for both; ``node_name`` enables
    the Local traffic policies, and with ``node_zone`` topology-aware routing (see the
    module docstring).
    """
    t = translate_dicts(
        services,
        slices,
        node_name=node_name,
        node_zone=node_zone,
        node_addresses=node_addresses,
        node_families=node_families,
    )
    state = DesiredState(MappingProxyType(t.entries), MappingProxyType(t.services))
    return TranslateResult(state, t.errors)


@dataclass(frozen=True)
class Translation:
    """translate()'s result as plain dicts that the caller owns, so that the
    incremental translator can keep them without copying 10,000s of entries."""

    entries: dict[FrontendKey, ServiceEntry]  # in frontend order
    services: dict[ServiceRef, ServiceInfo]  # in (namespace, name) order
    keys_of: dict[ServiceRef, tuple[FrontendKey, ...]]  # the frontends each Service got, if any
    errors: tuple[ObjectError, ...]


def translate_dicts(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    *,
    node_name: str | None = None,
    node_zone: str | None = None,
    node_addresses: Sequence[IPAddress] = (),
    node_families: Collection[int] | None = None,
) -> Translation:
    """translate(), without the read-only wrapping."""
    errors: list[ObjectError] = []
    parsed = _parse_services(services, errors)
    backends = _collect_backends(slices, errors)
    addresses = tuple(dict.fromkeys(node_addresses))
    node = _Node(
        node_name,
        node_zone,
        addresses,
        frozenset((4, 6) if node_families is None else node_families),
        {v: tuple(a for a in addresses if a.version == v) for v in (4, 6)},
    )
    ordered = [parsed[name] for name in sorted(parsed)]
    # Every Service's entries, in claim order, and each Service's frontends: what the
    # claim gives when no frontend is asked for twice, the usual case (checked below).
    asked: list[ServiceEntry] = []
    keys_of: dict[ServiceRef, tuple[FrontendKey, ...]] = {}
    every_family = len(node.families) == 2  # see _served
    # Where the native module was built, it runs this loop for the usual Services (see
    # _native_services), up to each other one, which is translated here.
    native = _native_services if every_family else None
    i, count = 0, len(ordered)
    while i < count:
        if native is not None:
            i = native(ordered, i, backends, bool(node.name), asked, keys_of)
            if i >= count:
                break
        svc = ordered[i]
        i += 1
        served = svc.addresses
        if not served:
            continue
        if not every_family:
            served = _served(svc, node, errors)
        if len(served) == 1:  # single-stack: one family's entries are all of them
            found = _family_entries(svc, served[0], backends, node, errors)
        else:
            found = _entries(svc, served, backends, node, errors)
        if found:
            asked += found
            keys_of[svc.info.ref] = tuple(map(_key_of, found))
    entries = _in_frontend_order(asked)
    if len(entries) != len(asked):  # some frontend asked for twice: claim them in turn
        entries, keys_of = _claim(_regroup(asked, keys_of), errors)
    return Translation(
        entries=entries,
        services={
            s.info.ref: _info(s, backends, node) if s.info.health_check_node_port else s.info
            for s in ordered
        },
        keys_of=keys_of,
        errors=tuple(sorted(set(errors), key=_error_order)),
    )


# A ServiceEntry's frontend key, and frontend_order's key of it, read in C: the
# address' version is a class attribute (its property is a Python call) and its
# number the int it holds.
_key_of = attrgetter("frontend.key")
_entry_order = attrgetter(
    "frontend.address._version", "frontend.address._ip", "frontend.port", "frontend.protocol"
)


def _in_frontend_order(entries: list[ServiceEntry]) -> dict[FrontendKey, ServiceEntry]:
    """``entries`` by frontend key, in frontend order; of two entries with one key, the
    later one (the caller checks that there are none: the dict is then shorter)."""
    ordered = sorted(entries, key=_entry_order)  # stable: as _claim sorts
    return dict(zip(map(_key_of, ordered), ordered, strict=True))


def _regroup(
    entries: list[ServiceEntry], keys_of: Mapping[ServiceRef, tuple[FrontendKey, ...]]
) -> Iterator[tuple[ServiceRef, list[ServiceEntry]]]:
    """Each Service's entries again, out of ``entries`` (all Services' in claim order)
    and the frontends each asked for (``keys_of``, in the same order)."""
    start = 0
    for ref, keys in keys_of.items():
        yield ref, entries[start : start + len(keys)]
        start += len(keys)


def claimed_error(ref: ServiceRef, fe: Frontend, owner: ServiceRef) -> ObjectError:
    """Service ``ref`` does not get frontend ``fe``: Service ``owner`` holds it."""
    return _error(
        "Service",
        ref,
        f"{fe.kind} frontend {fe} is already used by Service {owner}; skipped",
        claimed=(str(fe), owner),
    )


def _claim(
    entries_of: Iterable[tuple[ServiceRef, list[ServiceEntry]]], errors: list[ObjectError]
) -> tuple[dict[FrontendKey, ServiceEntry], dict[ServiceRef, tuple[FrontendKey, ...]]]:
    """Each frontend to the first Service (in the order given) that asks for it, the
    entries in frontend order, and the frontends each Service got (a tuple: a set per
    Service was ~230 B, at 100,000s of Services)."""
    claimed: dict[FrontendKey, ServiceEntry] = {}
    keys_of: dict[ServiceRef, tuple[FrontendKey, ...]] = {}
    for ref, entries in entries_of:
        got: list[FrontendKey] = []
        for entry in entries:
            key = entry.frontend.key
            owner = claimed.setdefault(key, entry)  # one hash of the key, not two
            if owner is not entry:
                errors.append(claimed_error(ref, entry.frontend, owner.port_name.service))
                continue
            got.append(key)
        if got:
            keys_of[ref] = tuple(got)
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


class _Node(NamedTuple):
    """What translation knows of this node."""

    name: str | None
    zone: str | None
    addresses: tuple[IPAddress, ...]  # NodePort addresses, both families, primary first
    families: frozenset[int]  # the IP versions this node serves
    of_family: Mapping[int, tuple[IPAddress, ...]]  # the addresses of each IP version


def _served(svc: _Service, node: _Node, errors: list[ObjectError]) -> tuple[IPAddress, ...]:
    """The Service's ClusterIPs of the families this node serves; says (once per
    Service) when a family it needs is missing."""
    if len(node.families) == 2:  # the common cases: both families, or not known
        return svc.addresses
    served = tuple(a for a in svc.addresses if a.version in node.families)
    if len(served) == len(svc.addresses):
        return served
    have = "/".join(f"IPv{v}" for v in sorted(node.families)) or "no address"
    lacking = "/".join(f"IPv{a.version}" for a in svc.addresses if a not in served)
    ref = svc.info.ref
    if not served:
        message = f"has no ClusterIP of a family this node serves ({have}); Service skipped"
        errors.append(_error("Service", ref, message))
    elif svc.require_dual_stack:  # PreferDualStack: serving one family is what it allows
        message = (
            f"ipFamilyPolicy RequireDualStack, but this node has no {lacking} address; "
            f"only {have} served, {lacking} skipped"
        )
        errors.append(_error("Service", ref, message))
    return served


def _entries(
    svc: _Service,
    served: tuple[IPAddress, ...],
    backends: _Backends,
    node: _Node,
    errors: list[ObjectError],
) -> list[ServiceEntry]:
    """One entry per frontend of every port and family of one Service, in a stable
    order; ``served`` are its ClusterIPs of the families this node serves."""
    entries: list[ServiceEntry] = []
    for cluster_ip in served:
        entries += _family_entries(svc, cluster_ip, backends, node, errors)
    return entries


def _family_entries(
    svc: _Service,
    cluster_ip: IPAddress,
    backends: _Backends,
    node: _Node,
    errors: list[ObjectError],
) -> list[ServiceEntry]:
    """The entries of one family of a Service (that of ``cluster_ip``), as kube-proxy's
    proxier of that family has them: its addresses, backends and source ranges only.

    Run once per Service and family at every full sync (100,000s of times), so the
    usual Service (ClusterIP only, Cluster policies, no topology) takes the shortest
    way through: no look at external or load-balancer IPs it has none of, nor at the
    Local policies it does not ask for, and no empty lists made; where the native
    module was built, the ClusterIP-only Service's entries are made in C."""
    ref = svc.info.ref
    version = cluster_ip.version
    if (
        _native_entries is not None
        and svc.info.type is ServiceType.CLUSTER_IP
        and not svc.external
        and not svc.load_balancer
        and svc.topology is Preference.NONE
        and not (node.name and (svc.internal_local or svc.external_local))
    ):
        return _native_entries(ref, cluster_ip, version, svc.ports, backends, svc.affinity_timeout)
    node_port_type = svc.info.type in _NODE_PORT_TYPES
    nodes = node.of_family[version]  # also what external clients are source-NATed to
    external = svc.external
    if external:
        external = _of_family(external, version)
    load_balancer = svc.load_balancer
    ranges: tuple[IPNetwork, ...] = ()
    if load_balancer:
        load_balancer = _of_family(load_balancer, version)
        if svc.source_ranges and load_balancer:
            ranges = tuple(r for r in svc.source_ranges if r.version == version)
            if not ranges:
                # kube-proxy keeps each family's own ranges and, finding none of this
                # family, leaves its load-balancer IPs open to every client of it. A list
                # of ranges means "only these clients": never admit more than asked, so
                # the load-balancer frontends of this family are skipped (refused)
                # instead.
                message = (
                    f"spec.loadBalancerSourceRanges has no IPv{version} range; its "
                    f"IPv{version} load-balancer addresses are skipped rather than open "
                    "to all"
                )
                errors.append(_error("Service", ref, message))
                load_balancer = ()
    # The Local policies and topology only where the Service asks for them.
    local = bool(node.name) and (svc.internal_local or svc.external_local)
    topology_wanted = svc.topology is not Preference.NONE
    affinity = svc.affinity_timeout
    namespace, name = ref.namespace, ref.name
    entries: list[ServiceEntry] = []
    for port in svc.ports:
        protocol = port.protocol
        port_name = ServicePortName(ref, port.name, protocol)
        known = backends.get((namespace, name, port.name, protocol, version))
        # (address, port) order
        every = tuple(map(known.__getitem__, sorted(known))) if known else ()
        # Topology narrows what the Cluster policies use, never the Local ones'.
        cluster = every
        if topology_wanted:
            cluster = topology.prefer(every, svc.topology, node_name=node.name, zone=node.zone)
        internal = outside = cluster
        # A Local policy that leaves a frontend empty while the Service has endpoints
        # elsewhere drops its traffic; a Service without any endpoint refuses it.
        # (Only a Local policy asks: the common Service skips the look at its backends.)
        elsewhere = False
        if local:
            mine = tuple(b for b in every if b.node == node.name)
            internal = mine if svc.internal_local else cluster
            outside = mine if svc.external_local else cluster
            elsewhere = bool(usable_backends(every))
        entries.append(
            ServiceEntry(
                Frontend(cluster_ip, port.port, protocol),
                port_name,
                internal,
                affinity,
                drop_when_empty=elsewhere and svc.internal_local,
            )
        )
        node_ports = node_port_type and port.node_port is not None
        if not node_ports and not external and not load_balancer:
            continue  # the usual Service: its ClusterIP frontend only
        frontends: list[tuple[IPAddress, int, FrontendKind]] = []
        if node_ports and port.node_port is not None:
            frontends += [(a, port.node_port, FrontendKind.NODE_PORT) for a in nodes]
        if external:
            frontends += [(a, port.port, FrontendKind.EXTERNAL) for a in external]
        if load_balancer:
            frontends += [(a, port.port, FrontendKind.LOAD_BALANCER) for a in load_balancer]
        for address, number, kind in frontends:
            entries.append(
                ServiceEntry(
                    Frontend(address, number, protocol, kind),
                    port_name,
                    outside,
                    affinity,
                    _snat_address(svc, kind, address, nodes),
                    ranges if kind is FrontendKind.LOAD_BALANCER else (),
                    elsewhere and svc.external_local,
                )
            )
    return entries


_NODE_PORT_TYPES = (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)

# A ClusterIP-only Service's entries made in C (ebpflb/_fullsync.c), where the module
# was built and the model's classes are what it makes: one ServiceEntry, Frontend and
# ServicePortName per port without their Python constructors, and the port's backends
# sorted in C (at 100,000 Services, ~2 us of each Service's translation in Python).
_native_entries: (
    Callable[[ServiceRef, IPAddress, int, tuple[Any, ...], _Backends, int], list[ServiceEntry]]
    | None
)
# And translate_dicts' loop itself, for the usual Services (ClusterIP only, as above, on
# a node that serves both families), up to each other Service: each entry appended and
# each Service's keys noted without a Python call per Service (~1.5 us each at
# 100,000 Services: 0.29 -> 0.14 s in-process).
_native_services: (
    Callable[[list[_Service], int, _Backends, bool, list[ServiceEntry], dict[ServiceRef, Any]], int]
    | None
)
try:
    from ebpflb import _fullsync

    _fullsync.bind_entries(
        Frontend, ServicePortName, ServiceEntry, ServiceRef, FrontendKind.CLUSTER_IP
    )
except (ImportError, TypeError):  # not built, or the model's classes changed shape
    _native_entries = _native_services = None
else:
    _native_entries = _fullsync.entries
    try:
        _fullsync.bind_services(
            _Service._fields,
            ServiceInfo,
            ServiceType.CLUSTER_IP,
            Preference.NONE,
            IPv4Address,
            IPv6Address,
        )
    except TypeError:  # a parsed Service without a field it reads: the loop in Python
        _native_services = None
    else:
        _native_services = _fullsync.services


def _of_family(addresses: tuple[IPAddress, ...], version: int) -> tuple[IPAddress, ...]:
    if not addresses or all(a.version == version for a in addresses):
        return addresses
    return tuple(a for a in addresses if a.version == version)


def _info(svc: _Service, backends: _Backends, node: _Node) -> ServiceInfo:
    """The Service's info; with a health check, its count of distinct ready endpoint
    addresses on this node over all its ports (what kube-proxy's health check reports),
    of the family that has the most (a dual-stack pod is one endpoint in each family)."""
    info = svc.info
    if not info.health_check_node_port or not node.name:
        return info
    ref = info.ref
    counts = [0]
    for address in svc.addresses:
        if address.version not in node.families:
            continue
        local: set[IPAddress] = set()
        for port in svc.ports:
            key = (ref.namespace, ref.name, port.name, port.protocol, address.version)
            known = backends.get(key, {})
            local.update(b.address for b in known.values() if b.ready and b.node == node.name)
        counts.append(len(local))
    return replace(info, local_endpoints=max(counts))


def _snat_address(
    svc: _Service, kind: FrontendKind, address: IPAddress, nodes: tuple[IPAddress, ...]
) -> IPAddress | None:
    """What external clients are source-NATed to: nothing under externalTrafficPolicy:
    Local (the client's address is kept); else the node address the NodePort was
    reached at, or the node's first address of the frontend's family (``nodes`` are
    of that family) for an external or load-balancer IP; None when it has none."""
    if svc.external_local:
        return None
    if kind is FrontendKind.NODE_PORT:
        return address
    return nodes[0] if nodes else None
