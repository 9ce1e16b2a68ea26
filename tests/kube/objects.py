"""Builders for the Kubernetes objects the stand-in serves (manifest shape)."""

from __future__ import annotations

from typing import Any

from ebpflb.sources.endpointslices import SERVICE_NAME_LABEL
from ebpflb.sources.services import SERVICE_PROXY_NAME_LABEL

Obj = dict[str, Any]


def service(
    name: str, ip: str, *, namespace: str = "demo", port: int = 80, proxy_name: str | None = None
) -> Obj:
    labels = {SERVICE_PROXY_NAME_LABEL: proxy_name} if proxy_name else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def endpoint_slice(
    service_name: str, backends: list[str], *, namespace: str = "demo", suffix: str = "1"
) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [b], "conditions": {"ready": True}} for b in backends],
    }


def node(name: str, address: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }
