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
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple, TypeGuard

from ebpflb.errors import InvalidObjectError
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    IPNetwork,
    Protocol,
    ServiceEntry,
    ServiceInfo,
    ServicePortName,
    ServiceRef,
    ServiceType,
    frontend_order,
    usable_backends,
)
from ebpflb.sources import topology
from ebpflb.sources.topology import Preference

Obj = Mapping[str, Any]
_Report = Callable[[str], None]  # records an error about the object being parsed

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
DEFAULT_NAMESPACE = "default"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400  # seconds; the API server's upper bound


@dataclass(frozen=True, order=True)
class ObjectError:
    """One Kubernetes object (or a part of it) that could not be translated."""

    kind: str  # "Service", "EndpointSlice", "Node"
    namespace: str  # "" for cluster-scoped objects
    name: str  # "" when metadata.name itself is missing
    message: str  # what is wrong and what was skipped

    @property
    def object(self) -> str:
        name = self.name or "<unnamed>"
        return f"{self.namespace}/{name}" if self.namespace else name

    def __str__(self) -> str:
        return f"{self.kind} {self.object}: {self.message}"

    def exception(self) -> InvalidObjectError:
        return InvalidObjectError(str(self))


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
    t = translate_dicts(services, slices, node_name=node_name, node_zone=node_zone,
                        node_addresses=node_addresses)
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
        ((s.info.ref, _entries(s, backends, node_name, node_zone, nodes))
         for s in ordered), errors)
    return Translation(
        entries=entries,
        services={s.info.ref: _info(s, backends, node_name) for s in ordered},
        keys_of=keys_of,
        errors=tuple(sorted(set(errors), key=_error_order)),
    )


def _parse_services(services: Iterable[Obj], errors: list[ObjectError]
                    ) -> dict[tuple[str, str], _Service]:
    """Every good Service by (namespace, name): plain tuples hash and sort in C."""
    parsed: dict[tuple[str, str], _Service] = {}
    for obj in services:
        svc = _parse_service(obj, errors)
        if svc is None:
            continue
        ref = svc.info.ref
        name = (ref.namespace, ref.name)
        if name in parsed:
            errors.append(_error("Service", ref, "defined more than once; copy skipped"))
            continue
        parsed[name] = svc
    return parsed


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
                msg = (f"{fe.kind} frontend {fe} is already used by Service "
                       f"{owner.port_name.service}; skipped")
                errors.append(_error("Service", ref, msg))
                continue
            claimed[key] = entry
            keys_of.setdefault(ref, set()).add(key)
    in_order = sorted(claimed.items(), key=lambda item: frontend_order(item[1].frontend))
    return dict(in_order), keys_of  # the key tuples shared with keys_of, not copies


def node_addresses(nodes: Iterable[Obj], node_name: str, *,
                   types: Collection[str] = ("InternalIP", "ExternalIP")
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


# --- Services --------------------------------------------------------------------------


class _Invalid(Exception):
    """A field is wrong; caught at the level (object, port, endpoint) that is skipped."""


class _Port(NamedTuple):  # private records: a NamedTuple is cheaper to make
    name: str  # "" for the unnamed single port
    protocol: Protocol
    port: int
    target: int | str  # validated only: the slices carry the resolved pod port
    node_port: int | None


class _Service(NamedTuple):
    info: ServiceInfo
    address: ipaddress.IPv4Address | None  # None: not load-balanced (headless, ExternalName)
    ports: tuple[_Port, ...] = ()
    external: tuple[IPAddress, ...] = ()
    load_balancer: tuple[IPAddress, ...] = ()
    affinity_timeout: int = 0
    external_local: bool = False
    internal_local: bool = False
    source_ranges: tuple[ipaddress.IPv4Network, ...] = ()
    topology: Preference = Preference.NONE  # which topology hints to follow


def _parse_service(obj: Obj, errors: list[ObjectError]) -> _Service | None:
    namespace, name = _identity(obj)
    ref = ServiceRef(namespace, name)
    try:
        if not name:
            raise _Invalid("metadata.name is missing")
        meta = _mapping(obj.get("metadata"), "metadata")
        labels = _mapping(meta.get("labels"), "labels")
        if labels.get(SERVICE_PROXY_NAME_LABEL):
            return None
        spec = obj.get("spec")
        if not _is_mapping(spec):
            raise _Invalid("spec is missing")
        svc_type = _service_type(spec.get("type"))
        if svc_type is ServiceType.EXTERNAL_NAME:
            external_name = _string(spec.get("externalName"), "spec.externalName") or None
            return _Service(ServiceInfo(ref, svc_type, None, external_name), None)
        raw_ip, address = _cluster_ip(spec)
        info = ServiceInfo(ref, svc_type, raw_ip)
        if address is None:
            return _Service(info, None)
        affinity = _affinity_timeout(spec)
        external_local = _policy(spec, "externalTrafficPolicy")
        internal_local = _policy(spec, "internalTrafficPolicy")
        items = _list(spec.get("ports"), "spec.ports")
    except _Invalid as e:
        errors.append(_error("Service", ref, f"{e}; Service skipped"))
        return None

    def report(message: str) -> None:
        errors.append(_error("Service", ref, message))

    lb_ips: tuple[IPAddress, ...] = ()
    ranges: tuple[ipaddress.IPv4Network, ...] = ()
    if svc_type is ServiceType.LOAD_BALANCER:
        lb_ips = _ingress_ips(spec, obj.get("status"), report)
        try:
            ranges = _source_ranges(spec.get("loadBalancerSourceRanges"))
        except _Invalid as e:  # never admit more than the user asked: no LB frontends
            report(f"{e}; load-balancer addresses skipped")
            lb_ips = ()
        if external_local:
            info = _with_health_check(info, spec, report)
    wanted = Preference.NONE
    annotations = meta.get("annotations")
    if "trafficDistribution" in spec or annotations:
        wanted, problem = topology.preference(
            spec, annotations if _is_mapping(annotations) else None)
        if problem:
            report(problem)
    return _Service(  # positionally: keywords make a NamedTuple ~1.7x as costly
        info,
        address,
        _service_ports(items, report),
        _addresses(spec.get("externalIPs"), "spec.externalIPs", report),
        lb_ips,
        affinity,
        external_local,
        internal_local,
        ranges,
        wanted,
    )


def _with_health_check(info: ServiceInfo, spec: Obj, report: _Report) -> ServiceInfo:
    """``info`` with the Service's healthCheckNodePort (the API server allocates it; a
    manifest may leave it out)."""
    value = spec.get("healthCheckNodePort")
    if value is None:
        return info
    try:
        port = _port_number(value, "spec.healthCheckNodePort")
    except _Invalid as e:
        report(f"{e}; health check skipped")
        return info
    return ServiceInfo(info.ref, info.type, info.cluster_ip, info.external_name, port)


_SERVICE_TYPES = {t.value: t for t in ServiceType}  # a dict look-up: see _PROTOCOLS


def _service_type(value: Any) -> ServiceType:
    if value is None:
        return ServiceType.CLUSTER_IP
    found = _SERVICE_TYPES.get(value) if isinstance(value, str) else None
    if found is None:
        raise _Invalid(f"spec.type {value!r} is unknown")
    return found


def _cluster_ip(spec: Obj) -> tuple[str, ipaddress.IPv4Address | None]:
    """The ClusterIP as written (``"None"`` when headless) and the IPv4 one to balance
    (of a dual-stack Service, its IPv4 address whichever family is primary)."""
    raw = [_string(spec.get("clusterIP"), "spec.clusterIP")]
    more = spec.get("clusterIPs")
    if more is not None:
        raw += [_string(v, "spec.clusterIPs") for v in _list(more, "spec.clusterIPs")]
    raw = [v for v in raw if v]
    if not raw:
        raise _Invalid("spec.clusterIP is missing (the API server allocates it; set it here)")
    if raw[0] == "None":
        return "None", None
    for value in dict.fromkeys(raw):
        address = _ip(value)
        if address is None:
            raise _Invalid(f"spec.clusterIP {value!r} is not an IP address")
        if isinstance(address, ipaddress.IPv4Address):
            return value, address
    raise _Invalid(f"spec.clusterIP {raw[0]} is IPv6; this node is IPv4-only")


def _affinity_timeout(spec: Obj) -> int:
    affinity = spec.get("sessionAffinity")
    if affinity in (None, "None"):
        return 0
    if affinity != "ClientIP":
        raise _Invalid(f"spec.sessionAffinity {affinity!r} is not None or ClientIP")
    config = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    client = _mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    timeout = client.get("timeoutSeconds")
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    if not _is_int(timeout) or not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
        raise _Invalid(f"timeoutSeconds {timeout!r} is not in 1-{MAX_AFFINITY_TIMEOUT}")
    return int(timeout)


def _policy(spec: Obj, field: str) -> bool:
    """Whether a traffic policy field says Local."""
    value = spec.get(field)
    if value not in (None, "Cluster", "Local"):
        raise _Invalid(f"spec.{field} {value!r} is not Cluster or Local")
    return value == "Local"


def _service_ports(items: list[Any], report: _Report) -> tuple[_Port, ...]:
    ports: list[_Port] = []
    for i, item in enumerate(items):
        try:
            port = _service_port(item, multi=len(items) > 1)
            for other in ports:
                _check_distinct(port, other)
        except _Invalid as e:
            report(f"spec.ports[{i}]: {e}; port skipped")
            continue
        ports.append(port)
    return tuple(ports)


def _service_port(item: Any, *, multi: bool) -> _Port:
    item = _mapping(item, "port")
    name = _string(item.get("name"), "name")
    if multi and not name:
        raise _Invalid("name is missing (required when a Service has several ports)")
    port = _port_number(item.get("port"), "port")
    target = item.get("targetPort")
    if target is None:
        target = port
    elif isinstance(target, str) and not target.isdigit():
        if not target:
            raise _Invalid("targetPort is empty")
    else:
        target = _port_number(int(target) if isinstance(target, str) else target, "targetPort")
    node_port = item.get("nodePort")
    if node_port is not None:
        node_port = _port_number(node_port, "nodePort")
    return _Port(name, _protocol(item.get("protocol")), port, target, node_port)


def _check_distinct(port: _Port, other: _Port) -> None:
    if (port.port, port.protocol) == (other.port, other.protocol):
        raise _Invalid(f"{port.port}/{port.protocol} is already used by port {other.name!r}")
    if port.name == other.name:
        raise _Invalid(f"name {port.name!r} is already used")
    if port.node_port is not None and (port.node_port, port.protocol) == (
        other.node_port,
        other.protocol,
    ):
        raise _Invalid(f"nodePort {port.node_port}/{port.protocol} is already used")


def _source_ranges(values: Any) -> tuple[ipaddress.IPv4Network, ...]:
    """spec.loadBalancerSourceRanges as IPv4 networks (host bits set are an error, as
    the API server says). IPv6 ranges cannot match on this IPv4 node; a list of only
    IPv6 ranges admits no IPv4 client, so it is refused rather than read as "all"."""
    if values is None:
        return ()
    found: list[IPNetwork] = []
    items = _list(values, "spec.loadBalancerSourceRanges")
    for value in items:
        try:
            found.append(ipaddress.ip_network(_string(value, "a source range").strip()))
        except ValueError:
            raise _Invalid(
                f"spec.loadBalancerSourceRanges: {value!r} is not a CIDR") from None
    v4 = tuple(sorted({n for n in found if isinstance(n, ipaddress.IPv4Network)}))
    if found and not v4:
        raise _Invalid("spec.loadBalancerSourceRanges has no IPv4 range (this node is IPv4-only)")
    return v4


def _ingress_ips(spec: Obj, status: Any, report: _Report) -> tuple[IPAddress, ...]:
    try:
        lb = _mapping(_mapping(status, "status").get("loadBalancer"), "status.loadBalancer")
        items = _list(lb.get("ingress"), "status.loadBalancer.ingress")
    except _Invalid as e:
        report(f"{e}; load-balancer addresses skipped")
        return ()
    values = [
        item.get("ip")
        for item in items
        if isinstance(item, Mapping) and item.get("ip") and item.get("ipMode") != "Proxy"
    ]
    return _addresses(values, "status.loadBalancer.ingress", report)


def _addresses(values: Any, where: str, report: _Report) -> tuple[IPAddress, ...]:
    """The IPv4 addresses in a list; malformed ones are reported and skipped."""
    if values is None:  # the common case
        return ()
    try:
        items = _list(values, where)
    except _Invalid as e:
        report(f"{e}; skipped")
        return ()
    found: list[IPAddress] = []
    for value in items:
        address = _ip(value)
        if address is None:
            report(f"{where}: {value!r} is not an IP address; address skipped")
            continue
        if address.version == 4:
            found.append(address)
    return tuple(dict.fromkeys(found))


# --- EndpointSlices --------------------------------------------------------------------

# A ServicePortName as a plain tuple (namespace, Service name, port name, protocol),
# which hashes in C, unlike the dataclass.
_PortKey = tuple[str, str, str, Protocol]
# Backends of one Service port, by (IPv4 address as an int, port): an int hashes and
# sorts far faster than an IPv4Address, and orders the same way.
_Known = dict[tuple[int, int], Backend]
_Backends = dict[_PortKey, _Known]
# One endpoint before its port is known: address (as int and object), ready, serving,
# terminating, node, zone, hinted zones, hinted nodes.
_Endpoint = tuple[int, ipaddress.IPv4Address, bool, bool, bool, str | None, str | None,
                  tuple[str, ...], tuple[str, ...]]


def _collect_backends(slices: Iterable[Obj], errors: list[ObjectError]) -> _Backends:
    """Every slice's backends, merged per Service port and deduplicated by (address,
    port), the ready copy winning. Slices are read in (namespace, name) order."""
    found: _Backends = {}
    for identity, obj in sorted(((_identity(obj), obj) for obj in slices), key=itemgetter(0)):
        for key, backends in _parse_slice(obj, identity, errors):
            known = found.get(key)
            if known is None:
                found[key] = backends
            else:
                _merge(known, backends.items())
    return found


def _merge(known: _Known, backends: Iterable[tuple[tuple[int, int], Backend]]) -> None:
    """Add `backends` to `known`; of two copies of one (address, port), the better
    ranked wins, the earlier on a tie."""
    for bkey, backend in backends:
        old = known.get(bkey)
        if old is None or _rank(backend) > _rank(old):
            known[bkey] = backend


def _rank(b: Backend) -> tuple[bool, bool, bool]:
    return (b.ready, b.serving, not b.terminating)


def _parse_slice(obj: Obj, identity: tuple[str, str], errors: list[ObjectError]
                 ) -> list[tuple[_PortKey, _Known]]:
    """The backends of each of a slice's ports; `identity` is _identity(obj)."""
    namespace, name = identity

    def report(message: str) -> None:
        errors.append(ObjectError("EndpointSlice", namespace, name, message))

    try:
        if not name:
            raise _Invalid("metadata.name is missing")
        labels = _mapping(_mapping(obj.get("metadata"), "metadata").get("labels"), "labels")
        service = labels.get(SERVICE_NAME_LABEL)
        if not service or not isinstance(service, str):
            raise _Invalid(f"label {SERVICE_NAME_LABEL} is missing")
        address_type = obj.get("addressType")
        if address_type in ("IPv6", "FQDN"):
            return []
        if address_type != "IPv4":
            raise _Invalid(f"addressType {address_type!r} is not IPv4, IPv6 or FQDN")
        port_items = _list(obj.get("ports"), "ports")
        endpoint_items = _list(obj.get("endpoints"), "endpoints")
    except _Invalid as e:
        report(f"{e}; EndpointSlice skipped")
        return []

    ports: list[tuple[str, Protocol, int]] = []
    for i, item in enumerate(port_items):
        try:
            item = _mapping(item, "port")
            port = _port_number(item.get("port"), "port")
            ports.append((_string(item.get("name"), "name"), _protocol(item.get("protocol")), port))
        except _Invalid as e:
            report(f"ports[{i}]: {e}; slice port skipped")
    endpoints: list[_Endpoint] = []
    for i, item in enumerate(endpoint_items):
        try:
            endpoints.append(_endpoint(item))
        except _Invalid as e:
            report(f"endpoints[{i}]: {e}; endpoint skipped")
    out: list[tuple[_PortKey, _Known]] = []
    for port_name, protocol, port in ports:
        known: _Known = {}
        _merge(known, (((n, port), Backend(a, port, r, s, t, node, zone, hz, hn))
                       for n, a, r, s, t, node, zone, hz, hn in endpoints))
        out.append(((namespace, service, port_name, protocol), known))
    return out


def _endpoint(item: Any) -> _Endpoint:
    """One endpoint's first address and conditions."""
    item = _mapping(item, "endpoint")
    addresses = _list(item.get("addresses"), "addresses")
    if not addresses:
        raise _Invalid("addresses is empty")
    number = _ipv4_int(addresses[0])
    if number is None:
        address = _ip(addresses[0])
        if address is None:
            raise _Invalid(f"address {addresses[0]!r} is not an IP address")
        if address.version != 4:
            raise _Invalid(f"address {address} is not IPv4 (the slice's addressType)")
        number = int(address)
    conditions = _mapping(item.get("conditions"), "conditions")
    ready = _flag(conditions.get("ready"), "ready", default=True)
    serving = _flag(conditions.get("serving"), "serving", default=ready)
    terminating = _flag(conditions.get("terminating"), "terminating", default=False)
    node = _string(item.get("nodeName"), "nodeName") or None
    zone = _string(item.get("zone"), "zone") or None
    hints = item.get("hints")
    for_zones, for_nodes = _hints(hints) if hints is not None else _NO_HINTS
    return (number, ipaddress.IPv4Address(number), ready, serving, terminating, node, zone,
            for_zones, for_nodes)


_NO_HINTS: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
_hint_names: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared: few distinct lists


def _hints(value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """hints.forZones and hints.forNodes as tuples of names."""
    hints = _mapping(value, "hints")
    return _hint_list(hints, "forZones"), _hint_list(hints, "forNodes")


def _hint_list(hints: Obj, field: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in _list(hints.get(field), f"hints.{field}"):
        name = _mapping(item, f"hints.{field}[]").get("name")
        if not isinstance(name, str) or not name:
            raise _Invalid(f"hints.{field}: {item!r} has no name")
        names.append(name)
    found = tuple(dict.fromkeys(names))
    return _hint_names.setdefault(found, found)


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
            cluster = topology.prefer(every, svc.topology, node_name=node_name,
                                      zone=node_zone)
        internal = external = cluster
        if node_name and (svc.internal_local or svc.external_local):
            local = tuple(b for b in every if b.node == node_name)
            internal = local if svc.internal_local else cluster
            external = local if svc.external_local else cluster
        # A Local policy that leaves a frontend empty while the Service has endpoints
        # elsewhere drops its traffic; a Service without any endpoint refuses it.
        elsewhere = bool(node_name) and bool(usable_backends(every))
        entries.append(ServiceEntry(Frontend(svc.address, port.port, port.protocol),
                                    name, internal, svc.affinity_timeout,
                                    drop_when_empty=elsewhere and svc.internal_local))
        frontends: list[tuple[IPAddress, int, FrontendKind]] = []
        if node_port_type and port.node_port is not None:
            frontends += [(a, port.node_port, FrontendKind.NODE_PORT) for a in nodes]
        if svc.external:  # the common case has none: no empty comprehensions
            frontends += [(a, port.port, FrontendKind.EXTERNAL) for a in svc.external]
        if svc.load_balancer:
            frontends += [(a, port.port, FrontendKind.LOAD_BALANCER) for a in svc.load_balancer]
        for address, number, kind in frontends:
            entries.append(ServiceEntry(
                Frontend(address, number, port.protocol, kind), name, external,
                svc.affinity_timeout, _snat_address(svc, kind, address, nodes),
                svc.source_ranges if kind is FrontendKind.LOAD_BALANCER else (),
                elsewhere and svc.external_local))
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


def _snat_address(svc: _Service, kind: FrontendKind, address: IPAddress,
                  nodes: tuple[IPAddress, ...]) -> ipaddress.IPv4Address | None:
    """What external clients are source-NATed to: nothing under externalTrafficPolicy:
    Local (the client's address is kept); else the node address the NodePort was
    reached at, or the node's first address for an external or load-balancer IP."""
    if svc.external_local:
        return None
    chosen = address if kind is FrontendKind.NODE_PORT else (nodes[0] if nodes else None)
    return chosen if isinstance(chosen, ipaddress.IPv4Address) else None


# --- Field helpers -----------------------------------------------------------------------


def _error_order(e: ObjectError) -> tuple[str, str, str, str]:
    """ObjectError's own order, as a key."""
    return (e.kind, e.namespace, e.name, e.message)


def _error(kind: str, ref: ServiceRef, message: str) -> ObjectError:
    return ObjectError(kind, ref.namespace, ref.name, message)


def _identity(obj: Obj) -> tuple[str, str]:
    """(namespace, name) as well as can be told; "" for a missing name."""
    meta = obj.get("metadata") if _is_mapping(obj) else None
    if not _is_mapping(meta):
        return DEFAULT_NAMESPACE, ""
    namespace = meta.get("namespace")
    name = meta.get("name")
    return (
        namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE,
        name if isinstance(name, str) else "",
    )


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # A dict is the common case, told without the slower ABC check.
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case, without the slower ABC check
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"{where} is not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(f"{where} is not a list")
    return value


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{where} {value!r} is not a string")
    return value


def _ip(value: Any) -> IPAddress | None:
    """An IP address written as a string (a YAML number is not one), or None."""
    number = _ipv4_int(value)
    if number is not None:
        return ipaddress.IPv4Address(number)
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _ipv4_int(value: Any) -> int | None:
    """A dotted-quad IPv4 address as an int, or None. The common case, parsed by the C
    library ~20x faster than ipaddress' own parser, with the same strictness."""
    if not isinstance(value, str):
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_number(value: Any, where: str) -> int:
    if value is None:
        raise _Invalid(f"{where} is missing")
    if not _is_int(value):
        raise _Invalid(f"{where} {value!r} is not a number")
    if not 1 <= value <= 65535:
        raise _Invalid(f"{where} {value} is out of range 1-65535")
    return int(value)


_PROTOCOLS = {p.value: p for p in Protocol}  # a dict look-up is ~10x Protocol(value)


def _protocol(value: Any) -> Protocol:
    if value is None:
        return Protocol.TCP
    found = _PROTOCOLS.get(value) if isinstance(value, str) else None
    if found is None:
        raise _Invalid(f"protocol {value!r} is not TCP, UDP or SCTP")
    return found


def _flag(value: Any, where: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Invalid(f"conditions.{where} {value!r} is not true or false")
    return value
