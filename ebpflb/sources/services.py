"""Service objects -> ``_Service`` records: the Service's info, ClusterIPs, ports,
external and load-balancer addresses and policies, each field checked (what a bad
field costs is listed in ``translate``'s docstring). Pure; joined with the backends
by ``translate``.

IP families are read as the API server writes and checks them: ``spec.clusterIPs``
holds at most one address per family, the primary family's first, and equals
``spec.clusterIP`` in its first entry; ``spec.ipFamilies`` (when given) names the
family of each of them in the same order; ``spec.ipFamilyPolicy`` is ``SingleStack``
(one address), ``PreferDualStack`` or ``RequireDualStack``, and when it is missing it
is inferred as the API server does (``RequireDualStack`` when two addresses or two
families are given, else ``SingleStack``). A Service breaking any of these is skipped
whole, as the API server would have refused it. External, load-balancer and source
range addresses are kept of both families here; ``translate`` keeps those of each
family the Service and the node serve. Nothing here depends on the node, so that the
last-good check (``lastgood``) never holds an edit back for the node's sake.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from ebpflb.model import IPAddress, IPNetwork, Protocol, ServiceInfo, ServiceRef, ServiceType
from ebpflb.sources import topology
from ebpflb.sources.fields import (
    CompactMeta,
    CompactObject,
    Obj,
    ObjectError,
    _error,
    _identity,
    _Invalid,
    _ip,
    _ipv4_int,
    _is_int,
    _is_mapping,
    _list,
    _mapping,
    _port_number,
    _protocol,
    _Report,
    _string,
)
from ebpflb.sources.topology import Preference

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400  # seconds; the API server's upper bound


class ServiceShape:
    """What Services of one shape share (see ``CompactService``): the keys of their
    spec in order, and its values but the ClusterIPs; whether their metadata has
    labels; their status. ``compact`` makes one per shape met and shares it."""

    __slots__ = ("cluster_ips", "keys", "labels", "single", "status", "values")

    def __init__(
        self,
        keys: tuple[str, ...],
        values: tuple[Any, ...],
        *,
        cluster_ips: bool,
        labels: str | None,
        status: Any,
    ) -> None:
        self.keys = keys  # the spec's keys, in order
        self.values = values  # the spec's values; None for clusterIP and clusterIPs
        self.cluster_ips = cluster_ips  # whether spec.clusterIPs is [spec.clusterIP]
        # whether spec.clusterIP is all there is of the ClusterIPs and families (the
        # single-stack shape _cluster_ips reads fast)
        self.single = not {"clusterIPs", "ipFamilies", "ipFamilyPolicy"} & set(keys)
        self.labels = labels  # metadata.labels: absent when None, {} when ""
        self.status = status  # _NO_STATUS: absent

    def same(self, other: ServiceShape) -> bool:
        return (
            self.keys == other.keys
            and self.cluster_ips == other.cluster_ips
            and self.labels == other.labels
            and self.values == other.values
            and (self.status is other.status or self.status == other.status)
        )


_NO_STATUS: Any = object()
_MISSING: Any = object()
_inet_ntoa = socket.inet_ntoa
_NO_META: Obj = {}  # a CompactService's, as _parse_service reads it; never filled
_SERVICE_KEYS = ("kind", "apiVersion", "metadata", "spec")


class CompactService(CompactObject):
    """A Service as the Kubernetes source keeps it when it is of the usual shape: the
    usual kind and apiVersion, metadata of a name and a namespace (no label kept, no
    annotation), a ClusterIP in ``spec.clusterIP`` (and ``spec.clusterIPs`` empty or
    just that one) and no other spec field of its own (no external IPs, no external
    name, no health check port), so that the rest (type, ports, policies, families,
    status) is one ``ServiceShape`` shared with every Service of the same shape. 64 B,
    its name and its address (an int when a dotted quad), where the dicts were ~430 B.
    It reads as the dict it was made from (``spec``, made on each access, is a plain
    dict); every other Service stays a dict, so that translation reads it (and reports
    what is wrong with it) as before."""

    __slots__ = ("cluster_ip", "shape")

    KIND = "Service"
    API_VERSION = "v1"

    def __init__(
        self, name: str, namespace: str, cluster_ip: str | int, shape: ServiceShape
    ) -> None:
        self.name = name
        self.namespace = namespace
        # spec.clusterIP: an int when a dotted quad (an int is half a string's size),
        # else as written; so one address is always held in the same form
        self.cluster_ip = cluster_ip
        self.shape = shape

    @property
    def cluster_ip_text(self) -> str:
        """spec.clusterIP as written."""
        ip = self.cluster_ip
        return ip if type(ip) is str else _inet_ntoa(ip.to_bytes(4))  # type: ignore[union-attr]

    @property
    def metadata(self) -> CompactMeta:
        return CompactMeta(self.name, self.namespace, None, self.shape.labels)

    @property
    def spec(self) -> dict[str, Any]:
        shape = self.shape
        spec = dict(zip(shape.keys, shape.values, strict=True))
        spec["clusterIP"] = ip = self.cluster_ip_text  # in its place: the key is there
        if shape.cluster_ips:
            spec["clusterIPs"] = [ip]
        return spec

    def get(self, key: str, default: Any = None) -> Any:
        if key == "metadata":
            return self.metadata
        if key == "spec":
            return self.spec
        if key == "kind":
            return self.KIND
        if key == "apiVersion":
            return self.API_VERSION
        if key == "status" and self.shape.status is not _NO_STATUS:
            return self.shape.status
        return default

    def __getitem__(self, key: str) -> Any:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return key in _SERVICE_KEYS or (key == "status" and self.shape.status is not _NO_STATUS)

    def __iter__(self) -> Iterator[str]:
        yield from _SERVICE_KEYS
        if self.shape.status is not _NO_STATUS:
            yield "status"

    def __len__(self) -> int:
        return 4 if self.shape.status is _NO_STATUS else 5

    def __eq__(self, other: object) -> bool:
        if type(other) is CompactService:  # a relist compares each Service: without dicts
            return (
                self.name == other.name
                and self.namespace == other.namespace
                and self.cluster_ip == other.cluster_ip
                and (self.shape is other.shape or self.shape.same(other.shape))
            )
        return super().__eq__(other)


def _parse_services(
    services: Iterable[Obj], errors: list[ObjectError]
) -> dict[tuple[str, str], _Service]:
    """Every good Service by (namespace, name): plain tuples hash and sort in C."""
    parsed: dict[tuple[str, str], _Service] = {}
    ports_cache: _PortsCache = {}
    for obj in services:
        svc = _parse_service(obj, errors, ports_cache)
        if svc is None:
            continue
        ref = svc.info.ref
        name = (ref.namespace, ref.name)
        if name in parsed:
            errors.append(_error("Service", ref, "defined more than once; copy skipped"))
            continue
        parsed[name] = svc
    return parsed


class _Port(NamedTuple):  # private records: a NamedTuple is cheaper to make
    name: str  # "" for the unnamed single port
    protocol: Protocol
    port: int
    target: int | str  # validated only: the slices carry the resolved pod port
    node_port: int | None


class _Service(NamedTuple):
    info: ServiceInfo
    # The ClusterIPs, primary family first, one per family; (): not load-balanced
    # (headless, ExternalName).
    addresses: tuple[IPAddress, ...]
    ports: tuple[_Port, ...] = ()
    external: tuple[IPAddress, ...] = ()  # of both families
    load_balancer: tuple[IPAddress, ...] = ()  # of both families
    affinity_timeout: int = 0
    external_local: bool = False
    internal_local: bool = False
    source_ranges: tuple[IPNetwork, ...] = ()  # of both families, IPv4 first
    topology: Preference = Preference.NONE  # which topology hints to follow
    require_dual_stack: bool = False  # ipFamilyPolicy: RequireDualStack (said or inferred)


# Parsed ports (and the messages on those skipped) by the identity of a ports list,
# which ``compact`` shares between Services; each entry keeps its list alive, so that
# its id is not reused while the cache lives.
_PortsCache = dict[int, tuple[Any, tuple[_Port, ...], list[str]]]


def _parse_service(
    obj: Obj, errors: list[ObjectError], ports_cache: _PortsCache | None = None
) -> _Service | None:
    meta: Obj = _NO_META
    spec: Any = None
    compacted = type(obj) is CompactService
    if type(obj) is CompactService:  # a name, no label, no annotation: read its slots
        ref = ServiceRef(obj.namespace, obj.name)
        spec = obj.spec
    else:
        namespace, name = _identity(obj)
        ref = ServiceRef(namespace, name)
    try:
        if not compacted:
            if not ref.name:
                raise _Invalid("metadata.name is missing")
            meta = _mapping(obj.get("metadata"), "metadata")
            if type(meta) is CompactMeta:  # without making its labels dict
                if meta.label == SERVICE_PROXY_NAME_LABEL and meta.value:
                    return None
            elif _mapping(meta.get("labels"), "labels").get(SERVICE_PROXY_NAME_LABEL):
                return None
            spec = obj.get("spec")
        if not _is_mapping(spec):
            raise _Invalid("spec is missing")
        svc_type = _service_type(spec.get("type"))
        if svc_type is ServiceType.EXTERNAL_NAME:
            external_name = _string(spec.get("externalName"), "spec.externalName") or None
            return _Service(ServiceInfo(ref, svc_type, None, external_name), ())
        raw, addresses, require_dual = _cluster_ips_of(obj, spec)
        info = ServiceInfo(ref, svc_type, raw[0], cluster_ips=raw)
        if not addresses:
            return _Service(info, ())
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
    ranges: tuple[IPNetwork, ...] = ()
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
            spec, annotations if _is_mapping(annotations) else None
        )
        if problem:
            report(problem)
    if ports_cache is None:
        ports = _service_ports(items, report)
    else:
        held = ports_cache.get(id(items))
        if held is None:
            messages: list[str] = []
            held = ports_cache[id(items)] = (
                items,
                _service_ports(items, messages.append),
                messages,
            )
        ports = held[1]
        for message in held[2]:
            report(message)
    return _Service(  # positionally: keywords make a NamedTuple ~1.7x as costly
        info,
        addresses,
        ports,
        _addresses(spec.get("externalIPs"), "spec.externalIPs", report),
        lb_ips,
        affinity,
        external_local,
        internal_local,
        ranges,
        wanted,
        require_dual,
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
    return ServiceInfo(
        info.ref, info.type, info.cluster_ip, info.external_name, port, 0, info.cluster_ips
    )


_SERVICE_TYPES = {t.value: t for t in ServiceType}  # a dict look-up: see _PROTOCOLS


def _service_type(value: Any) -> ServiceType:
    if value is None:
        return ServiceType.CLUSTER_IP
    found = _SERVICE_TYPES.get(value) if isinstance(value, str) else None
    if found is None:
        raise _Invalid(f"spec.type {value!r} is unknown")
    return found


_FAMILIES = {"IPv4": 4, "IPv6": 6}
_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


def _cluster_ips_of(obj: Obj, spec: Obj) -> tuple[tuple[str, ...], tuple[IPAddress, ...], bool]:
    """``_cluster_ips(spec)`` of ``obj``, whose spec is ``spec``: for a CompactService
    of one dotted-quad ClusterIP, what it finds, without parsing the address back."""
    if type(obj) is CompactService and obj.shape.single and type(obj.cluster_ip) is int:
        return (spec["clusterIP"],), (ipaddress.IPv4Address(obj.cluster_ip),), False
    return _cluster_ips(spec)


def _cluster_ips(spec: Obj) -> tuple[tuple[str, ...], tuple[IPAddress, ...], bool]:
    """The ClusterIPs as written (``("None",)`` when headless), as addresses (primary
    first; () when headless), and whether the Service requires both families (see the
    module docstring for the rules checked)."""
    first = _string(spec.get("clusterIP"), "spec.clusterIP")
    more = spec.get("clusterIPs")
    if more is None and "ipFamilies" not in spec and "ipFamilyPolicy" not in spec:
        # The common single-stack shape, fast: what the checks below find for it.
        number = _ipv4_int(first)
        if number is not None:
            return (first,), (ipaddress.IPv4Address(number),), False
    listed = [_string(v, "spec.clusterIPs") for v in _list(more, "spec.clusterIPs")]
    if first and listed and listed[0] != first:
        raise _Invalid(f"spec.clusterIP {first} is not spec.clusterIPs[0] {listed[0]}")
    raw = tuple(listed) if listed else ((first,) if first else ())
    if not raw or not all(raw):
        raise _Invalid("spec.clusterIP is missing (the API server allocates it; set it here)")
    if raw[0] == "None":
        if len(raw) > 1:
            raise _Invalid(f"spec.clusterIPs {list(raw)} holds more than None (headless)")
        return raw, (), False
    if len(raw) > 2:
        raise _Invalid(f"spec.clusterIPs has {len(raw)} addresses (at most one per family)")
    addresses: list[IPAddress] = []
    for value in raw:
        address = _ip(value)
        if address is None:
            field = "spec.clusterIP" if len(raw) == 1 else "spec.clusterIPs"
            raise _Invalid(f"{field} {value!r} is not an IP address")
        if addresses and addresses[0].version == address.version:
            raise _Invalid(
                f"spec.clusterIPs has two IPv{address.version} addresses (at most one per family)"
            )
        addresses.append(address)
    families = _ip_families(spec.get("ipFamilies"))
    for i, address in enumerate(addresses):
        if families and (i >= len(families) or families[i] != address.version):
            raise _Invalid(
                f"spec.clusterIPs[{i}] {address} is not of spec.ipFamilies[{i}] "
                f"(ipFamilies {spec.get('ipFamilies')!r})"
            )
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in _POLICIES:
        raise _Invalid(f"spec.ipFamilyPolicy {policy!r} is not one of {', '.join(_POLICIES)}")
    dual = len(addresses) == 2 or len(families) == 2
    if policy is None:  # as the API server infers it
        policy = "RequireDualStack" if dual else "SingleStack"
    if policy == "SingleStack" and dual:
        raise _Invalid("spec.ipFamilyPolicy is SingleStack but two families are given")
    return raw, tuple(addresses), policy == "RequireDualStack"


def _ip_families(value: Any) -> tuple[int, ...]:
    """spec.ipFamilies as IP versions, in order; () when not given."""
    found: list[int] = []
    for item in _list(value, "spec.ipFamilies"):
        version = _FAMILIES.get(item) if isinstance(item, str) else None
        if version is None:
            raise _Invalid(f"spec.ipFamilies: {item!r} is not IPv4 or IPv6")
        if version in found:
            raise _Invalid(f"spec.ipFamilies names {item} twice")
        found.append(version)
    return tuple(found)


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


def _source_ranges(values: Any) -> tuple[IPNetwork, ...]:
    """spec.loadBalancerSourceRanges as networks of both families, IPv4 first (host bits
    set are an error, as the API server says). Which family's ranges apply to which
    frontend is ``translate``'s business."""
    if values is None:
        return ()
    found: list[IPNetwork] = []
    items = _list(values, "spec.loadBalancerSourceRanges")
    for value in items:
        try:
            found.append(ipaddress.ip_network(_string(value, "a source range").strip()))
        except ValueError:
            raise _Invalid(f"spec.loadBalancerSourceRanges: {value!r} is not a CIDR") from None
    return tuple(sorted(set(found), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


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
    """The addresses in a list, of both families; malformed ones are reported and
    skipped."""
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
        found.append(address)
    return tuple(dict.fromkeys(found))
