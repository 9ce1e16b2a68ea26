"""A Service or EndpointSlice of the usual shape is kept as one slotted object
(``CompactService``, ``CompactSlice``): it reads as the dict ``compact`` made before
(every Mapping method), compares as it does (with dicts and with its own kind), and
translates to exactly what that dict translates to, errors included. Every other
object stays a dict, so that translation still reports it by name."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.dns.records import service_records
from ebpflb.sources.compact import _compact_dict, compact
from ebpflb.sources.endpointslices import CompactSlice, PackedEndpoints
from ebpflb.sources.envvars import service_env
from ebpflb.sources.fields import TRIGGER_TIME_ANNOTATION, CompactMeta, _identity
from ebpflb.sources.services import CompactService
from ebpflb.sources.tracker import ChangeTracker, object_key, slice_owner
from tests.unit.test_compact_packed import _same, _translate
from tests.unit.test_translate import ep, eps, port, sport, svc

_ABSENT = object()
_SHAPED = {  # fields a CompactService may have besides its ClusterIPs
    "ipFamilies",
    "ipFamilyPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
    "internalTrafficPolicy",
    "externalTrafficPolicy",
    "loadBalancerSourceRanges",
    "publishNotReadyAddresses",
    "trafficDistribution",
    "selector",
    "clusterIPs",
}


def _compact(kind: str, obj: dict[str, Any]) -> Any:
    """``compact``'s object, as what it is (typed as the dict it reads as)."""
    return compact(kind, obj)


def _pick(draw: st.DrawFn, values: list[Any]) -> Any:
    return draw(st.sampled_from(values))


def _rarely(draw: st.DrawFn, n: int) -> bool:
    """True once in ``n + 1`` (and not in the simplest example)."""
    return draw(st.integers(0, n)) == n


@st.composite
def _service(draw: st.DrawFn) -> dict[str, Any]:
    """A Service as the API server lists it: mostly of the usual shape, often not."""
    obj: dict[str, Any] = {}
    for key, values in (
        ("kind", ["Service"] * 18 + [_ABSENT, "Pod"]),
        ("apiVersion", ["v1"] * 18 + [_ABSENT, "v2"]),
    ):
        value = _pick(draw, values)
        if value is not _ABSENT:
            obj[key] = value
    meta: dict[str, Any] = {
        "name": _pick(draw, ["web"] * 6 + ["db"] * 3 + ["", 7]),
        "namespace": _pick(draw, ["demo", "demo", "other"]),
        "uid": "u-1",  # not read: dropped
    }
    labels = _pick(
        draw,
        [
            _ABSENT,
            _ABSENT,
            {},
            {"app": "web"},  # not read: {} kept
            {"app": "web"},
            {"service.kubernetes.io/service-proxy-name": "other"},
            {"service.kubernetes.io/service-proxy-name": ""},
        ],
    )
    if labels is not _ABSENT:
        meta["labels"] = labels
    if _rarely(draw, 9):
        meta["annotations"] = {"service.kubernetes.io/topology-mode": "Auto"}
    elif _rarely(draw, 9):  # a slice's annotation on a Service: kept as it came
        meta["annotations"] = {TRIGGER_TIME_ANNOTATION: "2026-12-05T10:00:00Z"}
    obj["metadata"] = meta
    spec: dict[str, Any] = {}
    ip = _pick(draw, ["10.96.0.10"] * 4 + ["10.96.0.11", "fd00:96::a", "None", _ABSENT, 7])
    listed = "10.96.0.10" if ip is _ABSENT else ip
    fields: list[tuple[str, list[Any]]] = [
        ("type", ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", 5]),
        ("clusterIP", [ip]),
        (
            "clusterIPs",
            [[listed], [listed], [listed, "fd00:96::a"], ["10.96.0.12"], [], "10.96.0.10"],
        ),
        ("ipFamilies", [["IPv4"], ["IPv6"], ["IPv4", "IPv6"], "IPv4"]),
        ("ipFamilyPolicy", ["SingleStack", "PreferDualStack", "Dual"]),
        (
            "ports",
            [
                [port("http", 80)],
                [port("http", 80), port("dns", 53, "UDP")],
                [port("http", 80, node_port=30080)],
                [port("http", 70000)],
                [port(None, 80), port(None, 81)],
                "not a list",
            ],
        ),
        ("sessionAffinity", ["None", "ClientIP", "Sticky"]),
        (
            "sessionAffinityConfig",
            [{"clientIP": {"timeoutSeconds": 60}}, {"clientIP": {"timeoutSeconds": 0}}],
        ),
        ("internalTrafficPolicy", ["Cluster", "Local", "Nearby"]),
        ("externalTrafficPolicy", ["Cluster", "Local"]),
        ("healthCheckNodePort", [30999, 0]),
        ("externalIPs", [["192.0.2.1"], ["x"]]),
        ("externalName", ["db.example.com"]),
        ("loadBalancerSourceRanges", [["192.0.2.0/24"], ["x"]]),
        ("publishNotReadyAddresses", [True, False, 1]),
        ("trafficDistribution", ["PreferClose", "Anywhere"]),
        ("selector", [{"app": "web"}]),  # not read: dropped
    ]
    for key, values in fields:
        if key in ("type", "clusterIP", "ports"):
            if _rarely(draw, 9):  # mostly present
                continue
        elif not _rarely(draw, 3 if key in _SHAPED else 23):  # mostly absent
            continue
        value = _pick(draw, values)
        if value is not _ABSENT:
            spec[key] = copy.deepcopy(value)
    obj["spec"] = spec
    status = _pick(
        draw,
        [
            _ABSENT,
            _ABSENT,
            {"loadBalancer": {}},
            {},
            {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}},
            "x",
        ],
    )
    if status is not _ABSENT:
        obj["status"] = copy.deepcopy(status)
    return obj


@st.composite
def _slice(draw: st.DrawFn) -> dict[str, Any]:
    """An EndpointSlice: mostly of the usual shape, often not."""
    family = _pick(draw, ["IPv4", "IPv4", "IPv4", "IPv6", "IPv6", "FQDN", 4])
    addresses = ["10.244.0.7", "10.244.0.8"] if family != "IPv6" else ["fd00::7", "fd00::8"]
    endpoints = [
        ep(
            "x" if _rarely(draw, 9) else _pick(draw, addresses),
            _pick(draw, ["node-a", "node-b", None]),
            ready=True,
        )
        for _ in range(0 if _rarely(draw, 7) else draw(st.integers(1, 3)))
    ]
    obj = eps(
        _pick(draw, ["web-1", "web-2", ""]),
        _pick(draw, ["web", "web", "web", "db", None]),
        copy.deepcopy(
            _pick(draw, [[sport("http", 8080)], [sport("http", 8080), sport("dns", 53)], "x"])
        ),
        *endpoints,
        address_type=family,
    )
    for key, values in (
        ("kind", ["EndpointSlice", _ABSENT, "Endpoints"]),
        ("apiVersion", ["discovery.k8s.io/v1", _ABSENT, "discovery.k8s.io/v1beta1"]),
    ):
        if _rarely(draw, 5):
            value = _pick(draw, values)
            if value is _ABSENT:
                del obj[key]
            else:
                obj[key] = value
    if _rarely(draw, 5):
        del obj["ports"]
    if _rarely(draw, 3):
        obj["metadata"]["labels"]["kubernetes.io/hostname"] = "x"  # not read: dropped
    if _rarely(draw, 9):
        obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z1"  # kept
    if not _rarely(draw, 3):  # the EndpointSlice controller stamps most slices: kept
        stamp = _pick(draw, ["2026-12-05T10:00:00Z"] * 4 + ["2026-12-05T10:00:01Z", 7])
        annotations = {TRIGGER_TIME_ANNOTATION: stamp}
        if _rarely(draw, 5):
            annotations["example.com/not-read"] = "x"  # dropped
        obj["metadata"]["annotations"] = annotations
    return obj


def _reads_as(small: Any, plain: dict[str, Any]) -> None:
    """``small`` reads as ``plain`` through every Mapping method."""
    assert small == plain and plain == small
    assert (small != plain) is False and (plain != small) is False
    assert dict(small) == plain and len(small) == len(plain)
    assert list(small) == list(plain) and list(small.keys()) == list(plain.keys())
    assert list(small.items()) == list(plain.items())
    assert list(small.values()) == list(plain.values())
    for key in plain:
        assert key in small and small[key] == plain[key] and small.get(key) == plain[key]
    missing: list[Any] = ["status", "spec", "endpoints", "addressType", "other", 7]
    for absent in missing:
        if absent not in plain:
            assert absent not in small and small.get(absent) is None
            assert small.get(absent, 5) == 5
            with pytest.raises(KeyError):
                small[absent]
    assert small.keys() == plain.keys() and (small.items() == plain.items())


@settings(max_examples=400, deadline=None)
@given(_service(), _slice())
def test_compact_objects_read_and_translate_as_the_dicts(
    service: dict[str, Any], sl: dict[str, Any]
) -> None:
    before = copy.deepcopy((service, sl))
    small, small_slice = _compact("Service", service), _compact("EndpointSlice", sl)
    assert (service, sl) == before  # the input is left alone
    plain = _compact_dict("Service", copy.deepcopy(service))
    plain_slice = _compact_dict("EndpointSlice", copy.deepcopy(sl))
    assert type(small) in (dict, CompactService) and type(small_slice) in (dict, CompactSlice)
    _reads_as(small, plain)
    _reads_as(small_slice, plain_slice)
    assert _identity(small) == _identity(plain) and _identity(small_slice) == _identity(sl)
    reference = _translate([service], [sl])
    _same(_translate([plain], [plain_slice]), reference)
    _same(_translate([small], [small_slice]), reference)
    _same(_translate([small], [small_slice]), reference)  # nothing is used up
    assert service_records(small, [small_slice]) == service_records(plain, [plain_slice])
    assert service_env([small], "demo") == service_env([plain], "demo")
    try:
        key = object_key(plain)
    except ValueError:
        assert type(small) is dict  # a Service without a name is never compacted
    else:
        assert object_key(small) == key
    assert slice_owner(small_slice) == slice_owner(plain_slice)


def _assert_compare_as_dicts(kind: str, a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    """Two compacted objects of ``kind`` are equal (both ways) exactly when their dicts
    are; ``same``: b a deep copy of a."""
    if same:
        b = copy.deepcopy(a)
    small_a, small_b = _compact(kind, a), _compact(kind, b)
    expected = _compact_dict(kind, a) == _compact_dict(kind, b)
    assert (small_a == small_b) is expected and (small_a != small_b) is not expected
    assert (small_b == small_a) is expected


@settings(max_examples=300, deadline=None)
@given(_service(), _service(), st.booleans())
def test_services_compare_as_their_dicts(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    _assert_compare_as_dicts("Service", a, b, same)


@settings(max_examples=300, deadline=None)
@given(_slice(), _slice(), st.booleans())
def test_slices_compare_as_their_dicts(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    _assert_compare_as_dicts("EndpointSlice", a, b, same)


def _api_service(name: str = "web", ip: str = "10.96.0.10") -> dict[str, Any]:
    """A ClusterIP Service as a real API server lists it (defaults filled in)."""
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "uid": "8a3c",
            "resourceVersion": "41",
            "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        },
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
            "selector": {"app": name},
            "clusterIP": ip,
            "clusterIPs": [ip],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


def _api_slice(name: str = "web-x7k2p", service: str = "web") -> dict[str, Any]:
    obj = eps(
        name,
        service,
        [sport("http", 8080, "TCP")],
        *(ep(f"10.244.0.{i}", "node-a", ready=True, serving=True) for i in range(1, 6)),
    )
    obj["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "controller"
    return obj


@pytest.mark.parametrize(
    "make",
    [
        _api_service,
        lambda: svc("web", port("http", 80)),  # no status, labels {}
        lambda: {  # the bench's: no labels, no status
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "svc-1", "namespace": "bench"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.2", "ports": [port("http", 80)]},
        },
        lambda: svc("web", port("http", 80), ip="None"),  # headless
        lambda: svc("web", port("http", 80), ip="fd00:96::a", ipFamilies=["IPv6"]),
        lambda: svc("web", port("http", 80, node_port=30080), type="LoadBalancer"),
    ],
)
def test_usual_services_are_compact_and_share_their_shape(make: Callable[[], Any]) -> None:
    a, b = _compact("Service", make()), _compact("Service", make())
    assert type(a) is CompactService and type(b) is CompactService
    assert a.shape is b.shape  # one shape for the Services of one shape
    assert a == b and a.spec == b.spec and a.spec is not b.spec


def test_a_service_is_a_fifth_of_its_dicts_and_one_shape_for_many() -> None:
    small = _compact("Service", _api_service())
    assert type(small) is CompactService
    assert small.metadata == {"name": "web", "namespace": "demo", "labels": {}}
    assert type(small.metadata) is CompactMeta
    assert small["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert small["status"] == {"loadBalancer": {}}
    other = _compact("Service", _api_service("db", "10.96.0.11"))
    assert type(other) is CompactService and other.shape is small.shape
    assert other != small and other.spec["clusterIP"] == "10.96.0.11"


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.pop("apiVersion"),
        lambda o: o.update(apiVersion="v2"),
        lambda o: o.pop("kind"),
        lambda o: o["metadata"].update(labels={"service.kubernetes.io/service-proxy-name": "x"}),
        lambda o: o["metadata"].update(annotations={"service.kubernetes.io/topology-mode": "Auto"}),
        lambda o: o["metadata"].pop("name"),
        lambda o: o["metadata"].update(name=7),
        lambda o: o["spec"].pop("clusterIP"),
        lambda o: o["spec"].update(clusterIP=7),
        lambda o: o["spec"].update(clusterIPs=["10.96.0.10", "fd00::a"]),
        lambda o: o["spec"].update(clusterIPs=["10.96.0.11"]),
        lambda o: o["spec"].update(externalIPs=["192.0.2.1"]),
        lambda o: o["spec"].update(type="ExternalName", externalName="db.example.com"),
        lambda o: o["spec"].update(healthCheckNodePort=30999),
        lambda o: o["spec"].update(type=5),
        lambda o: o["spec"].update(publishNotReadyAddresses=1),
        lambda o: o.update(spec="x"),
        lambda o: o.pop("spec"),
        lambda o: o.update(status={"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}),
        lambda o: o.update(status="x"),
    ],
)
def test_unusual_services_stay_dicts(edit: Callable[[dict[str, Any]], Any]) -> None:
    obj = _api_service()
    edit(obj)
    small = _compact("Service", copy.deepcopy(obj))
    assert type(small) is dict
    assert small == _compact_dict("Service", obj)
    _same(_translate([small], []), _translate([obj], []))


def test_a_slice_is_one_object_and_reads_its_endpoints_packed() -> None:
    small = _compact("EndpointSlice", _api_slice())
    assert type(small) is CompactSlice
    assert type(small.metadata) is CompactMeta and small.metadata.value == "web"
    assert small["metadata"] == {
        "name": "web-x7k2p",
        "namespace": "demo",
        "labels": {"kubernetes.io/service-name": "web"},
    }
    assert type(small["endpoints"]) is PackedEndpoints and len(small["endpoints"]) == 5
    assert small["addressType"] == "IPv4" and small["ports"] == [sport("http", 8080, "TCP")]
    other = _compact("EndpointSlice", _api_slice("db-a", "db"))
    assert type(other) is CompactSlice and other.ports is small.ports and other != small
    assert other.head is small.head  # one family, port list and node: one head
    spread = _api_slice()
    spread["endpoints"][0]["nodeName"] = "node-b"
    apart = _compact("EndpointSlice", spread)
    assert type(apart) is CompactSlice and apart.head[2] is None and apart.places is not None
    assert apart != small and apart["endpoints"][1] == small["endpoints"][1]


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.pop("apiVersion"),
        lambda o: o.update(kind="Endpoints"),
        lambda o: o.update(addressType="FQDN"),
        lambda o: o.update(addressType=["IPv4"]),  # unhashable: once a crash
        lambda o: o.pop("ports"),
        lambda o: o.update(endpoints=[]),
        lambda o: o.update(endpoints=None),
        lambda o: o["endpoints"].append({"addresses": ["x"]}),
        lambda o: o["endpoints"].append({"addresses": ["fd00::1"]}),
        lambda o: o["metadata"].update(labels={}),
        lambda o: o["metadata"]["labels"].update({"kubernetes.io/service-name": ""}),
        lambda o: o["metadata"]["labels"].update({"topology.kubernetes.io/zone": "z1"}),
        lambda o: o["metadata"].update(name=""),
    ],
)
def test_unusual_slices_stay_dicts(edit: Callable[[dict[str, Any]], Any]) -> None:
    obj = _api_slice()
    edit(obj)
    small = _compact("EndpointSlice", copy.deepcopy(obj))
    assert type(small) is dict
    assert small == _compact_dict("EndpointSlice", obj)
    service = svc("web", port("http", 80))
    _same(_translate([service], [small]), _translate([service], [obj]))


def test_malformed_compact_objects_are_still_reported_by_name() -> None:
    """Fields a compact object holds as they were (ports, policies) are checked as
    in the dict: the error names the object."""
    bad = _api_service()
    bad["spec"]["internalTrafficPolicy"] = "Nearby"
    bad["spec"]["ports"] = [port("http", 80), port("http", 81)]
    small = _compact("Service", bad)
    assert type(small) is CompactService
    bad_slice = _api_slice()
    bad_slice["ports"] = [sport("http", 70000)]
    small_slice = _compact("EndpointSlice", bad_slice)
    assert type(small_slice) is CompactSlice
    got = _translate([small], [small_slice])
    assert [str(e) for e in got.errors] == [
        "EndpointSlice demo/web-x7k2p: ports[0]: port 70000 is out of range 1-65535; "
        "slice port skipped",
        "Service demo/web: spec.internalTrafficPolicy 'Nearby' is not Cluster or Local; "
        "Service skipped",
    ]
    _same(got, _translate([bad], [bad_slice]))


def test_compact_objects_compare_without_making_dicts() -> None:
    """A relist compares each held object with the new one: by slots."""
    a, b = _compact("Service", _api_service()), _compact("Service", _api_service())
    c, d = _compact("EndpointSlice", _api_slice()), _compact("EndpointSlice", _api_slice())

    def made(self: Any) -> Any:
        raise AssertionError("a dict was made")

    with (
        mock.patch.object(CompactService, "spec", property(made)),
        mock.patch.object(CompactService, "metadata", property(made)),
        mock.patch.object(CompactSlice, "endpoints", property(made)),
        mock.patch.object(CompactSlice, "metadata", property(made)),
    ):
        assert a == b and (a != b) is False and c == d
        assert a != _compact("Service", _api_service(ip="10.96.0.11"))
        assert c != _compact("EndpointSlice", _api_slice(service="db"))


def test_a_relist_of_equal_objects_changes_nothing() -> None:
    tracker = ChangeTracker()
    services = [_compact("Service", _api_service(f"s{i}", f"10.96.0.{i}")) for i in range(1, 4)]
    slices = [_compact("EndpointSlice", _api_slice(f"s{i}-a", f"s{i}")) for i in range(1, 4)]
    tracker.replace_all(services, kinds=("Service",))
    tracker.replace_all(slices, kinds=("EndpointSlice",))
    tracker.take()
    again = [_compact("Service", _api_service(f"s{i}", f"10.96.0.{i}")) for i in range(1, 4)]
    moved = _api_slice("s2-a", "s2")
    moved["endpoints"][0]["addresses"] = ["10.244.9.9"]
    tracker.replace_all(again, kinds=("Service",))
    tracker.replace_all(
        [slices[0], _compact("EndpointSlice", moved), slices[2]], kinds=("EndpointSlice",)
    )
    assert {r.name for r in tracker.changed_services()} == {"s2"}
    assert tracker.slices_of(tracker.changed_services().pop()) == (
        _compact("EndpointSlice", moved),
    )


@pytest.mark.parametrize(
    "ip",
    [
        "10.96.0.10",
        "0.0.0.0",
        "255.255.255.255",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3",
        "1.2.3.4 ",
        "fd00:96::a",
        "FD00:96::A",
        "None",
        "",
    ],
)
def test_a_cluster_ip_is_held_as_a_number_only_when_it_reads_back_the_same(ip: str) -> None:
    for spec in ({}, {"clusterIPs": [ip]}, {"ipFamilyPolicy": "SingleStack"}):
        whole = svc("web", port("http", 80), ip=ip, **copy.deepcopy(spec))
        small = _compact("Service", copy.deepcopy(whole))
        assert type(small) is CompactService
        canonical = ip in ("10.96.0.10", "0.0.0.0", "255.255.255.255")
        assert type(small.cluster_ip) is (int if canonical else str)
        assert small.spec["clusterIP"] == ip and small.cluster_ip_text == ip
        _reads_as(small, _compact_dict("Service", whole))
        _same(_translate([small], []), _translate([whole], []))


def test_a_slice_keeps_its_trigger_time_and_compares_by_it() -> None:
    """The network programming latency metric reads a slice's trigger time: a usual
    slice keeps it in its compact form (shared with the slices stamped in the same
    second), reads it back as the annotation, and a new stamp is a change."""
    stamp = "2026-12-05T10:00:00Z"

    def stamped(name: str, when: str) -> dict[str, Any]:
        obj = eps(name, "web", [sport("http", 8080)], ep("10.244.0.7", "node-a", ready=True))
        obj["metadata"]["annotations"] = {TRIGGER_TIME_ANNOTATION: when, "other": "x"}
        return obj

    one, two = (compact("EndpointSlice", stamped(n, "".join(stamp))) for n in ("a", "b"))
    kinds: list[object] = [type(one), type(two)]
    assert kinds == [CompactSlice, CompactSlice]
    assert one["metadata"]["annotations"] == two["metadata"]["annotations"]
    assert one.trigger == stamp and one.trigger is two.trigger  # type: ignore[attr-defined]
    meta = one["metadata"]
    assert type(meta) is CompactMeta and meta["annotations"] == {TRIGGER_TIME_ANNOTATION: stamp}
    plain = {
        "name": "a",
        "namespace": one["metadata"]["namespace"],
        "labels": {"kubernetes.io/service-name": "web"},
        "annotations": {TRIGGER_TIME_ANNOTATION: stamp},
    }
    _reads_as(meta, plain)
    assert CompactMeta.of(plain) == meta and type(CompactMeta.of(plain)) is CompactMeta
    later = compact("EndpointSlice", stamped("a", "2026-12-05T10:00:05Z"))
    assert later != one and one == compact("EndpointSlice", stamped("a", stamp))
    unstamped = eps("a", "web", [sport("http", 8080)], ep("10.244.0.7", "node-a", ready=True))
    assert compact("EndpointSlice", unstamped) != one
    assert "annotations" not in compact("EndpointSlice", unstamped)["metadata"]
