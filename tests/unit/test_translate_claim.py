"""Claiming frontends: the first Service in (namespace, name) order that asks for a
frontend gets it, and every later one is told. Translation takes a shortcut when no
frontend is asked for twice (one sort and one dict of every entry, no claim per
entry); these tests check that it is taken, and that it gives what claiming each
frontend in turn gives, on random Services that often ask for the same frontends
(shared ClusterIPs, externalIPs, load-balancer IPs and node ports, both families)."""

from __future__ import annotations

import importlib
import ipaddress
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import FrontendKind, ServiceRef
from ebpflb.sources.compact import compact
from ebpflb.sources.translate import Translation, translate_dicts

translate_module = importlib.import_module("ebpflb.sources.translate")

_pick = st.sampled_from
_CLUSTER_IPS = ["10.96.0.1", "10.96.0.2", "fd00::1", "fd00::2", "None"]
_OUTSIDE_IPS = ["192.0.2.1", "192.0.2.2", "10.96.0.1", "2001:db8::1"]
_PORTS: list[Any] = [
    [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    [{"name": "http", "port": 80, "nodePort": 30080}],
    [{"port": 53, "protocol": "UDP", "nodePort": 30053}],
    [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 443}],
    [{"name": "a", "port": 80, "protocol": "SCTP"}, {"name": "b", "port": 80, "protocol": "UDP"}],
]
_ENDPOINTS = ["10.128.0.1", "10.128.0.2", "fd00::5"]


@st.composite
def _service(draw: st.DrawFn, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": draw(_pick(["ClusterIP", "NodePort", "LoadBalancer"])),
        "clusterIP": draw(_pick(_CLUSTER_IPS)),
        "ports": draw(_pick(_PORTS)),
    }
    if draw(st.booleans()):
        spec["clusterIPs"] = draw(st.lists(_pick(_CLUSTER_IPS), min_size=1, max_size=2))
        spec["clusterIP"] = spec["clusterIPs"][0]
        spec["ipFamilyPolicy"] = draw(_pick(["SingleStack", "PreferDualStack"]))
    if draw(st.booleans()):
        spec["externalIPs"] = draw(st.lists(_pick(_OUTSIDE_IPS), max_size=3))
    if draw(st.booleans()):
        spec["externalTrafficPolicy"] = "Local"
    if draw(st.booleans()):
        spec["internalTrafficPolicy"] = "Local"
    obj: dict[str, Any] = {
        "kind": "Service",
        "metadata": {"name": f"svc-{draw(st.integers(0, i))}", "namespace": draw(_pick("ab"))},
        "spec": spec,
    }
    if draw(st.booleans()):
        ingress = [{"ip": draw(_pick(_OUTSIDE_IPS))} for _ in range(draw(st.integers(0, 2)))]
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


@st.composite
def _slice(draw: st.DrawFn, i: int) -> dict[str, Any]:
    name = f"svc-{draw(st.integers(0, i))}"
    endpoints = [
        {"addresses": [draw(_pick(_ENDPOINTS))], "conditions": {"ready": draw(st.booleans())}}
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-{i}",
            "namespace": draw(_pick("ab")),
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": draw(_pick(["IPv4", "IPv6"])),
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }


@st.composite
def _objects(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    n = draw(st.integers(1, 10))
    services = [draw(_service(i)) for i in range(n)]
    slices = [draw(_slice(i)) for i in range(draw(st.integers(0, n)))]
    if draw(st.booleans()):  # as the Kubernetes source keeps them
        return [compact("Service", s) for s in services], [
            compact("EndpointSlice", s) for s in slices
        ]
    return services, slices


def _shown(t: Translation) -> tuple[Any, ...]:
    """Everything a translation says, in its order (a frontend's kind too, which its
    equality leaves out)."""
    return (
        [(k, v, v.frontend.kind) for k, v in t.entries.items()],
        list(t.services.items()),
        list(t.keys_of.items()),
        t.errors,
    )


def _claimed_in_turn(services: list[Any], slices: list[Any], **kw: Any) -> Translation:
    """translate_dicts as if some frontend were always asked for twice: every frontend
    claimed in turn (the general path)."""
    with mock.patch.object(translate_module, "_in_frontend_order", lambda entries: {}):
        return translate_dicts(services, slices, **kw)


SERVICE = "kubernetes.io/service-name"
_NODE_ADDRESSES = [(), ("10.0.0.1",), ("10.0.0.1", "fd00::a")]


@settings(max_examples=400, deadline=None)
@given(_objects(), _pick(_NODE_ADDRESSES), _pick([None, (4,), (6,)]))
def test_the_shortcut_claims_as_claiming_each_frontend_in_turn(
    objects: tuple[list[Any], list[Any]], addresses: tuple[str, ...], families: Any
) -> None:
    services, slices = objects
    kw: dict[str, Any] = {
        "node_name": "node-a",
        "node_addresses": tuple(map(ipaddress.ip_address, addresses)),
        "node_families": families,
    }
    assert _shown(translate_dicts(services, slices, **kw)) == _shown(
        _claimed_in_turn(services, slices, **kw)
    )


def _svc(name: str, cluster_ip: str, external: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]}
    if external:
        spec["externalIPs"] = external
    return {"kind": "Service", "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def test_no_frontend_asked_for_twice_takes_the_shortcut() -> None:
    services = [_svc("b", "10.96.0.2"), _svc("a", "10.96.0.1", ["192.0.2.1"])]
    with mock.patch.object(translate_module, "_claim", side_effect=AssertionError("claimed")):
        t = translate_dicts(services, [])
    assert [str(e.frontend) for e in t.entries.values()] == [
        "10.96.0.1:80/TCP",
        "10.96.0.2:80/TCP",
        "192.0.2.1:80/TCP",
    ]
    assert list(t.keys_of) == [ServiceRef("demo", "a"), ServiceRef("demo", "b")]
    assert t.keys_of[ServiceRef("demo", "a")] == tuple(
        k for k in t.entries if str(k[0]) != "10.96.0.2"
    )
    assert t.errors == ()


def test_a_frontend_asked_for_twice_goes_to_the_first_service_by_name() -> None:
    # "z" comes first in the input and asks first for 192.0.2.1; "a" wins it by name
    services = [
        _svc("z", "10.96.0.3", ["192.0.2.1"]),
        _svc("a", "10.96.0.1", ["192.0.2.1"]),
        _svc("m", "10.96.0.2"),
    ]
    t = translate_dicts(services, [])
    owner = {str(e.frontend): e.port_name.service.name for e in t.entries.values()}
    assert owner == {
        "10.96.0.1:80/TCP": "a",
        "10.96.0.2:80/TCP": "m",
        "10.96.0.3:80/TCP": "z",
        "192.0.2.1:80/TCP": "a",
    }
    assert [e.frontend.kind for e in t.entries.values()][-1] is FrontendKind.EXTERNAL
    assert len(t.keys_of[ServiceRef("demo", "z")]) == 1  # its ClusterIP only
    assert len(t.keys_of[ServiceRef("demo", "a")]) == 2
    assert [(e.name, e.message) for e in t.errors] == [
        ("z", "external frontend 192.0.2.1:80/TCP is already used by Service demo/a; skipped")
    ]


@settings(max_examples=400, deadline=None)
@given(_objects(), _pick(_NODE_ADDRESSES), _pick([None, (4,), (6,)]), st.booleans())
def test_the_c_entries_are_the_python_ones(
    objects: tuple[list[Any], list[Any]], addresses: tuple[str, ...], families: Any, local: bool
) -> None:
    """ebpflb/_fullsync.c makes a ClusterIP-only Service's entries as the Python does
    (every field, each frontend's kind and key too), whether it runs the loop over the
    Services (services) or is called per Service (entries)."""
    services, slices = objects
    kw: dict[str, Any] = {
        "node_name": "node-a" if local else None,
        "node_addresses": tuple(map(ipaddress.ip_address, addresses)),
        "node_families": families,
    }
    native = translate_dicts(services, slices, **kw)
    with mock.patch.object(translate_module, "_native_services", None):
        entries_only = translate_dicts(services, slices, **kw)  # the loop in Python
        with mock.patch.object(translate_module, "_native_entries", None):
            python = translate_dicts(services, slices, **kw)
    for made in (native, entries_only):
        assert _shown(made) == _shown(python)
        assert [repr(e) for e in made.entries.values()] == [
            repr(e) for e in python.entries.values()
        ]
        assert [e.frontend.key for e in made.entries.values()] == list(made.entries)


def test_a_cluster_ip_service_is_made_in_c() -> None:
    service = _svc("a", "10.96.0.1")
    service["spec"]["ports"] = [{"name": "http", "port": 80}, {"name": "dns", "port": 53}]
    endpoint = {"addresses": ["10.128.0.2"], "conditions": {"ready": True}}
    other = {"addresses": ["10.128.0.1"], "conditions": {"ready": True}}
    slice_ = {
        "kind": "EndpointSlice",
        "metadata": {"name": "a-1", "namespace": "demo", "labels": {SERVICE: "a"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [endpoint, other],
    }
    with mock.patch.object(
        translate_module, "_native_services", wraps=translate_module._native_services
    ) as looped:
        t = translate_dicts([service], [slice_])
    assert looped.call_count == 1  # the whole loop in C
    with (
        mock.patch.object(translate_module, "_native_services", None),
        mock.patch.object(
            translate_module, "_native_entries", wraps=translate_module._native_entries
        ) as made,
    ):
        assert translate_dicts([service], [slice_]) == t
    assert made.call_count == 1
    http, dns = sorted(t.entries.values(), key=lambda e: e.frontend.port, reverse=True)
    assert [str(b) for b in http.backends] == ["10.128.0.1:8080", "10.128.0.2:8080"]
    assert dns.backends == () and dns.port_name.port == "dns"
    assert http.frontend.kind is FrontendKind.CLUSTER_IP
    assert http.frontend.key == (ipaddress.ip_address("10.96.0.1"), 80, http.frontend.protocol)


def test_what_the_c_loop_leaves_to_python_is_translated_there() -> None:
    """A Local policy on a named node, a NodePort, an external IP: each Service is
    translated in Python between Services the C loop takes, in claim order."""
    local = _svc("b", "10.96.0.2")
    local["spec"]["internalTrafficPolicy"] = "Local"
    node_port = _svc("c", "10.96.0.3")
    node_port["spec"].update(
        type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]
    )
    services = [_svc("a", "10.96.0.1"), local, node_port, _svc("d", "10.96.0.4", ["192.0.2.1"])]
    slices = [
        {
            "kind": "EndpointSlice",
            "metadata": {"name": f"{n}-1", "namespace": "demo", "labels": {SERVICE: n}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.128.0.1"], "conditions": {"ready": True}}],
        }
        for n in "abcd"
    ]
    kw: dict[str, Any] = {
        "node_name": "node-a",
        "node_addresses": (ipaddress.ip_address("10.0.0.1"),),
    }
    t = translate_dicts(services, slices, **kw)
    with (
        mock.patch.object(translate_module, "_native_services", None),
        mock.patch.object(translate_module, "_native_entries", None),
    ):
        assert _shown(t) == _shown(translate_dicts(services, slices, **kw))
    by_port = {(str(k[0]), k[1]): e for k, e in t.entries.items()}
    assert by_port[("10.96.0.2", 80)].backends == ()  # no endpoint on node-a: Local
    assert by_port[("10.96.0.2", 80)].drop_when_empty
    assert by_port[("10.0.0.1", 30080)].frontend.kind is FrontendKind.NODE_PORT
    assert by_port[("192.0.2.1", 80)].frontend.kind is FrontendKind.EXTERNAL
    assert len(by_port[("10.96.0.1", 80)].backends) == 1
    assert list(t.keys_of) == [ServiceRef("demo", n) for n in "abcd"]
