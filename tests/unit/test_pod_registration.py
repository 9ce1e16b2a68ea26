"""Registration from selectors: Pods matched by a Service's selector become the
EndpointSlices Kubernetes' EndpointSlice controller would write (``sources.pods``),
and the manifest source serves them in place of hand-written ones (``registration``)."""

from __future__ import annotations

import itertools
import logging
import os
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from ebpflb.model import Protocol, ServiceRef
from ebpflb.sources import pods as podlib
from ebpflb.sources.fields import _Invalid
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate

Obj = dict[str, Any]
WEB = ServiceRef("demo", "web")


def pod(
    name: str,
    ips: tuple[str, ...] = (),
    *,
    labels: Any = None,
    ready: bool | None = True,
    node: str | None = "n1",
    ports: tuple[tuple[str, int, str], ...] = (("http", 8080, "TCP"), ("echo", 9090, "UDP")),
    deleting: bool = False,
    phase: str = "Running",
    namespace: str = "demo",
    ip_field: bool = True,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {"app": "web"}}
    if labels is not None:
        meta["labels"] = labels
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: Obj = {"phase": phase}
    if ips:
        if ip_field:
            status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    spec: Obj = {
        "containers": [
            {
                "name": "server",
                "image": "x",
                "ports": [{"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports],
            }
        ]
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def service(
    name: str = "web",
    *,
    selector: Any = None,
    ips: tuple[str, ...] = ("10.96.0.10",),
    ports: tuple[Obj, ...] = (
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "echo", "port": 53, "protocol": "UDP", "targetPort": 9090},
    ),
    **spec: Any,
) -> Obj:
    families = ["IPv6" if ":" in ip else "IPv4" for ip in ips]
    body: Obj = {
        "clusterIP": ips[0],
        "clusterIPs": list(ips),
        "ipFamilies": families,
        "ports": list(ports),
        **spec,
    }
    if selector is not None:
        body["selector"] = selector
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": body,
    }


def hand_slice(name: str, owner: str, address: str) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "labels": {"kubernetes.io/service-name": owner},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080},
            {"name": "echo", "port": 9090, "protocol": "UDP"},
        ],
        "endpoints": [{"addresses": [address]}],
    }


def derive(svc: Obj, objs: list[Obj], zones: dict[str, str] | None = None) -> list[Obj]:
    wanted = podlib.selector(svc)
    assert wanted is not None
    parsed = [podlib.read_pod(o) for o in objs]
    return podlib.derive_slices(
        svc, [p for p in parsed if podlib.matches(p.labels, wanted)], zones=zones
    )


def endpoints(slices: list[Obj]) -> dict[tuple[str, str], Obj]:
    """(addressType, address) -> endpoint."""
    return {(s["addressType"], e["addresses"][0]): e for s in slices for e in s["endpoints"]}


# --- selector matching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "selector", "match"),
    [
        ({"app": "web"}, {"app": "web"}, True),
        ({"app": "web", "tier": "front"}, {"app": "web"}, True),
        ({"app": "web"}, {"app": "web", "tier": "front"}, False),
        ({"app": "api"}, {"app": "web"}, False),
        ({}, {"app": "web"}, False),
        ({"app": ""}, {"app": ""}, True),
        ({"example.com/app": "web"}, {"example.com/app": "web"}, True),
    ],
)
def test_selector_matching(labels: dict[str, str], selector: dict[str, str], match: bool) -> None:
    assert podlib.matches(labels, selector) is match


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"selector": {"app": "web"}}, {"app": "web"}),
        ({}, None),  # no selector: endpoints are someone else's
        ({"selector": {}}, None),  # empty: the same, as Kubernetes reads it
        ({"selector": {"app": "web"}, "type": "ExternalName"}, None),
    ],
)
def test_selector_of_a_service(spec: Obj, expected: dict[str, str] | None) -> None:
    assert podlib.selector({"kind": "Service", "spec": spec}) == expected


@pytest.mark.parametrize(
    "labels",
    [
        {"app": 5},  # not a string
        {"app": "bad value!"},
        {"app": "x" * 64},
        {"-app": "web"},
        {"Example.COM/app": "web"},  # a prefix is a lowercase DNS subdomain
        ["app=web"],
    ],
)
def test_malformed_labels_make_a_pod_invalid(labels: Any) -> None:
    with pytest.raises(_Invalid):
        podlib.read_pod(pod("p", ("10.244.0.11",), labels=labels))
    assert podlib.pod_problems(pod("p", ("10.244.0.11",), labels=labels))


# --- endpoint conditions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "deleting", "publish", "conditions"),
    [
        (True, False, False, (True, True, False)),
        (False, False, False, (False, False, False)),
        (None, False, False, (False, False, False)),  # no Ready condition yet
        (True, True, False, (False, True, True)),  # terminating, still serving: drains
        (False, True, False, (False, False, True)),
        (False, False, True, (True, False, False)),  # publishNotReadyAddresses
        (True, True, True, (True, True, True)),
    ],
)
def test_conditions(
    ready: bool | None, deleting: bool, publish: bool, conditions: tuple[bool, bool, bool]
) -> None:
    svc = service(selector={"app": "web"}, publishNotReadyAddresses=publish)
    (sl,) = derive(svc, [pod("p", ("10.244.0.11",), ready=ready, deleting=deleting)])
    (ep,) = sl["endpoints"]
    c = ep["conditions"]
    assert (c["ready"], c["serving"], c["terminating"]) == conditions


def test_a_not_ready_pod_gets_no_new_connections_after_translation() -> None:
    svc = service(selector={"app": "web"})
    slices = derive(svc, [pod("a", ("10.244.0.11",)), pod("b", ("10.244.0.12",), ready=False)])
    entry = translate([svc], slices).state.entries
    http = next(e for e in entry.values() if e.frontend.port == 80)
    assert {str(b.address) for b in http.backends} == {"10.244.0.11", "10.244.0.12"}
    assert {str(b.address) for b in http.active} == {"10.244.0.11"}


# --- ports ----------------------------------------------------------------------------


def test_named_port_with_differing_numbers_splits_the_slices() -> None:
    svc = service(selector={"app": "web"})
    a = pod("a", ("10.244.0.11",))
    b = pod("b", ("10.244.0.12",), ports=(("http", 8081, "TCP"), ("echo", 9090, "UDP")))
    c = pod("c", ("10.244.0.13",))
    slices = derive(svc, [a, b, c])
    by_port = {
        next(p["port"] for p in s["ports"] if p["name"] == "http"): [
            e["addresses"][0] for e in s["endpoints"]
        ]
        for s in slices
    }
    assert by_port == {8080: ["10.244.0.11", "10.244.0.13"], 8081: ["10.244.0.12"]}
    assert len({s["metadata"]["name"] for s in slices}) == 2
    state = translate([svc], slices).state
    http = next(e for e in state.entries.values() if e.frontend.port == 80)
    assert sorted((str(b.address), b.port) for b in http.backends) == [
        ("10.244.0.11", 8080),
        ("10.244.0.12", 8081),
        ("10.244.0.13", 8080),
    ]
    udp = next(e for e in state.entries.values() if e.frontend.protocol is Protocol.UDP)
    assert {b.port for b in udp.backends} == {9090}


def test_named_port_lookup_respects_protocol_and_absence() -> None:
    svc = service(
        selector={"app": "web"},
        ports=({"name": "http", "port": 80, "targetPort": "http", "protocol": "UDP"},),
    )
    (sl,) = derive(svc, [pod("a", ("10.244.0.11",))])  # http is TCP only on the pod
    assert sl["ports"] == []
    assert (
        translate([svc], [sl])
        .state.entries[next(iter(translate([svc], [sl]).state.entries))]
        .backends
        == ()
    )


def test_target_port_missing_means_the_service_port() -> None:
    svc = service(selector={"app": "web"}, ports=({"name": "", "port": 7000},))
    (sl,) = derive(svc, [pod("a", ("10.244.0.11",))])
    assert sl["ports"] == [{"name": "", "port": 7000, "protocol": "TCP"}]


# --- families, node, zone, labels -----------------------------------------------------


def test_both_families() -> None:
    svc = service(selector={"app": "web"}, ips=("10.96.0.10", "fd00:10:96::a"))
    objs = [
        pod("a", ("10.244.0.11", "fd00:10:244::b")),
        pod("b", ("10.244.0.12",)),  # IPv4 only: absent from the IPv6 slice
        pod("c", ("fd00:10:244::d",), ip_field=False),
    ]
    slices = derive(svc, objs)
    assert sorted(endpoints(slices)) == [
        ("IPv4", "10.244.0.11"),
        ("IPv4", "10.244.0.12"),
        ("IPv6", "fd00:10:244::b"),
        ("IPv6", "fd00:10:244::d"),
    ]
    state = translate([svc], slices).state
    assert len(state.entries) == 4
    for entry in state.entries.values():
        assert {b.address.version for b in entry.backends} == {entry.frontend.address.version}
    v6only = service(selector={"app": "web"}, ips=("fd00:10:96::b",))
    assert {s["addressType"] for s in derive(v6only, objs)} == {"IPv6"}


def test_node_zone_labels_and_target_ref() -> None:
    svc = service(selector={"app": "web"})
    (sl,) = derive(svc, [pod("a", ("10.244.0.11",), node="n1")], zones={"n1": "zone-a"})
    (ep,) = sl["endpoints"]
    assert (ep["nodeName"], ep["zone"]) == ("n1", "zone-a")
    assert ep["targetRef"] == {"kind": "Pod", "namespace": "demo", "name": "a"}
    assert sl["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "ebpflb.io/manifests",
    }
    (sl,) = derive(svc, [pod("a", ("10.244.0.11",), node="n2")], zones={"n1": "zone-a"})
    assert "zone" not in sl["endpoints"][0]


# --- the manifest source --------------------------------------------------------------

_clock = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


def write(path: Path, objs: list[Obj]) -> None:
    path.write_text(yaml.safe_dump_all(objs))
    stamp = next(_clock)
    os.utime(path, ns=(stamp, stamp))


def addresses(source: ManifestSource, ref: ServiceRef = WEB) -> dict[str, bool]:
    """address -> ready, over the Service's slices as the source serves them."""
    return {
        e["addresses"][0]: e.get("conditions", {}).get("ready", True)
        for s in source.slices_of(ref)
        for e in s["endpoints"]
    }


def test_handwritten_slices_ignored_for_selector_services_used_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path / "a.yaml",
        [
            service(selector={"app": "web"}),
            hand_slice("web-hand", "web", "10.244.0.99"),
            service("plain", ips=("10.96.0.11",)),
            hand_slice("plain-hand", "plain", "10.244.0.98"),
            pod("p1", ("10.244.0.11",)),
        ],
    )
    source = ManifestSource(tmp_path)
    with caplog.at_level(logging.WARNING):
        snap = source.load()
        source.load()  # a second read logs nothing new
    assert addresses(source) == {"10.244.0.11": True}
    assert addresses(source, ServiceRef("demo", "plain")) == {"10.244.0.98": True}
    ignored = [r.getMessage() for r in caplog.records if "web-hand" in r.getMessage()]
    assert ignored == [
        "EndpointSlice demo/web-hand is ignored: Service demo/web has a selector, so its "
        "slices are derived from the Pods that match it"
    ]
    state = translate(snap.services, snap.slices).state
    backends = {str(b.address) for e in state.entries.values() for b in e.backends}
    assert backends == {"10.244.0.11", "10.244.0.98"}


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        (pod("x", ()), "Pod demo/x has no IP (status.podIP); not registered"),
        (
            pod("x", ("10.244.0.20",), phase="Succeeded"),
            "Pod demo/x is Succeeded (status.phase); not registered",
        ),
        (
            pod("x", ("10.244.0.20",), labels={"app": "bad value!"}),
            "Pod demo/x: metadata.labels['app']: 'bad value!' is not a valid label value; "
            "not registered",
        ),
        (
            pod("x", ("10.244.0.300",)),
            "Pod demo/x: status.podIPs: '10.244.0.300' is not an IP address; not registered",
        ),
        (
            pod("x", ("10.244.0.20",), ports=(("http", 0, "TCP"),)),
            "Pod demo/x: spec.containers[0].ports[].containerPort 0 is out of range 1-65535; "
            "not registered",
        ),
    ],
)
def test_bad_pods_one_log_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: Obj, line: str
) -> None:
    write(tmp_path / "a.yaml", [service(selector={"app": "web"}), pod("ok", ("10.244.0.11",)), bad])
    source = ManifestSource(tmp_path)
    with caplog.at_level(logging.WARNING):
        source.load()
        write(tmp_path / "b.yaml", [pod("ok2", ("10.244.0.12",))])  # another change
        source.take_changes()
    lines = [r.getMessage() for r in caplog.records if "demo/x" in r.getMessage()]
    assert lines == [line]
    assert set(addresses(source)) == {"10.244.0.11", "10.244.0.12"}


def test_missing_named_port_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(
        tmp_path / "a.yaml",
        [service(selector={"app": "web"}), pod("np", ("10.244.0.11",), ports=())],
    )
    with caplog.at_level(logging.WARNING):
        ManifestSource(tmp_path).load()
    assert [r.getMessage() for r in caplog.records] == [
        "Pod demo/np has no container port named http/TCP (a targetPort of Service "
        "demo/web); not registered for that port"
    ]


def test_incremental_pod_change_touches_only_its_services(tmp_path: Path) -> None:
    write(
        tmp_path / "svc.yaml",
        [
            service(selector={"app": "web"}),
            service("api", selector={"app": "api"}, ips=("10.96.0.12",)),
            service("plain", ips=("10.96.0.11",)),
            hand_slice("plain-hand", "plain", "10.244.0.98"),
        ],
    )
    write(tmp_path / "web.yaml", [pod("w1", ("10.244.0.11",)), pod("w2", ("10.244.0.12",))])
    write(tmp_path / "api.yaml", [pod("a1", ("10.244.0.21",), labels={"app": "api"})])
    source = ManifestSource(tmp_path)
    source.load()
    api_slices = source.slices_of(ServiceRef("demo", "api"))
    assert source.take_changes().services == frozenset()

    # w2 turns not ready: only web changes, and w2 stays in its slice as not ready
    write(
        tmp_path / "web.yaml",
        [pod("w1", ("10.244.0.11",)), pod("w2", ("10.244.0.12",), ready=False)],
    )
    changes = source.take_changes()
    assert changes.services == frozenset({WEB})
    assert changes.slice_objects == 1
    assert addresses(source) == {"10.244.0.11": True, "10.244.0.12": False}
    assert source.slices_of(ServiceRef("demo", "api"))[0] is api_slices[0]

    # w2 removed, a pod of api relabelled to web: both change
    write(tmp_path / "web.yaml", [pod("w1", ("10.244.0.11",))])
    write(tmp_path / "api.yaml", [pod("a1", ("10.244.0.21",))])
    assert source.take_changes().services == frozenset({WEB, ServiceRef("demo", "api")})
    assert addresses(source) == {"10.244.0.11": True, "10.244.0.21": True}
    assert source.slices_of(ServiceRef("demo", "api")) == ()

    # an unrelated Pod (no Service selects it) wakes nobody
    write(tmp_path / "other.yaml", [pod("o", ("10.244.0.31",), labels={"app": "none"})])
    assert source.take_changes().services == frozenset()


def test_selector_edit_switches_between_derived_and_handwritten(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        [service(), hand_slice("web-hand", "web", "10.244.0.99"), pod("p", ("10.244.0.11",))],
    )
    source = ManifestSource(tmp_path)
    source.load()
    assert addresses(source) == {"10.244.0.99": True}
    write(
        tmp_path / "a.yaml",
        [
            service(selector={"app": "web"}),
            hand_slice("web-hand", "web", "10.244.0.99"),
            pod("p", ("10.244.0.11",)),
        ],
    )
    assert source.take_changes().services == frozenset({WEB})
    assert addresses(source) == {"10.244.0.11": True}


def test_invalid_edit_of_a_live_pod_keeps_its_last_good_version(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", [service(selector={"app": "web"}), pod("p", ("10.244.0.11",))])
    source = ManifestSource(tmp_path)
    source.load()
    write(
        tmp_path / "a.yaml",
        [service(selector={"app": "web"}), pod("p", ("10.244.0.11",), labels={"app": 5})],
    )
    snap = source.load()
    assert addresses(source) == {"10.244.0.11": True}
    assert any("Pod demo/p" in str(e) and "last good" in str(e) for e in snap.errors)
    # a valid edit that unregisters it (no IP any more) is applied
    write(tmp_path / "a.yaml", [service(selector={"app": "web"}), pod("p", ())])
    source.load()
    assert addresses(source) == {}


def test_pod_ips_parse() -> None:
    p = podlib.read_pod(pod("a", ("fd00::1", "10.0.0.1")))
    assert p.ips == (ip_address("fd00::1"), ip_address("10.0.0.1"))
    with pytest.raises(_Invalid, match="two IPv4"):
        podlib.read_pod(pod("a", ("10.0.0.1", "10.0.0.2")))


def test_a_cluster_dump_without_pods_keeps_its_slices(tmp_path: Path) -> None:
    """`kubectl get svc,endpointslices -o yaml` gives Services with selectors and the
    controller's slices, no Pods: they are served as written. Once the namespace has a
    Pod, its selector Services are registered from Pods instead."""
    dump = hand_slice("web-abcde", "web", "10.244.0.99")
    dump["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = (
        "endpointslice-controller.k8s.io"
    )
    write(tmp_path / "a.yaml", [service(selector={"app": "web"}), dump])
    source = ManifestSource(tmp_path)
    source.load()
    assert addresses(source) == {"10.244.0.99": True}
    write(tmp_path / "b.yaml", [pod("p1", ("10.244.0.11",))])
    source.load()
    assert addresses(source) == {"10.244.0.11": True}
