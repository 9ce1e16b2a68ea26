"""Registration from selectors: Pod objects read, matched by a Service's
``spec.selector``, and turned into the EndpointSlices Kubernetes' EndpointSlice
controller would write for that Service. Pure: dicts in, dicts out; the manifest
source (through ``registration``) calls it so that the derived slices flow into the
same translation as hand-written ones.

What the controller does, and so what this does:

- a Pod is registered when it has an IP (``status.podIPs``, else ``status.podIP``) and
  has not finished (phase ``Succeeded``/``Failed``); its labels must match every
  ``key: value`` of the selector (equality-based, as Services select). An empty or
  missing selector means "no selector": the Service's endpoints are someone else's
  (hand-written slices), and ExternalName Services get none;
- one slice per address family the Service has (``spec.ipFamilies``, else the family
  of its ClusterIP), holding each matching Pod's address of that family;
- ports are resolved per Pod: a numeric ``targetPort`` (or none: the Service port) as
  it is, a named one looked up among the Pod's container ports of the same protocol. A
  Pod without that name gets no entry for that port; Pods whose resolved ports differ
  go into separate slices, one per distinct port set, as the controller groups them;
- conditions: ``serving`` = the Pod's ``Ready`` condition is ``True``, ``terminating`` =
  ``metadata.deletionTimestamp`` is set, ``ready`` = serving and not terminating, or
  always with ``spec.publishNotReadyAddresses``. A not-ready Pod stays in the slice with
  ``ready: false`` (and gets no new connections), as in a cluster;
- each endpoint carries ``nodeName``, ``zone`` (the Node's
  ``topology.kubernetes.io/zone`` label, when that Node is known), ``hostname`` (when
  ``spec.hostname`` is set and ``spec.subdomain`` names the Service) and a
  ``targetRef`` to the Pod; each slice the labels ``kubernetes.io/service-name`` and
  ``endpointslice.kubernetes.io/managed-by: ebpflb.io/manifests`` (ours, not the
  controller's ``endpointslice-controller.k8s.io``, so a slice copied into a cluster is
  not mistaken for the controller's).

Slice names are ``<service>-<8 hex digits>``, a digest of the family and the port set:
stable while Pods come and go, so an unchanged slice compares equal and wakes nobody.
Slices are not split at 100 endpoints as the controller's are: nothing here reads
them but translation, which merges a Service's slices anyway.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebpflb.model import IPAddress, Protocol
from ebpflb.sources.fields import (
    _identity,
    _Invalid,
    _ip,
    _is_int,
    _is_mapping,
    _list,
    _mapping,
    _port_number,
    _protocol,
    _string,
)

Obj = dict[str, Any]

POD = "Pod"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "ebpflb.io/manifests"  # the controller's would be endpointslice-controller.k8s.io
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"
FINISHED_PHASES = ("Succeeded", "Failed")

# Kubernetes' label syntax: a value (and a key's name part) is at most 63 characters of
# alphanumerics, '-', '_' and '.', beginning and ending alphanumeric; a key may have a
# DNS-subdomain prefix and '/'.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class NotRegistered(Exception):
    """A valid Pod that gets no endpoint (no IP yet, finished): the reason."""


@dataclass(frozen=True)
class ContainerPort:
    name: str  # "" when unnamed
    protocol: Protocol
    port: int


@dataclass(frozen=True, eq=False)  # compared by identity: the registrar caches by it
class Pod:
    """What registration reads of one Pod."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[IPAddress, ...]  # at most one per family, the primary first
    node: str | None
    ready: bool  # the Ready condition is True
    terminating: bool  # metadata.deletionTimestamp is set
    ports: tuple[ContainerPort, ...]
    hostname: str = ""
    subdomain: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def read_pod(obj: Obj) -> Pod:
    """One Pod object. Raises ``_Invalid`` for what the API server would have refused
    (a malformed label, IP or port) and ``NotRegistered`` for a valid Pod that gets no
    endpoint."""
    namespace, name = _identity(obj)
    if not name:
        raise _Invalid("metadata.name is missing")
    meta = _mapping(obj.get("metadata"), "metadata")
    labels = read_labels(meta.get("labels"), "metadata.labels")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    ips = _pod_ips(status)
    ready = _ready(status)
    ports = _container_ports(spec)
    node = _string(spec.get("nodeName"), "spec.nodeName") or None
    hostname = _string(spec.get("hostname"), "spec.hostname")
    subdomain = _string(spec.get("subdomain"), "spec.subdomain")
    phase = _string(status.get("phase"), "status.phase")
    if phase in FINISHED_PHASES:
        raise NotRegistered(f"is {phase} (status.phase)")
    if not ips:
        raise NotRegistered("has no IP (status.podIP)")
    terminating = meta.get("deletionTimestamp") is not None
    return Pod(namespace, name, labels, ips, node, ready, terminating, ports, hostname, subdomain)


def pod_problems(obj: Obj) -> tuple[str, ...]:
    """What makes a Pod object invalid (for ``lastgood``); () for a valid one, including
    one that is valid but not registered (no IP yet)."""
    try:
        read_pod(obj)
    except _Invalid as e:
        return (str(e),)
    except NotRegistered:
        pass
    return ()


def read_labels(value: Any, where: str) -> dict[str, str]:
    """A label map (a Pod's labels, or a selector), checked as the API server checks
    one."""
    labels = _mapping(value, where)
    out: dict[str, str] = {}
    for key, val in labels.items():
        if not isinstance(key, str) or not _label_key_ok(key):
            raise _Invalid(f"{where}: {key!r} is not a valid label key")
        if not isinstance(val, str):
            raise _Invalid(f"{where}[{key!r}]: {val!r} is not a string")
        if val and (len(val) > 63 or not _LABEL_NAME.fullmatch(val)):
            raise _Invalid(f"{where}[{key!r}]: {val!r} is not a valid label value")
        out[key] = val
    return out


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _pod_ips(status: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    listed = [
        _mapping(item, "status.podIPs[]").get("ip")
        for item in _list(status.get("podIPs"), "status.podIPs")
    ]
    raw = listed or ([status["podIP"]] if status.get("podIP") else [])
    ips: list[IPAddress] = []
    for value in raw:
        ip = _ip(value)
        if ip is None:
            raise _Invalid(f"status.podIPs: {value!r} is not an IP address")
        if any(other.version == ip.version for other in ips):
            raise _Invalid(f"status.podIPs: two IPv{ip.version} addresses")
        ips.append(ip)
    primary = status.get("podIP")
    if listed and primary and str(_ip(primary)) != str(ips[0]):
        raise _Invalid(f"status.podIP {primary!r} is not status.podIPs[0] {listed[0]!r}")
    return tuple(ips)


def _ready(status: Mapping[str, Any]) -> bool:
    for item in _list(status.get("conditions"), "status.conditions"):
        cond = _mapping(item, "status.conditions[]")
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    for i, container in enumerate(_list(spec.get("containers"), "spec.containers")):
        where = f"spec.containers[{i}].ports"
        for item in _list(_mapping(container, "spec.containers[]").get("ports"), where):
            item = _mapping(item, f"{where}[]")
            number = _port_number(item.get("containerPort"), f"{where}[].containerPort")
            name = _string(item.get("name"), f"{where}[].name")
            try:
                protocol = _protocol(item.get("protocol"))
            except _Invalid as e:
                raise _Invalid(f"{where}[]: {e}") from None
            ports.append(ContainerPort(name, protocol, number))
    return tuple(ports)


# --- Services -------------------------------------------------------------------------


def selector(service: Obj) -> dict[str, str] | None:
    """The Service's selector; None when it has none (empty, missing, or an
    ExternalName Service). Raises ``_Invalid`` when it is malformed."""
    spec = service.get("spec")
    if not _is_mapping(spec) or spec.get("type") == "ExternalName":
        return None
    found = read_labels(spec.get("selector"), "spec.selector")
    return found or None


def matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether ``labels`` hold every ``key: value`` of ``wanted`` (equality-based)."""
    return all(labels.get(k) == v for k, v in wanted.items())


@dataclass(frozen=True)
class _ServicePort:
    name: str
    protocol: Protocol
    port: int
    target: int | str  # a number, or a container port's name


def _service_ports(spec: Mapping[str, Any]) -> list[_ServicePort]:
    """The ports as the controller reads them; a malformed one is skipped here
    (translation reports it, naming the Service)."""
    out: list[_ServicePort] = []
    for item in _list(spec.get("ports"), "spec.ports"):
        try:
            item = _mapping(item, "port")
            port = _port_number(item.get("port"), "port")
            target = item.get("targetPort")
            if target is None or target == 0:
                target = port
            elif not (isinstance(target, str) and target) and not _is_int(target):
                continue
            out.append(
                _ServicePort(
                    _string(item.get("name"), "name"), _protocol(item.get("protocol")), port, target
                )
            )
        except _Invalid:
            continue
    return out


def _families(spec: Mapping[str, Any]) -> list[int]:
    """The Service's IP versions: ``spec.ipFamilies``, else its ClusterIPs' families,
    else IPv4 (as the API server defaults a single-stack cluster)."""
    named = spec.get("ipFamilies")
    if isinstance(named, list) and named:
        versions = [{"IPv4": 4, "IPv6": 6}.get(f) for f in named]
        return list(dict.fromkeys(v for v in versions if v))
    ips = spec.get("clusterIPs")
    if not isinstance(ips, list) or not ips:
        ips = [spec.get("clusterIP")]
    found = [ip.version for ip in map(_ip, ips) if ip is not None]
    return list(dict.fromkeys(found)) or [4]


def resolve(port: _ServicePort, pod: Pod) -> int | None:
    """The Pod's port for a Service port: a number as it is, a name looked up in the
    Pod's container ports of the same protocol; None when the Pod has no such name."""
    if isinstance(port.target, int):
        return port.target
    for cp in pod.ports:
        if cp.name == port.target and cp.protocol is port.protocol:
            return cp.port
    return None


def unresolved(service: Obj, pod: Pod) -> list[str]:
    """The names of the Service's named target ports the Pod does not have."""
    spec = service.get("spec")
    if not _is_mapping(spec):
        return []
    return [
        f"{p.target}/{p.protocol.value}"
        for p in _service_ports(spec)
        if isinstance(p.target, str) and resolve(p, pod) is None
    ]


# --- EndpointSlices -------------------------------------------------------------------

_PortSet = tuple[tuple[str, Protocol, int], ...]


def derive_slices(
    service: Obj, pods: Iterable[Pod], *, zones: Mapping[str, str] | None = None
) -> list[Obj]:
    """The EndpointSlices for ``service`` over ``pods`` (those of its namespace that its
    selector matches; see ``matches``), as the controller writes them. ``zones``: node
    name -> zone, from the Node objects known."""
    namespace, name = _identity(service)
    spec = _mapping(service.get("spec"), "spec")
    ports = _service_ports(spec)
    publish = spec.get("publishNotReadyAddresses") is True
    headless = spec.get("clusterIP") == "None"
    groups: dict[_PortSet, list[Pod]] = {}
    for pod in sorted(pods, key=lambda p: p.name):
        resolved: list[tuple[str, Protocol, int]] = []
        for port in ports:
            number = resolve(port, pod)
            if number is not None:
                resolved.append((port.name, port.protocol, number))
        groups.setdefault(tuple(resolved), []).append(pod)
    slices: list[Obj] = []
    for version in _families(spec):
        for port_set, members in sorted(groups.items(), key=lambda g: _port_order(g[0])):
            endpoints = [
                _endpoint(pod, ip, service_name=name, publish=publish, zones=zones or {})
                for pod in members
                for ip in pod.ips
                if ip.version == version
            ]
            if endpoints:
                slices.append(
                    _slice(namespace, name, version, port_set, endpoints, headless=headless)
                )
    return slices


def _port_order(ports: _PortSet) -> list[tuple[str, str, int]]:
    return [(n, p.value, number) for n, p, number in ports]


def slice_name(service: str, version: int, ports: _PortSet) -> str:
    """``web-1a2b3c4d``: stable for one family and port set."""
    text = f"IPv{version};" + ";".join(f"{n}/{p.value}/{num}" for n, p, num in ports)
    return f"{service}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _slice(
    namespace: str,
    service: str,
    version: int,
    ports: _PortSet,
    endpoints: Sequence[Obj],
    *,
    headless: bool,
) -> Obj:
    labels = {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY}
    if headless:
        labels[HEADLESS_LABEL] = ""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service, version, ports),
            "namespace": namespace,
            "labels": labels,
        },
        "addressType": f"IPv{version}",
        "endpoints": list(endpoints),
        "ports": [{"name": n, "port": num, "protocol": p.value} for n, p, num in ports],
    }


def _endpoint(
    pod: Pod, ip: IPAddress, *, service_name: str, publish: bool, zones: Mapping[str, str]
) -> Obj:
    serving = pod.ready
    ready = publish or (serving and not pod.terminating)
    ep: Obj = {
        "addresses": [str(ip)],
        "conditions": {"ready": ready, "serving": serving, "terminating": pod.terminating},
    }
    if pod.hostname and pod.subdomain == service_name:
        ep["hostname"] = pod.hostname
    if pod.node:
        ep["nodeName"] = pod.node
        zone = zones.get(pod.node)
        if zone:
            ep["zone"] = zone
    ep["targetRef"] = {"kind": POD, "namespace": pod.namespace, "name": pod.name}
    return ep


def node_zones(nodes: Iterable[Obj]) -> dict[str, str]:
    """Node name -> its ``topology.kubernetes.io/zone`` label, for the Nodes that have
    one."""
    zones: dict[str, str] = {}
    for node in nodes:
        meta = node.get("metadata")
        if not _is_mapping(meta):
            continue
        labels = meta.get("labels")
        zone = labels.get(ZONE_LABEL) if _is_mapping(labels) else None
        name = meta.get("name")
        if isinstance(name, str) and isinstance(zone, str) and zone:
            zones[name] = zone
    return zones
