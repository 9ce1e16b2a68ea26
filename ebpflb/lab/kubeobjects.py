"""Kubernetes objects describing a lab's nodes and pods, as the plain dicts a manifest
directory or an API stand-in serves: a Node per lab node, a Pod per lab pod (or an
EndpointSlice endpoint, for the tests that write their own slices), and the example
Services a lab is written with. Pure; ``layout.Lab`` fills in the lab's names and
addresses.

The example Services (``example_services``) select their pods as a cluster's do
(``selector: {app: web}``; the manifest source derives their EndpointSlices from the
Pods, see ``ebpflb.sources.pods``): ``demo/web`` on ClusterIP 10.96.0.10 (TCP 80 ->
the pods' port named ``http``, 8080; UDP 53 -> ``echo``, 9090), and in a multi-node
lab ``demo/edge``, a LoadBalancer on 192.168.60.10. In a dual-stack lab both become
``RequireDualStack`` (second ClusterIP fd00:10:96::a / ::14, a second ingress
fd00:192:168:60::a) and the Pods carry both addresses (``status.podIPs``), so each gets
an IPv4 and an IPv6 slice; ``demo/web6`` is IPv6 only (``SingleStack``,
fd00:10:96::b).
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
NAMESPACE = "demo"
WEB_IPS = ("10.96.0.10", "fd00:10:96::a")
WEB6_IP = "fd00:10:96::b"
EDGE_IPS = ("10.96.0.20", "fd00:10:96::14")
EDGE_INGRESS = ("192.168.60.10", "fd00:192:168:60::a")
POD_LABELS = {"app": "web"}  # what the example Services select
WEB_PORTS = (
    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
    {"name": "echo", "port": 53, "protocol": "UDP", "targetPort": "echo"},
)
CONTAINER_PORTS = (  # the pod server's ports, named as the Services' targetPorts
    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
    {"name": "echo", "containerPort": 9090, "protocol": "UDP"},
)
SLICE_PORTS = (
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "echo", "port": 9090, "protocol": "UDP"},
)

Obj = dict[str, Any]


def node(
    name: str,
    *,
    internal_ip: IPv4Address,
    zone: str,
    pod_cidr: IPv4Network,
    internal_ip6: IPv6Address | None = None,
    pod_cidr6: IPv6Network | None = None,
) -> Obj:
    """A Node object: ``internal_ip`` (and ``internal_ip6`` on a dual-stack node) is
    what kube-proxy opens NodePorts on."""
    addresses = [{"type": "InternalIP", "address": str(internal_ip)}]
    if internal_ip6 is not None:
        addresses.append({"type": "InternalIP", "address": str(internal_ip6)})
    cidrs = [str(pod_cidr), *([str(pod_cidr6)] if pod_cidr6 is not None else [])]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name, ZONE_LABEL: zone}},
        "spec": {"podCIDR": str(pod_cidr), "podCIDRs": cidrs},
        "status": {"addresses": [*addresses, {"type": "Hostname", "address": name}]},
    }


def endpoint(
    address: IPv4Address | IPv6Address,
    *,
    pod_name: str,
    node_name: str,
    zone: str,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
) -> Obj:
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


def pod(
    name: str,
    addresses: Sequence[IPv4Address | IPv6Address],
    *,
    node_name: str,
    ready: bool = True,
    labels: dict[str, str] | None = None,
) -> Obj:
    """A running Pod: ``addresses`` (primary first) as ``status.podIP(s)``, its node,
    the Ready condition, and the pod server's named container ports."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(labels or POD_LABELS)},
        "spec": {
            "nodeName": node_name,
            "containers": [
                {
                    "name": "podserver",
                    "image": "ebpflb-lab/podserver",
                    "ports": [dict(p) for p in CONTAINER_PORTS],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": str(addresses[0]),
            "podIPs": [{"ip": str(a)} for a in addresses],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(name: str, cluster_ips: Sequence[str], ports: Sequence[Obj], **spec: Any) -> Obj:
    """A Service with ``cluster_ips`` (one: single-stack of that address's family; two:
    ``RequireDualStack``, families in that order)."""
    families = ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips]
    policy = "RequireDualStack" if len(cluster_ips) > 1 else "SingleStack"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": cluster_ips[0],
            "clusterIPs": list(cluster_ips),
            "ipFamilies": families,
            "ipFamilyPolicy": policy,
            "ports": [dict(p) for p in ports],
            **spec,
        },
    }


def endpoint_slice(
    name: str, service_name: str, ports: Sequence[Obj], endpoints: Sequence[Obj], *, family: int
) -> Obj:
    """An EndpointSlice of ``service_name`` with addressType IPv4 or IPv6 (``family``)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: service_name, MANAGED_BY_LABEL: "ebpflb-lab"},
        },
        "addressType": f"IPv{family}",
        "ports": [dict(p) for p in ports],
        "endpoints": list(endpoints),
    }


def example_services(*, load_balancer: bool, ipv6: bool) -> list[Obj]:
    """The example Services (see the module's docstring), selecting the lab's pods
    (``POD_LABELS``); dual-stack ones in a dual-stack lab (``ipv6``)."""
    select = {"selector": dict(POD_LABELS)}
    objs = [service("web", WEB_IPS if ipv6 else WEB_IPS[:1], WEB_PORTS, **select)]
    if load_balancer:
        objs.append(
            service(
                "edge",
                EDGE_IPS if ipv6 else EDGE_IPS[:1],
                WEB_PORTS[:1],
                type="LoadBalancer",
                **select,
            )
        )
        objs[-1]["status"] = {
            "loadBalancer": {
                "ingress": [{"ip": ip} for ip in (EDGE_INGRESS if ipv6 else EDGE_INGRESS[:1])]
            }
        }
    if ipv6:
        objs.append(service("web6", [WEB6_IP], WEB_PORTS, **select))
    return objs
