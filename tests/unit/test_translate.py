"""Translation tables: Kubernetes objects in, frontends and backends out."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ebpflb.errors import InvalidObjectError
from ebpflb.model import (
    Backend,
    DesiredState,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServiceRef,
    ServiceType,
)
from ebpflb.sources.translate import ObjectError, node_addresses, translate

NODE = "node-a"
NODE_IPS = (ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("fd00::10"))


# --- builders ----------------------------------------------------------------------------


def svc(
    name: str = "web",
    *ports: dict[str, Any],
    ns: str = "demo",
    ip: str | None = "10.96.0.10",
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"ports": list(ports), **spec},
    }
    if ip is not None:
        obj["spec"]["clusterIP"] = ip
    if status is not None:
        obj["status"] = status
    return obj


def port(
    name: str | None,
    number: Any,
    protocol: str | None = None,
    *,
    target: Any = None,
    node_port: Any = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {"port": number}
    for key, value in (
        ("name", name),
        ("protocol", protocol),
        ("targetPort", target),
        ("nodePort", node_port),
    ):
        if value is not None:
            item[key] = value
    return item


def eps(
    name: str,
    service: str | None,
    ports: list[dict[str, Any]],
    *endpoints: dict[str, Any],
    ns: str = "demo",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "addressType": address_type,
        "ports": ports,
        "endpoints": list(endpoints),
    }


def sport(name: str | None, number: Any, protocol: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"port": number}
    if name is not None:
        item["name"] = name
    if protocol is not None:
        item["protocol"] = protocol
    return item


def ep(address: Any, node: str | None = None, **conditions: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if node is not None:
        item["nodeName"] = node
    return item


def show(b: Backend) -> str:
    flags = [
        f
        for f, on in (
            ("!ready", not b.ready),
            ("!serving", not b.serving),
            ("terminating", b.terminating),
        )
        if on
    ]
    return " ".join([str(b), *flags])


def summary(state: DesiredState) -> dict[str, Any]:
    """frontend -> (port name, all backends, active backends[, affinity])."""
    out: dict[str, Any] = {}
    for entry in state.entries.values():
        row: tuple[Any, ...] = (
            str(entry.port_name),
            [show(b) for b in entry.backends],
            [str(b) for b in entry.active],
        )
        if entry.affinity_timeout:
            row += (entry.affinity_timeout,)
        out[f"{entry.frontend.kind} {entry.frontend}"] = row
    return out


HTTP = port("http", 80, target="http")
HTTP_SLICE = sport("http", 8080, "TCP")
THREE = (ep("10.244.0.11"), ep("10.244.0.12"), ep("10.244.0.13"))
B3 = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"]


# --- what translates -----------------------------------------------------------------------

GOOD: list[Any] = [
    pytest.param(
        [svc("web", port(None, 80, target=8080))],
        [eps("web-1", "web", [sport(None, 8080)], ep("10.244.0.11"), ep("10.244.0.12"))],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web/TCP", B3[:2], B3[:2])},
        id="single-unnamed-port",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [eps("web-1", "web", [HTTP_SLICE], *THREE)],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3, B3)},
        id="named-targetport-resolved-by-slice",
    ),
    pytest.param(
        [svc("web", port(None, 53, "UDP", target=9090))],
        [eps("web-1", "web", [sport("", 9090, "UDP")], ep("10.244.0.11"))],
        {},
        {
            "clusterip 10.96.0.10:53/UDP": (
                "demo/web/UDP",
                ["10.244.0.11:9090"],
                ["10.244.0.11:9090"],
            )
        },
        id="numeric-targetport",
    ),
    pytest.param(
        [svc("web", HTTP, port("metrics", 9100, target=9100))],
        [eps("web-1", "web", [HTTP_SLICE, sport("metrics", 9100)], ep("10.244.0.11"))],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:1], B3[:1]),
            "clusterip 10.96.0.10:9100/TCP": (
                "demo/web:metrics/TCP",
                ["10.244.0.11:9100"],
                ["10.244.0.11:9100"],
            ),
        },
        id="multi-port",
    ),
    pytest.param(
        [svc("dns", port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP"))],
        [
            eps(
                "dns-1",
                "dns",
                [sport("dns", 53, "UDP"), sport("dns-tcp", 53, "TCP")],
                ep("10.244.0.11"),
            )
        ],
        {},
        {
            "clusterip 10.96.0.10:53/UDP": (
                "demo/dns:dns/UDP",
                ["10.244.0.11:53"],
                ["10.244.0.11:53"],
            ),
            "clusterip 10.96.0.10:53/TCP": (
                "demo/dns:dns-tcp/TCP",
                ["10.244.0.11:53"],
                ["10.244.0.11:53"],
            ),
        },
        id="tcp-and-udp-same-port",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [eps("web-1", "web", [sport("http", 8080, "UDP")], ep("10.244.0.11"))],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="slice-port-of-other-protocol-not-matched",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="no-slices-no-backends",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11"), ep("10.244.0.14", ready=False))],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": (
                "demo/web:http/TCP",
                ["10.244.0.11:8080", "10.244.0.14:8080 !ready !serving"],
                ["10.244.0.11:8080"],
            )
        },
        id="not-ready-known-but-inactive",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [
            eps(
                "web-1",
                "web",
                [HTTP_SLICE],
                ep("10.244.0.11", ready=False, serving=True, terminating=True),
                ep("10.244.0.12", ready=False, serving=False, terminating=True),
                ep("10.244.0.13", ready=False, terminating=True),
            )
        ],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": (
                "demo/web:http/TCP",
                [
                    "10.244.0.11:8080 !ready terminating",
                    "10.244.0.12:8080 !ready !serving terminating",
                    "10.244.0.13:8080 !ready !serving terminating",
                ],
                ["10.244.0.11:8080"],
            )
        },
        id="terminating-serving-fallback",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11", ready=True, terminating=True))],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": (
                "demo/web:http/TCP",
                ["10.244.0.11:8080 terminating"],
                ["10.244.0.11:8080"],
            )
        },
        id="ready-wins-over-terminating",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [
            eps("web-b", "web", [HTTP_SLICE], ep("10.244.0.13"), ep("10.244.0.12", ready=False)),
            eps("web-a", "web", [HTTP_SLICE], ep("10.244.0.11"), ep("10.244.0.12")),
            eps("web-c", "other", [HTTP_SLICE], ep("10.244.9.9")),
            eps("web-d", "web", [HTTP_SLICE], ep("10.244.8.8"), ns="elsewhere"),
        ],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3, B3)},
        id="slices-merged-deduplicated-ready-wins",
    ),
    pytest.param(
        [svc("web", HTTP)],
        [
            eps("web-v4", "web", [HTTP_SLICE], ep("10.244.0.11")),
            eps("web-v6", "web", [HTTP_SLICE], ep("fd00::11"), address_type="IPv6"),
            eps("web-fqdn", "web", [HTTP_SLICE], ep("web.example.com"), address_type="FQDN"),
        ],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:1], B3[:1])},
        id="ipv6-and-fqdn-slices-ignored",
    ),
    pytest.param(
        [svc("web", HTTP, ip="fd00::10", clusterIPs=["fd00::10", "10.96.0.10"])],
        [],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], []),
            "clusterip [fd00::10]:80/TCP": ("demo/web:http/TCP", [], []),
        },
        id="dual-stack-ipv6-primary-serves-both",
    ),
    pytest.param(
        [svc("web", HTTP, ip=None, clusterIPs=["10.96.0.10"])],
        [],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="clusterips-only",
    ),
    pytest.param(
        [svc("web", HTTP, ip="None")],
        [eps("web-1", "web", [HTTP_SLICE], *THREE)],
        {},
        {},
        id="headless",
    ),
    pytest.param(
        [svc("web", ip=None, type="ExternalName", externalName="web.example.com")],
        [],
        {},
        {},
        id="externalname",
    ),
    pytest.param(
        [svc("web", HTTP, labels={"service.kubernetes.io/service-proxy-name": "other"})],
        [eps("web-1", "web", [HTTP_SLICE], *THREE)],
        {},
        {},
        id="service-proxy-name-skipped",
    ),
    pytest.param(
        [svc("web", port("http", 80, target="http", node_port=30080), type="NodePort")],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11"))],
        {"node_addresses": NODE_IPS},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:1], B3[:1]),
            "nodeport 192.168.1.10:30080/TCP": ("demo/web:http/TCP", B3[:1], B3[:1]),
        },
        id="nodeport-on-ipv4-node-addresses",
    ),
    pytest.param(
        [svc("web", port("http", 80, target="http", node_port=30080))],
        [],
        {"node_addresses": NODE_IPS},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="nodeport-ignored-on-clusterip-type",
    ),
    pytest.param(
        [svc("web", HTTP, type="NodePort")],
        [],
        {"node_addresses": NODE_IPS},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="nodeport-type-without-nodeport",
    ),
    pytest.param(
        [svc("web", HTTP, externalIPs=["203.0.113.5", "2001:db8::5"])],
        [],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], []),
            "external 203.0.113.5:80/TCP": ("demo/web:http/TCP", [], []),
        },
        id="external-ips",
    ),
    pytest.param(
        [
            svc(
                "web",
                port("http", 80, target="http", node_port=30080),
                type="LoadBalancer",
                status={
                    "loadBalancer": {
                        "ingress": [
                            {"ip": "198.51.100.7"},
                            {"hostname": "lb.example.com"},
                            {"ip": "198.51.100.8", "ipMode": "Proxy"},
                            {"ip": "198.51.100.9", "ipMode": "VIP"},
                        ]
                    }
                },
            )
        ],
        [],
        {"node_addresses": NODE_IPS[:1]},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], []),
            "nodeport 192.168.1.10:30080/TCP": ("demo/web:http/TCP", [], []),
            "loadbalancer 198.51.100.7:80/TCP": ("demo/web:http/TCP", [], []),
            "loadbalancer 198.51.100.9:80/TCP": ("demo/web:http/TCP", [], []),
        },
        id="loadbalancer-ingress",
    ),
    pytest.param(
        [svc("web", HTTP, status={"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}})],
        [],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [])},
        id="ingress-ignored-unless-loadbalancer",
    ),
    pytest.param(
        [
            svc("web", HTTP, sessionAffinity="ClientIP"),
            svc(
                "api",
                HTTP,
                ip="10.96.0.11",
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
            ),
            svc("db", HTTP, ip="10.96.0.12", sessionAffinity="None"),
        ],
        [],
        {},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", [], [], 10800),
            "clusterip 10.96.0.11:80/TCP": ("demo/api:http/TCP", [], [], 60),
            "clusterip 10.96.0.12:80/TCP": ("demo/db:http/TCP", [], []),
        },
        id="session-affinity",
    ),
    pytest.param(
        [
            svc(
                "web",
                port("http", 80, target="http", node_port=30080),
                type="NodePort",
                externalTrafficPolicy="Local",
            )
        ],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11", NODE), ep("10.244.0.12", "node-b"))],
        {"node_addresses": NODE_IPS, "node_name": NODE},
        {
            "clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:2], B3[:2]),
            "nodeport 192.168.1.10:30080/TCP": ("demo/web:http/TCP", B3[:1], B3[:1]),
        },
        id="external-traffic-policy-local",
    ),
    pytest.param(
        [svc("web", HTTP, internalTrafficPolicy="Local")],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11", NODE), ep("10.244.0.12", "node-b"))],
        {"node_name": NODE},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:1], B3[:1])},
        id="internal-traffic-policy-local",
    ),
    pytest.param(
        [svc("web", HTTP, internalTrafficPolicy="Local")],
        [eps("web-1", "web", [HTTP_SLICE], ep("10.244.0.11", NODE), ep("10.244.0.12", "node-b"))],
        {},
        {"clusterip 10.96.0.10:80/TCP": ("demo/web:http/TCP", B3[:2], B3[:2])},
        id="local-policy-without-node-name-is-cluster",
    ),
]


@pytest.mark.parametrize(("services", "slices", "kwargs", "expected"), GOOD)
def test_translate(services, slices, kwargs, expected):
    result = translate(services, slices, **kwargs)
    assert result.errors == ()
    assert summary(result.state) == expected


INFOS: list[Any] = [
    pytest.param(svc("web", HTTP), (ServiceType.CLUSTER_IP, "10.96.0.10", None), id="clusterip"),
    pytest.param(
        svc("web", HTTP, ip="None"), (ServiceType.CLUSTER_IP, "None", None), id="headless"
    ),
    pytest.param(
        svc("web", ip=None, type="ExternalName", externalName="db.example.com"),
        (ServiceType.EXTERNAL_NAME, None, "db.example.com"),
        id="externalname",
    ),
    pytest.param(
        svc("web", port("http", 80, node_port=30080), type="NodePort"),
        (ServiceType.NODE_PORT, "10.96.0.10", None),
        id="nodeport",
    ),
]


@pytest.mark.parametrize(("service", "expected"), INFOS)
def test_service_info(service, expected):
    state = translate([service], []).state
    info = state.services[ServiceRef("demo", "web")]
    assert (info.type, info.cluster_ip, info.external_name) == expected
    assert info.headless == (expected[1] == "None")


def test_service_proxy_name_has_no_info():
    labels = {"service.kubernetes.io/service-proxy-name": "other"}
    assert translate([svc("web", HTTP, labels=labels)], []).state.services == {}


# --- what does not translate ------------------------------------------------------------------

GOOD_SVC = svc("good", HTTP, ip="10.96.0.20")
GOOD_SLICE = eps("good-1", "good", [HTTP_SLICE], ep("10.244.1.1"))
GOOD_FRONTEND = "clusterip 10.96.0.20:80/TCP"


def nameless() -> dict[str, Any]:
    obj = svc("x", HTTP, ip="10.96.0.30")
    del obj["metadata"]["name"]
    return obj


def specless() -> dict[str, Any]:
    obj = svc("bad")
    del obj["spec"]
    return obj


BAD: list[Any] = [
    # (objects, error "Kind ns/name", message part, frontends of the bad objects that remain)
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.30", clusterIPs=["10.96.0.31"])],
        "Service demo/bad",
        "is not spec.clusterIPs[0]",
        set(),
        id="clusterip-not-clusterips0",
    ),
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.300")],
        "Service demo/bad",
        "not an IP",
        set(),
        id="clusterip-not-an-ip",
    ),
    pytest.param(
        [svc("bad", HTTP, ip=None)],
        "Service demo/bad",
        "clusterIP is missing",
        set(),
        id="clusterip-missing",
    ),
    pytest.param([nameless()], "Service demo/<unnamed>", "metadata.name", set(), id="missing-name"),
    pytest.param([specless()], "Service demo/bad", "spec is missing", set(), id="missing-spec"),
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.30", type="Weird")],
        "Service demo/bad",
        "spec.type",
        set(),
        id="unknown-type",
    ),
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.30", sessionAffinity="Cookie")],
        "Service demo/bad",
        "sessionAffinity",
        set(),
        id="unknown-affinity",
    ),
    pytest.param(
        [
            svc(
                "bad",
                HTTP,
                ip="10.96.0.30",
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}},
            )
        ],
        "Service demo/bad",
        "timeoutSeconds",
        set(),
        id="affinity-timeout-0",
    ),
    pytest.param(
        [svc("bad", port("a", 0), port("b", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "port 0 is out of range",
        {"clusterip 10.96.0.30:81/TCP"},
        id="port-0",
    ),
    pytest.param(
        [svc("bad", port("a", 70000), port("b", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "port 70000 is out of range",
        {"clusterip 10.96.0.30:81/TCP"},
        id="port-70000",
    ),
    pytest.param(
        [svc("bad", port("a", "80"), port("b", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "not a number",
        {"clusterip 10.96.0.30:81/TCP"},
        id="port-string",
    ),
    pytest.param(
        [svc("bad", port("a", 80, target=0), port("b", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "targetPort 0",
        {"clusterip 10.96.0.30:81/TCP"},
        id="targetport-0",
    ),
    pytest.param(
        [
            svc(
                "bad",
                port("a", 80, node_port=70000),
                port("b", 81, node_port=30081),
                ip="10.96.0.30",
                type="NodePort",
            )
        ],
        "Service demo/bad",
        "nodePort 70000",
        {"clusterip 10.96.0.30:81/TCP", "nodeport 192.168.1.10:30081/TCP"},
        id="nodeport-out-of-range",
    ),
    pytest.param(
        [svc("bad", port("a", 80, node_port=0), port("b", 81), ip="10.96.0.30", type="NodePort")],
        "Service demo/bad",
        "nodePort 0",
        {"clusterip 10.96.0.30:81/TCP"},
        id="nodeport-0",
    ),
    pytest.param(
        [svc("bad", port("a", 80, "ICMP"), port("b", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "protocol 'ICMP'",
        {"clusterip 10.96.0.30:81/TCP"},
        id="unknown-protocol",
    ),
    pytest.param(
        [svc("bad", port("a", 80), port("b", 80), ip="10.96.0.30")],
        "Service demo/bad",
        "80/TCP is already used",
        {"clusterip 10.96.0.30:80/TCP"},
        id="duplicate-port",
    ),
    pytest.param(
        [svc("bad", port("a", 80), port("a", 81), ip="10.96.0.30")],
        "Service demo/bad",
        "name 'a' is already used",
        {"clusterip 10.96.0.30:80/TCP"},
        id="duplicate-port-name",
    ),
    pytest.param(
        [svc("bad", port("a", 80), port(None, 81), ip="10.96.0.30")],
        "Service demo/bad",
        "name is missing",
        {"clusterip 10.96.0.30:80/TCP"},
        id="missing-port-name-multi-port",
    ),
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.30", externalIPs=["203.0.113.300", "203.0.113.5"])],
        "Service demo/bad",
        "203.0.113.300",
        {"clusterip 10.96.0.30:80/TCP", "external 203.0.113.5:80/TCP"},
        id="bad-external-ip",
    ),
    pytest.param(
        [svc("later", HTTP, ip="10.96.0.20")],
        "Service demo/later",
        "already used by Service demo/good",
        set(),
        id="frontend-conflict",
    ),
    pytest.param(
        [svc("bad", HTTP, ip="10.96.0.30", type="NodePort"), svc("bad", HTTP, ip="10.96.0.31")],
        "Service demo/bad",
        "defined more than once",
        {"clusterip 10.96.0.30:80/TCP"},
        id="service-defined-twice",
    ),
    pytest.param(
        [
            svc("bad", HTTP, ip="10.96.0.30"),
            eps("bad-1", "bad", [HTTP_SLICE], ep("10.244.2.300"), ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "'10.244.2.300' is not an IP",
        {"clusterip 10.96.0.30:80/TCP 10.244.2.2:8080"},
        id="bad-endpoint-address",
    ),
    pytest.param(
        [
            svc("bad", HTTP, ip="10.96.0.30"),
            eps("bad-1", "bad", [HTTP_SLICE], ep("fd00::2"), ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "not IPv4",
        {"clusterip 10.96.0.30:80/TCP 10.244.2.2:8080"},
        id="ipv6-address-in-ipv4-slice",
    ),
    pytest.param(
        [
            svc("bad", HTTP, ip="10.96.0.30"),
            eps("bad-1", "bad", [HTTP_SLICE], ep("10.244.2.1\0"), ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "is not an IP",
        {"clusterip 10.96.0.30:80/TCP 10.244.2.2:8080"},
        id="nul-in-endpoint-address",
    ),
    pytest.param(
        [
            svc("bad", HTTP, ip="10.96.0.30"),
            eps("bad-1", "bad", [HTTP_SLICE], ep("10.244.2.1", ready="yes"), ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "conditions.ready",
        {"clusterip 10.96.0.30:80/TCP 10.244.2.2:8080"},
        id="condition-not-bool",
    ),
    pytest.param(
        [
            svc("bad", HTTP, port("b", 81), ip="10.96.0.30"),
            eps("bad-1", "bad", [sport("http", 0), sport("b", 81)], ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "port 0",
        {"clusterip 10.96.0.30:80/TCP", "clusterip 10.96.0.30:81/TCP 10.244.2.2:81"},
        id="slice-port-0",
    ),
    pytest.param(
        [
            svc("bad", HTTP, ip="10.96.0.30"),
            eps("bad-1", "bad", [sport("http", 8080, "ICMP")], ep("10.244.2.2")),
        ],
        "EndpointSlice demo/bad-1",
        "protocol 'ICMP'",
        {"clusterip 10.96.0.30:80/TCP"},
        id="slice-unknown-protocol",
    ),
    pytest.param(
        [eps("bad-1", None, [HTTP_SLICE], ep("10.244.2.2"))],
        "EndpointSlice demo/bad-1",
        "kubernetes.io/service-name",
        set(),
        id="slice-without-service-label",
    ),
    pytest.param(
        [eps("bad-1", "bad", [HTTP_SLICE], ep("10.244.2.2"), address_type="IPX")],
        "EndpointSlice demo/bad-1",
        "addressType",
        set(),
        id="slice-unknown-address-type",
    ),
]


def frontends_except_good(state: DesiredState) -> set[str]:
    """Every remaining frontend but the good one, with its active backends if any."""

    def label(e: ServiceEntry) -> str:
        return " ".join([f"{e.frontend.kind} {e.frontend}", *(str(b) for b in e.active)])

    return {label(e) for e in state.entries.values() if e.port_name.service.name != "good"}


@pytest.mark.parametrize(("objects", "names", "message", "remaining"), BAD)
def test_bad_objects_are_skipped_and_named(objects, names, message, remaining):
    services = [GOOD_SVC, *(o for o in objects if o["kind"] == "Service")]
    slices = [GOOD_SLICE, *(o for o in objects if o["kind"] == "EndpointSlice")]
    result = translate(services, slices, node_addresses=NODE_IPS[:1])

    assert len(result.errors) == 1, result.errors
    error = result.errors[0]
    assert str(error).startswith(f"{names}: "), str(error)
    assert message in error.message
    assert f"{error.kind} {error.object}" == names
    # every other object still applies, and nothing of the bad one is half there
    good = result.state.entries[(ipaddress.ip_address("10.96.0.20"), 80, Protocol.TCP)]
    assert [str(b) for b in good.active] == ["10.244.1.1:8080"]
    assert frontends_except_good(result.state) == remaining


def test_skipped_service_has_no_info_but_port_errors_keep_it():
    result = translate(
        [
            svc("whole", HTTP, ip="fd00::1", clusterIPs=["fd00::2"]),
            svc("part", port("a", 0), port("b", 81)),
        ],
        [],
    )
    assert set(result.state.services) == {ServiceRef("demo", "part")}
    assert [e.name for e in result.errors] == ["part", "whole"]


def test_frontend_conflict_keeps_first_by_namespace_and_name():
    # given in reverse order: the winner is chosen by (namespace, name), not input order
    result = translate([svc("b", HTTP), svc("a", HTTP)], [])
    (entry,) = result.state.entries.values()
    assert entry.port_name.service == ServiceRef("demo", "a")
    assert [str(e) for e in result.errors] == [
        "Service demo/b: clusterip frontend 10.96.0.10:80/TCP is already used by "
        "Service demo/a; skipped"
    ]


def test_errors_are_deterministic_and_input_untouched():
    import copy

    services = [svc("b", port("a", 0)), svc("a", HTTP, ip="bad")]
    slices = [eps("s", "a", [HTTP_SLICE], ep("x"))]
    before = copy.deepcopy((services, slices))
    first = translate(services, slices)
    second = translate(list(reversed(services)), list(reversed(slices)))
    assert first == second
    assert (services, slices) == before


def test_object_error_text_and_exception():
    error = ObjectError("EndpointSlice", "demo", "web-1", "endpoints[0]: boom")
    assert str(error) == "EndpointSlice demo/web-1: endpoints[0]: boom"
    assert isinstance(error.exception(), InvalidObjectError)
    assert str(ObjectError("Node", "", "n1", "x")) == "Node n1: x"


def test_frontend_kinds():
    result = translate(
        [svc("web", port("http", 80, node_port=30080), type="NodePort")],
        [],
        node_addresses=NODE_IPS,
    )
    kinds = sorted(e.frontend.kind for e in result.state.entries.values())
    assert kinds == [FrontendKind.CLUSTER_IP, FrontendKind.NODE_PORT]


NODES = [
    {
        "kind": "Node",
        "metadata": {"name": "other"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.99"}]},
    },
    {
        "kind": "Node",
        "metadata": {"name": NODE},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": NODE},
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "InternalIP", "address": "not-an-ip"},
                {"type": "ExternalIP", "address": "203.0.113.10"},
                {"type": "InternalIP", "address": "fd00::10"},
            ]
        },
    },
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (NODE, ["192.168.1.10", "203.0.113.10", "fd00::10"]),
        ("other", ["192.168.1.99"]),
        ("missing", []),
    ],
)
def test_node_addresses(name, expected):
    assert [str(a) for a in node_addresses(NODES, name)] == expected
