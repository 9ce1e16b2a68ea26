"""Service objects -> the environment variables kubelet injects into a pod's containers
(``ebpflb env``): for each Service with a ClusterIP, ``<NAME>_SERVICE_HOST``,
``<NAME>_SERVICE_PORT`` (the first port), ``<NAME>_SERVICE_PORT_<PORT>`` per named port,
and the Docker-link form ``<NAME>_PORT=<proto>://<host>:<port>`` (the first port) and
``<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`` per port. Pure.

Read from kubelet (``pkg/kubelet/envvars/envvars.go`` and ``getServiceEnvVarMap``):
- A Service counts when its ``spec.clusterIP`` is set and not ``None``: headless and
  ExternalName Services (which have none) give nothing. The host is ``spec.clusterIP``
  as written, which for a dual-stack Service is the primary family's address
  (``spec.clusterIPs[0]``); the other family's is never shown.
- Names are upper-cased with ``-`` turned into ``_`` (Service and port names are DNS
  labels, so nothing else needs mapping); protocols are lower-case in the URLs and
  ``_PROTO`` values, upper-case in the names; an IPv6 host is bracketed in the URLs
  (Go's ``net.JoinHostPort``) and bare in ``_SERVICE_HOST`` and ``_ADDR``.
- Every pod gets the master Service ``default/kubernetes`` (``KUBERNETES_SERVICE_HOST``,
  ...), even with ``enableServiceLinks: false``; with service links (the default) it
  also gets every Service of its own namespace, one of which, named ``kubernetes``,
  replaces the master's.
- kubelet keeps them in a map, so a container sees no particular order: here they come
  Service by Service in name order, each in kubelet's own order, and where two Services
  produce one name (possible in principle), the later Service's value wins.

The fields kubelet reads (``spec.type``, ``spec.clusterIP(s)``, ``spec.ports``) are
checked as ``services`` checks them for the agent: a Service the agent would skip as
invalid is reported here too, and gives no variables. Unlike the agent, a Service
labelled for another proxy (``service.kubernetes.io/service-proxy-name``) still counts:
kubelet does not look at that label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ebpflb.model import ServiceRef, ServiceType
from ebpflb.sources.fields import (
    DEFAULT_NAMESPACE,
    Obj,
    ObjectError,
    _error,
    _identity,
    _Invalid,
    _is_mapping,
    _list,
)
from ebpflb.sources.services import _cluster_ips_of, _Port, _service_ports, _service_type

MASTER_SERVICE = ServiceRef(DEFAULT_NAMESPACE, "kubernetes")  # kubelet's masterServices


@dataclass(frozen=True)
class ServiceEnv:
    """The variables of one namespace's pods, and the Services that could not be read."""

    variables: dict[str, str] = field(default_factory=dict)  # in output order
    errors: tuple[ObjectError, ...] = ()


@dataclass(frozen=True)
class _Linked:
    ref: ServiceRef
    cluster_ip: str  # spec.clusterIP as written: the primary family's
    ports: tuple[_Port, ...]


def service_env(
    services: Iterable[Obj], namespace: str, *, service_links: bool = True
) -> ServiceEnv:
    """What kubelet injects into a pod of ``namespace`` (``service_links``: the pod's
    ``spec.enableServiceLinks``)."""
    errors: list[ObjectError] = []
    master: _Linked | None = None
    own: dict[str, _Linked] = {}
    for obj in services:
        ns, name = _identity(obj)
        ref = ServiceRef(ns, name)
        if ref != MASTER_SERVICE and not (service_links and ns == namespace):
            continue
        linked = _linked(obj, ref, errors)
        if linked is None:
            continue
        if ns == namespace and service_links:
            if name in own:
                errors.append(_error("Service", ref, "defined more than once; copy skipped"))
                continue
            own[name] = linked
        if ref == MASTER_SERVICE and master is None:
            master = linked
    chosen = dict(own)
    if master is not None:
        chosen.setdefault(master.ref.name, master)  # a Service of the pod's own wins
    variables: dict[str, str] = {}
    for name in sorted(chosen):
        variables.update(_variables(chosen[name]))
    return ServiceEnv(variables, tuple(errors))


def _linked(obj: Obj, ref: ServiceRef, errors: list[ObjectError]) -> _Linked | None:
    """The Service's ClusterIP and ports; None when it has no ClusterIP, or is invalid
    (reported)."""
    try:
        if not ref.name:
            raise _Invalid("metadata.name is missing")
        spec = obj.get("spec")
        if not _is_mapping(spec):
            raise _Invalid("spec is missing")
        if _service_type(spec.get("type")) is ServiceType.EXTERNAL_NAME:
            return None
        raw, addresses, _dual = _cluster_ips_of(obj, spec)
        if not addresses:  # headless
            return None
        items = _list(spec.get("ports"), "spec.ports")
    except _Invalid as e:
        errors.append(_error("Service", ref, f"{e}; Service skipped"))
        return None

    def report(message: str) -> None:
        errors.append(_error("Service", ref, message))

    ports = _service_ports(items, report)
    if not ports:
        errors.append(_error("Service", ref, "spec.ports has no valid port; Service skipped"))
        return None
    return _Linked(ref, raw[0], ports)


def env_name(name: str) -> str:
    """kubelet's makeEnvVariableName."""
    return name.upper().replace("-", "_")


def _host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _variables(svc: _Linked) -> dict[str, str]:
    """One Service's variables, in kubelet's order (FromServices, makeLinkVariables)."""
    prefix = env_name(svc.ref.name)
    host = svc.cluster_ip
    out = {
        f"{prefix}_SERVICE_HOST": host,
        f"{prefix}_SERVICE_PORT": str(svc.ports[0].port),
    }
    for p in svc.ports:
        if p.name:
            out[f"{prefix}_SERVICE_PORT_{env_name(p.name)}"] = str(p.port)
    for i, p in enumerate(svc.ports):
        proto = str(p.protocol).lower()
        url = f"{proto}://{_host_port(host, p.port)}"
        if i == 0:
            out[f"{prefix}_PORT"] = url  # Docker special-cases the first port
        link = f"{prefix}_PORT_{p.port}_{str(p.protocol).upper()}"
        out[link] = url
        out[f"{link}_PROTO"] = proto
        out[f"{link}_PORT"] = str(p.port)
        out[f"{link}_ADDR"] = host
    return out
