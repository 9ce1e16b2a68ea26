"""Kubernetes objects for the lab tests, as plain dicts written to the agent's manifest
directory (JSON, one file per Service with its slices, replaced atomically)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


def service(
    name: str,
    cluster_ip: str | Sequence[str],
    ports: Iterable[Mapping[str, Any]],
    *,
    namespace: str = "demo",
    **spec: Any,
) -> Obj:
    """A Service. ``cluster_ip`` a list: ``clusterIPs`` as the API server writes them
    (``clusterIP`` its first, ``ipFamilies`` in the same order, ``ipFamilyPolicy``
    SingleStack or RequireDualStack); ``spec`` keys override any of these."""
    fields: Obj
    if isinstance(cluster_ip, str):
        fields = {"clusterIP": cluster_ip}
    else:
        ips = list(cluster_ip)
        fields = {
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilies": [f"IPv{ip_address(ip).version}" for ip in ips],
            "ipFamilyPolicy": "SingleStack" if len(ips) == 1 else "RequireDualStack",
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**fields, "ports": [dict(p) for p in ports], **spec},
    }


def endpoint(
    address: str,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    node: str | None = None,
    zone: str | None = None,
    for_zones: Iterable[str] = (),
    for_nodes: Iterable[str] = (),
) -> Obj:
    conditions = {
        "ready": ready,
        "serving": ready if serving is None else serving,
        "terminating": terminating,
    }
    ep: Obj = {"addresses": [address], "conditions": conditions}
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    hints: Obj = {}
    if for_zones:
        hints["forZones"] = [{"name": z} for z in for_zones]
    if for_nodes:
        hints["forNodes"] = [{"name": n} for n in for_nodes]
    if hints:
        ep["hints"] = hints
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    ports: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Obj],
    *,
    namespace: str = "demo",
    address_type: str = "IPv4",
) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "ports": [dict(p) for p in ports],
        "endpoints": list(endpoints),
    }


def node(name: str, address: str, *, zone: str | None = None) -> Obj:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def write(directory: Path, name: str, objects: Iterable[Obj]) -> None:
    """Replace ``name.json`` with ``objects`` (a List), atomically."""
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}, indent=1)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(directory / f"{name}.json")


def remove(directory: Path, name: str) -> None:
    (directory / f"{name}.json").unlink(missing_ok=True)
