"""A slice whose endpoints are all of the usual shape keeps them packed
(``PackedEndpoints``): it reads as the endpoints it was made from, compares as they
do, and translates to exactly what the plain dict translates to, errors included."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.dns.records import service_records
from ebpflb.sources import compact as compact_module
from ebpflb.sources.compact import compact
from ebpflb.sources.endpointslices import CompactEndpoint, PackedEndpoints
from ebpflb.sources.fields import CompactMeta
from ebpflb.sources.translate import Translation, translate_dicts
from tests.unit.test_translate import ep, eps, port, sport, svc

_V4 = ["10.244.0.7", "10.244.0.8", "10.244.1.7", "10.244.0.7"]  # one twice
_V6 = ["fd00::7", "fd00::8", "fd00::1:0:0:1", "::ffff:102:304", "fd00::7"]
# Conditions of the usual shape, and malformed ones that still make a dict (a number
# equal to true or false is not one of them).
# Conditions of the usual shape, and malformed ones that still make a dict, some equal
# to good ones (``{ready: 1} == {ready: True}``) but not the same.
_USUAL = st.dictionaries(st.sampled_from(["ready", "serving", "terminating"]), st.booleans())
_POOL: list[Any] = [
    None,
    {},
    {"ready": True},
    {"ready": False},
    {"ready": False, "serving": True, "terminating": True},
    {"ready": 1},
    {"ready": 0},
    {"ready": 1.0},
    {"serving": "yes"},
    {"terminating": None},
]
_NAME = st.one_of(st.none(), st.sampled_from(["node-a", "node-b", ""]))
_ZONE = st.one_of(st.none(), st.sampled_from(["z1", "z2", ""]))


@st.composite
def _endpoint(
    draw: st.DrawFn,
    family: str,
    place: tuple[str | None, str | None] | None,
    conditions: st.SearchStrategy[Any],
) -> dict[str, Any]:
    """An endpoint of the usual shape (packable), now and then one that is not."""
    addresses = _V4 if family == "IPv4" else _V6
    item: dict[str, Any] = {"addresses": [draw(st.sampled_from(addresses))]}
    for key, value in (
        ("conditions", copy.deepcopy(draw(conditions))),
        ("nodeName", place[0] if place else draw(_NAME)),
        ("zone", place[1] if place else draw(_ZONE)),
    ):
        if value is not None:
            item[key] = value
    if draw(st.booleans()):
        item["targetRef"] = {"kind": "Pod", "name": "web-1"}  # not read: dropped
    odd = draw(st.integers(0, 40))
    if odd == 0:
        item["hints"] = {"forZones": [{"name": draw(st.sampled_from(["z1", "z2"]))}]}
    elif odd == 1:
        item["addresses"] = [
            draw(st.sampled_from(["10.244.0.9", "fd00::9", "x", "FD00::9", "fe80::1%eth0", 7]))
        ]
    elif odd == 2:
        item["addresses"] = []
    elif odd == 3:
        item["nodeName"] = 7
    return item


@st.composite
def _slice(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    service = svc("web", port("http", 80), port("dns", 53, "UDP"), ipFamilies=[family], ip=None)
    service["spec"]["clusterIP"] = "10.96.0.10" if family == "IPv4" else "fd00:96::a"
    if draw(st.booleans()):
        service["spec"]["internalTrafficPolicy"] = "Local"
    if draw(st.booleans()):
        service["metadata"]["annotations"] = {"service.kubernetes.io/topology-mode": "Auto"}
    ports = draw(
        st.sampled_from(
            [
                [sport("http", 8080)],
                [sport("http", 8080), sport("dns", 5353, "UDP")],
                [sport("http", 70000)],
            ]
        )
    )
    place = draw(st.none() | st.tuples(_NAME, _ZONE))  # one node and zone for all, or not
    # conditions from a pool of two, so that equal ones (good or not) meet often
    pool = st.sampled_from(draw(st.lists(st.sampled_from(_POOL), min_size=1, max_size=2)))
    conditions = st.one_of(pool, pool, pool, _USUAL)
    endpoints = draw(st.lists(_endpoint(family, place, conditions), max_size=6))
    return service, eps("web-1", "web", ports, *endpoints, address_type=family)


def _translate(services: list[Any], slices: list[Any]) -> Translation:
    return translate_dicts(services, slices, node_name="node-a", node_zone="z1")


def _same(a: Translation, b: Translation) -> None:
    assert a.errors == b.errors
    assert a.entries == b.entries
    assert list(a.entries) == list(b.entries)
    assert a.keys_of == b.keys_of


@settings(max_examples=400, deadline=None)
@given(_slice())
def test_a_packed_slice_translates_and_reads_as_the_plain_one(
    objects: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    service, whole = objects
    before = copy.deepcopy(whole)
    reference = _translate([service], [whole])
    small = compact("EndpointSlice", whole)
    assert whole == before  # the input is left alone
    _same(_translate([service], [small]), reference)
    _same(_translate([service], [small]), reference)  # and again: nothing is used up
    endpoints = small["endpoints"]
    if type(endpoints) is PackedEndpoints:
        # it reads as what was kept of each endpoint, as CompactEndpoints
        kept = [
            {k: v for k, v in e.items() if k in ("addresses", "conditions", "nodeName", "zone")}
            for e in whole["endpoints"]
        ]
        assert list(endpoints) == kept and endpoints == kept and kept == endpoints
        assert len(endpoints) == len(kept) and all(type(e) is CompactEndpoint for e in endpoints)
        assert [endpoints[i] for i in range(-len(kept), len(kept))] == kept + kept
        assert endpoints[1:] == kept[1:]
        assert compact("EndpointSlice", copy.deepcopy(whole)) == small  # a relist: equal


def test_the_usual_slice_is_packed_and_small() -> None:
    whole = eps(
        "web-1",
        "web",
        [sport("http", 8080)],
        *(ep(f"10.244.0.{i}", "node-a", ready=True) for i in range(1, 6)),
    )
    small = compact("EndpointSlice", whole)
    endpoints = small["endpoints"]
    assert type(endpoints) is PackedEndpoints
    assert endpoints.packed == b"".join(
        ipaddress.IPv4Address(f"10.244.0.{i}").packed for i in range(1, 6)
    )
    assert endpoints.place is not None and endpoints.places is None  # one place for all
    assert endpoints[0]["conditions"] is endpoints[4]["conditions"]
    assert endpoints[0] == ep("10.244.0.1", "node-a", ready=True)
    # on several nodes: one place each, shared with the other slices' endpoints there
    spread = compact(
        "EndpointSlice",
        eps(
            "web-2",
            "web",
            [sport("http", 8080)],
            ep("10.244.1.1", "node-a", ready=True),
            ep("10.244.1.2", "node-b", ready=True),
        ),
    )["endpoints"]
    assert type(spread) is PackedEndpoints and spread.places is not None
    assert spread.places[0] is endpoints.place


def test_endpoints_equal_by_value_but_not_by_type_are_not_one_place() -> None:
    """``{ready: 1} == {ready: True}``: packed as one place, the malformed endpoint
    would read as the good one and its error be lost."""
    whole = eps(
        "web-1",
        "web",
        [sport("http", 8080)],
        ep("10.244.0.1", "node-a", ready=True),
        ep("10.244.0.2", "node-a", ready=1),
    )
    small = compact("EndpointSlice", whole)
    assert small["endpoints"][1]["conditions"]["ready"] is not True
    service = svc("web", port("http", 80))
    got = _translate([service], [small])
    assert [e.message for e in got.errors] == [
        "endpoints[1]: conditions.ready 1 is not true or false; endpoint skipped"
    ]
    _same(got, _translate([service], [whole]))


def test_conditions_of_one_value_each_under_other_names_are_not_one_place() -> None:
    """Their values are the same objects, in the same order, and the dicts are equal
    (``1 == True``), but not under the same names: one reports ready, one serving."""
    whole = eps(
        "web-1",
        "web",
        [sport("http", 8080)],
        {"addresses": ["10.244.0.1"], "conditions": {"serving": 1, "ready": True}},
        {"addresses": ["10.244.0.2"], "conditions": {"ready": 1, "serving": True}},
    )
    service = svc("web", port("http", 80))
    got = _translate([service], [compact("EndpointSlice", whole)])
    assert [e.message for e in got.errors] == [
        "endpoints[0]: conditions.serving 1 is not true or false; endpoint skipped",
        "endpoints[1]: conditions.ready 1 is not true or false; endpoint skipped",
    ]
    _same(got, _translate([service], [whole]))


def test_packed_endpoints_compare_by_address_and_place() -> None:
    def packed(*endpoints: dict[str, Any], family: str = "IPv4") -> Any:
        return compact("EndpointSlice", eps("s", "web", [], *endpoints, address_type=family))[
            "endpoints"
        ]

    a = packed(ep("10.244.0.1", "node-a", ready=True), ep("10.244.0.2", "node-a", ready=True))
    assert a == packed(
        ep("10.244.0.1", "node-a", ready=True), ep("10.244.0.2", "node-a", ready=True)
    )
    assert a != packed(
        ep("10.244.0.1", "node-a", ready=True), ep("10.244.0.3", "node-a", ready=True)
    )
    assert a != packed(
        ep("10.244.0.1", "node-a", ready=True), ep("10.244.0.2", "node-b", ready=True)
    )
    assert a != packed(ep("10.244.0.1", "node-a", ready=True), ep("10.244.0.2", "node-a"))
    assert a != packed(ep("10.244.0.1", "node-a", ready=True))
    assert a != packed(
        ep("::a0f4:1", "node-a", ready=True), ep("::a0f4:2", "node-a", ready=True), family="IPv6"
    )
    # the same endpoints told by one place or by one each are equal
    same = PackedEndpoints(4, a.packed, None, (a.place, a.place))
    assert same == a and a == same
    assert a != "not endpoints" and a != [ep("10.244.0.1", "node-a", ready=True)]


_LABEL = st.sampled_from(
    ["kubernetes.io/service-name", "service.kubernetes.io/service-proxy-name", "app"]
)
_META = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["web", "", None, 7]),
        "namespace": st.sampled_from(["demo", "", None]),
        "labels": st.one_of(
            st.dictionaries(_LABEL, st.sampled_from(["web", "", 7, None]), max_size=3),
            st.sampled_from([None, "x"]),
        ),
        "annotations": st.sampled_from(
            [None, {}, {"a": "b"}, {"service.kubernetes.io/topology-mode": "Auto"}, "x"]
        ),
        "uid": st.just("u-1"),
    },
)


@settings(max_examples=300, deadline=None)
@given(_META)
def test_metadata_made_directly_is_what_the_general_path_makes(meta: dict[str, Any]) -> None:
    direct = compact_module._metadata(meta)
    with mock.patch.object(compact_module, "_compact_meta", return_value=None):
        general = compact_module._metadata(meta)
    assert type(direct) is type(general) and direct == general
    if type(direct) is CompactMeta:
        assert (direct.name, direct.namespace, direct.label, direct.value) == (
            general.name,
            general.namespace,
            general.label,
            general.value,
        )


def test_dns_reads_packed_endpoints_as_the_plain_ones() -> None:
    headless = svc("web", port("http", 80), ip="None")
    whole = eps(
        "web-1",
        "web",
        [sport("http", 8080)],
        ep("10.244.0.1", "node-a", ready=True),
        ep("10.244.0.2", "node-b", ready=False),
    )
    small = compact("EndpointSlice", whole)
    assert type(small["endpoints"]) is PackedEndpoints
    got = service_records(compact("Service", headless), [small])
    assert got is not None and got.endpoints
    assert got == service_records(headless, [whole])
