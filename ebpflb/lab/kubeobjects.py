"""Kubernetes objects describing a lab's nodes and pods, as the plain dicts a manifest
directory or an API stand-in serves: a Node per lab node and an EndpointSlice
endpoint per pod. Pure; ``layout.Lab`` fills in the lab's names and addresses.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"


def node(
    name: str, *, internal_ip: IPv4Address, zone: str, pod_cidr: IPv4Network
) -> dict[str, Any]:
    """A Node object: ``internal_ip`` is what kube-proxy opens NodePorts on."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name, ZONE_LABEL: zone}},
        "spec": {"podCIDR": str(pod_cidr), "podCIDRs": [str(pod_cidr)]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": str(internal_ip)},
            {"type": "Hostname", "address": name},
        ]},
    }  # fmt: skip


def endpoint(
    address: IPv4Address,
    *,
    pod_name: str,
    node_name: str,
    zone: str,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    """One item of an EndpointSlice's ``endpoints``; ``serving`` defaults to ``ready``
    as the API does."""
    return {
        "addresses": [str(address)],
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else serving,
            "terminating": terminating,
        },
        "nodeName": node_name,
        "zone": zone,
        "targetRef": {"kind": "Pod", "name": pod_name},
    }
