"""`sources.envvars`: the variables kubelet injects for a namespace's Services, compared
with those the Kubernetes documentation shows ("Service - Environment variables") and
with kubelet's envvars.go for the cases the documentation leaves out (named, several and
UDP ports, IPv6 and dual-stack ClusterIPs, headless and ExternalName Services, the
master Service, enableServiceLinks)."""

from __future__ import annotations

from typing import Any

import pytest

from ebpflb.sources.envvars import service_env


def svc(name: str, ns: str = "demo", **spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


# The documentation's example: Service "redis-primary", TCP port 6379, ClusterIP
# 10.0.0.11 (its port is unnamed there).
DOCS = {
    "REDIS_PRIMARY_SERVICE_HOST": "10.0.0.11",
    "REDIS_PRIMARY_SERVICE_PORT": "6379",
    "REDIS_PRIMARY_PORT": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp",
    "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
    "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "10.0.0.11",
}
REDIS = svc("redis-primary", clusterIP="10.0.0.11", ports=[{"port": 6379}])
REDIS_NAMED = svc("redis-primary", clusterIP="10.0.0.11", ports=[{"name": "redis", "port": 6379}])
MASTER = svc("kubernetes", "default", clusterIP="10.96.0.1", ports=[{"name": "https", "port": 443}])
MASTER_ENV = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}
MULTI = svc(
    "dns-cache",
    clusterIP="10.96.0.10",
    ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153},
    ],
)
MULTI_ENV = {
    "DNS_CACHE_SERVICE_HOST": "10.96.0.10",
    "DNS_CACHE_SERVICE_PORT": "53",  # the first port's, whatever its protocol
    "DNS_CACHE_SERVICE_PORT_DNS": "53",
    "DNS_CACHE_SERVICE_PORT_DNS_TCP": "53",
    "DNS_CACHE_SERVICE_PORT_METRICS": "9153",
    "DNS_CACHE_PORT": "udp://10.96.0.10:53",
    "DNS_CACHE_PORT_53_UDP": "udp://10.96.0.10:53",
    "DNS_CACHE_PORT_53_UDP_PROTO": "udp",
    "DNS_CACHE_PORT_53_UDP_PORT": "53",
    "DNS_CACHE_PORT_53_UDP_ADDR": "10.96.0.10",
    "DNS_CACHE_PORT_53_TCP": "tcp://10.96.0.10:53",
    "DNS_CACHE_PORT_53_TCP_PROTO": "tcp",
    "DNS_CACHE_PORT_53_TCP_PORT": "53",
    "DNS_CACHE_PORT_53_TCP_ADDR": "10.96.0.10",
    "DNS_CACHE_PORT_9153_TCP": "tcp://10.96.0.10:9153",
    "DNS_CACHE_PORT_9153_TCP_PROTO": "tcp",
    "DNS_CACHE_PORT_9153_TCP_PORT": "9153",
    "DNS_CACHE_PORT_9153_TCP_ADDR": "10.96.0.10",
}


def v6_env(prefix: str, host: str) -> dict[str, str]:
    return {
        f"{prefix}_SERVICE_HOST": host,
        f"{prefix}_SERVICE_PORT": "80",
        f"{prefix}_SERVICE_PORT_HTTP": "80",
        f"{prefix}_PORT": f"tcp://[{host}]:80",
        f"{prefix}_PORT_80_TCP": f"tcp://[{host}]:80",
        f"{prefix}_PORT_80_TCP_PROTO": "tcp",
        f"{prefix}_PORT_80_TCP_PORT": "80",
        f"{prefix}_PORT_80_TCP_ADDR": host,
    }


CASES = [
    pytest.param([REDIS], "demo", DOCS, id="the documentation's example"),
    pytest.param(
        [REDIS_NAMED],
        "demo",
        {"REDIS_PRIMARY_SERVICE_PORT_REDIS": "6379", **DOCS},
        id="a named port adds NAME_SERVICE_PORT_<PORT>",
    ),
    pytest.param([MULTI], "demo", MULTI_ENV, id="several ports, UDP first"),
    pytest.param(
        [svc("web6", clusterIP="fd00:10:96::a", ports=[{"name": "http", "port": 80}])],
        "demo",
        v6_env("WEB6", "fd00:10:96::a"),
        id="IPv6: bracketed in URLs, bare elsewhere",
    ),
    pytest.param(
        [
            svc(
                "dual",
                clusterIPs=["fd00:10:96::b", "10.96.0.12"],
                ipFamilyPolicy="RequireDualStack",
                ports=[{"name": "http", "port": 80}],
            )
        ],
        "demo",
        v6_env("DUAL", "fd00:10:96::b"),
        id="dual-stack: the primary (IPv6) family only",
    ),
    pytest.param(
        [
            svc(
                "dual4",
                clusterIP="10.96.0.13",
                clusterIPs=["10.96.0.13", "fd00:10:96::c"],
                ipFamilies=["IPv4", "IPv6"],
                ipFamilyPolicy="PreferDualStack",
                ports=[{"port": 8080}],
            )
        ],
        "demo",
        {
            "DUAL4_SERVICE_HOST": "10.96.0.13",
            "DUAL4_SERVICE_PORT": "8080",
            "DUAL4_PORT": "tcp://10.96.0.13:8080",
            "DUAL4_PORT_8080_TCP": "tcp://10.96.0.13:8080",
            "DUAL4_PORT_8080_TCP_PROTO": "tcp",
            "DUAL4_PORT_8080_TCP_PORT": "8080",
            "DUAL4_PORT_8080_TCP_ADDR": "10.96.0.13",
        },
        id="dual-stack: the primary (IPv4) family only",
    ),
    pytest.param(
        [
            svc("db", clusterIP="None", ports=[{"port": 5432}]),
            svc("mail", type="ExternalName", externalName="smtp.example.com"),
            svc("mail2", type="ExternalName", externalName="x.example.com", ports=[{"port": 25}]),
        ],
        "demo",
        {},
        id="headless and ExternalName: none",
    ),
    pytest.param([REDIS, MASTER], "other", MASTER_ENV, id="other namespace: only the master"),
    pytest.param(
        [MASTER, REDIS, svc("web", "other", clusterIP="10.96.0.5", ports=[{"port": 80}])],
        "demo",
        {**MASTER_ENV, **DOCS},
        id="the master Service, then the namespace's, by name",
    ),
    pytest.param(
        [MASTER, svc("kubernetes", clusterIP="10.96.7.7", ports=[{"port": 6443}])],
        "demo",
        {
            "KUBERNETES_SERVICE_HOST": "10.96.7.7",
            "KUBERNETES_SERVICE_PORT": "6443",
            "KUBERNETES_PORT": "tcp://10.96.7.7:6443",
            "KUBERNETES_PORT_6443_TCP": "tcp://10.96.7.7:6443",
            "KUBERNETES_PORT_6443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_6443_TCP_PORT": "6443",
            "KUBERNETES_PORT_6443_TCP_ADDR": "10.96.7.7",
        },
        id="a namespace's own kubernetes Service replaces the master",
    ),
    pytest.param(
        [
            svc(
                "other-proxy",
                clusterIP="10.96.0.20",
                ports=[{"port": 7}],
            )
            | {
                "metadata": {
                    "name": "other-proxy",
                    "namespace": "demo",
                    "labels": {"service.kubernetes.io/service-proxy-name": "x"},
                }
            }
        ],
        "demo",
        {
            "OTHER_PROXY_SERVICE_HOST": "10.96.0.20",
            "OTHER_PROXY_SERVICE_PORT": "7",
            "OTHER_PROXY_PORT": "tcp://10.96.0.20:7",
            "OTHER_PROXY_PORT_7_TCP": "tcp://10.96.0.20:7",
            "OTHER_PROXY_PORT_7_TCP_PROTO": "tcp",
            "OTHER_PROXY_PORT_7_TCP_PORT": "7",
            "OTHER_PROXY_PORT_7_TCP_ADDR": "10.96.0.20",
        },
        id="another proxy's Service still counts for kubelet",
    ),
]


@pytest.mark.parametrize(("services", "namespace", "want"), CASES)
def test_variables_as_kubelet_builds_them(
    services: list[dict[str, Any]], namespace: str, want: dict[str, str]
) -> None:
    got = service_env(services, namespace)
    assert got.errors == ()
    assert got.variables == want


def test_order_is_service_by_service_in_kubelets_order() -> None:
    got = list(service_env([REDIS_NAMED, MASTER], "demo").variables)
    assert got[:8] == list(MASTER_ENV)  # "kubernetes" < "redis-primary"
    assert got[8:11] == [
        "REDIS_PRIMARY_SERVICE_HOST",
        "REDIS_PRIMARY_SERVICE_PORT",
        "REDIS_PRIMARY_SERVICE_PORT_REDIS",
    ]
    assert got[11] == "REDIS_PRIMARY_PORT"
    assert list(service_env([MULTI], "demo").variables) == list(MULTI_ENV)


def test_without_service_links_only_the_master_service() -> None:
    assert service_env([MASTER, REDIS], "demo", service_links=False).variables == MASTER_ENV
    assert service_env([REDIS], "demo", service_links=False).variables == {}


def test_invalid_services_are_named_and_give_nothing() -> None:
    bad = [
        svc("noip", ports=[{"port": 80}]),
        svc("badip", clusterIP="10.96.0.300", ports=[{"port": 80}]),
        svc("noports", clusterIP="10.96.0.30", ports=[{"port": 0}]),
        svc("noip", "elsewhere", clusterIP="x"),  # another namespace: not read
    ]
    got = service_env([*bad, REDIS], "demo")
    assert got.variables == DOCS
    assert [(e.name, e.message.split(";")[-1].strip()) for e in got.errors] == [
        ("noip", "Service skipped"),
        ("badip", "Service skipped"),
        ("noports", "port skipped"),
        ("noports", "Service skipped"),
    ]
    assert all(e.namespace == "demo" and e.kind == "Service" for e in got.errors)
