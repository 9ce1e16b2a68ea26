"""What the Kubernetes source keeps of an object: translating the compact form gives
exactly what translating the whole object gives (state and errors, for every good and
bad object of the translation tables), while what a proxy never reads is gone."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.sources.compact import compact, share
from ebpflb.sources.endpointslices import CompactEndpoint
from ebpflb.sources.fields import CompactMeta
from ebpflb.sources.tracker import object_key, slice_owner
from ebpflb.sources.translate import node_addresses, translate
from tests.unit.test_translate import (
    BAD,
    GOOD,
    GOOD_SLICE,
    GOOD_SVC,
    NODE,
    NODE_IPS,
    NODES,
    ep,
    eps,
    port,
    sport,
    svc,
)


def compacted(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [compact(o["kind"], o) if isinstance(o, dict) and "kind" in o else o for o in objects]


@pytest.mark.parametrize(("services", "slices", "kwargs", "expected"), GOOD)
def test_good_objects_translate_the_same(services, slices, kwargs, expected):
    whole = translate(services, slices, **kwargs)
    assert translate(compacted(services), compacted(slices), **kwargs) == whole


@pytest.mark.parametrize(("objects", "names", "message", "remaining"), BAD)
def test_bad_objects_are_reported_the_same(objects, names, message, remaining):
    services = [GOOD_SVC, *(o for o in objects if o.get("kind") == "Service")]
    slices = [GOOD_SLICE, *(o for o in objects if o.get("kind") == "EndpointSlice")]
    whole = translate(services, slices, node_addresses=NODE_IPS[:1])
    assert translate(compacted(services), compacted(slices), node_addresses=NODE_IPS[:1]) == whole


def test_node_addresses_are_kept():
    assert node_addresses(compacted(NODES), NODE) == node_addresses(NODES, NODE)


FAT_SERVICE: dict[str, Any] = {
    "kind": "Service",
    "apiVersion": "v1",
    "metadata": {
        "name": "web",
        "namespace": "demo",
        "uid": "u-1",
        "resourceVersion": "7",
        "labels": {"app": "web"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 2000},
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}] * 5,
    },
    "spec": {
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    },
    "status": {"loadBalancer": {}, "conditions": [{"type": "x"}] * 3},
}
FAT_SLICE: dict[str, Any] = {
    "kind": "EndpointSlice",
    "apiVersion": "discovery.k8s.io/v1",
    "metadata": {
        "name": "web-1",
        "namespace": "demo",
        "resourceVersion": "9",
        "labels": {"kubernetes.io/service-name": "web"},
        "managedFields": [{"manager": "endpointslice-controller"}] * 5,
    },
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    "endpoints": [
        {
            "addresses": [f"10.244.0.{i}"],
            "conditions": {"ready": True},
            "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "name": f"web-{i}", "uid": "u" * 36},
        }
        for i in range(1, 4)
    ],
}


def test_what_a_proxy_never_reads_is_dropped_and_repeats_are_shared():
    before = copy.deepcopy((FAT_SERVICE, FAT_SLICE))
    svc, sl = compact("Service", FAT_SERVICE), compact("EndpointSlice", FAT_SLICE)
    assert before == (FAT_SERVICE, FAT_SLICE)  # the input is left alone
    assert set(svc["metadata"]) == {"name", "namespace", "labels"}
    assert svc["status"] == {"loadBalancer": {}}
    assert all(set(e) == {"addresses", "conditions", "nodeName"} for e in sl["endpoints"])
    assert all(isinstance(e, CompactEndpoint) for e in sl["endpoints"])
    assert len(json.dumps(svc, default=dict)) < len(json.dumps(FAT_SERVICE)) / 5
    first, second = sl["endpoints"][0], sl["endpoints"][1]
    assert first["conditions"] is second["conditions"]  # one dict for every {ready: true}
    assert translate([svc], [sl]) == translate([FAT_SERVICE], [FAT_SLICE])


def test_an_update_of_unread_fields_compares_equal():
    touched = copy.deepcopy(FAT_SLICE)
    touched["metadata"]["resourceVersion"] = "10"
    touched["endpoints"][0]["targetRef"]["resourceVersion"] = "11"
    assert compact("EndpointSlice", touched) == compact("EndpointSlice", FAT_SLICE)


# --- endpoints kept as CompactEndpoint ------------------------------------------------------

_ADDRESS = st.sampled_from(
    ["10.244.0.7", "10.244.0.8", "010.244.0.7", "fd00::7", "FD00::7", "fd00:0::8", "x", "", 7]
)
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(0, 2), st.text(max_size=3))
_CONDITIONS = st.dictionaries(st.sampled_from(["ready", "serving", "terminating"]), st.booleans())
# Endpoints as the API server serves them, which become CompactEndpoints ...
_PLAIN = st.fixed_dictionaries(
    {
        "addresses": st.lists(
            st.sampled_from(["10.244.0.7", "10.244.0.8", "fd00::7"]), min_size=1, max_size=1
        )
    },
    optional={
        "conditions": _CONDITIONS,
        "nodeName": st.sampled_from([NODE, "node-b"]),
        "zone": st.sampled_from(["z1", "z2"]),
    },
)
# ... and anything else, which stays a dict.
_MESSY = st.fixed_dictionaries(
    {},
    optional={
        "addresses": st.one_of(st.lists(_ADDRESS, max_size=2), _ADDRESS),
        "conditions": st.one_of(
            st.dictionaries(st.sampled_from(["ready", "serving", "terminating"]), _VALUE),
            _VALUE,
        ),
        "nodeName": st.one_of(st.sampled_from([NODE, "node-b", ""]), _VALUE),
        "zone": st.one_of(st.sampled_from(["z1", "z2"]), _VALUE),
        "hints": st.just({"forZones": [{"name": "z1"}]}),
        "hostname": st.just("pod-1"),
        "targetRef": st.just({"kind": "Pod", "name": "web-1"}),
    },
)
_ENDPOINT = st.one_of(_PLAIN, _MESSY)


@settings(max_examples=300, deadline=None)
@given(
    endpoints=st.lists(_ENDPOINT, max_size=4),
    address_type=st.sampled_from(["IPv4", "IPv6"]),
    local=st.booleans(),
)
def test_any_endpoint_compacts_to_what_translates_the_same(endpoints, address_type, local):
    """Whatever the endpoints hold (good, malformed, of either family), translating the
    compact slice gives the state and errors that translating the whole slice gives."""
    service = svc("web", port("http", 80), ipFamilies=[address_type], ip=None)
    service["spec"]["clusterIP"] = "10.96.0.10" if address_type == "IPv4" else "fd00:96::a"
    if local:
        service["spec"]["internalTrafficPolicy"] = "Local"
    whole = eps("web-1", "web", [sport("http", 8080)], *endpoints, address_type=address_type)
    small = compact("EndpointSlice", whole)
    got = translate([service], [small], node_name=NODE, node_zone="z1")
    assert got == translate([service], [whole], node_name=NODE, node_zone="z1")


def test_a_plain_endpoint_is_kept_small_and_reads_as_the_dict_it_came_from():
    slice_ = eps(
        "web-1",
        "web",
        [sport("http", 8080)],
        ep("10.244.0.7", NODE, ready=True),
        {"addresses": ["fd00::7"], "zone": "z1"},  # of the other family: a dict
        {"addresses": ["10.244.0.8", "10.244.0.9"]},  # two addresses: a dict
    )
    plain = {"addresses": ["10.244.0.7"], "conditions": {"ready": True}, "nodeName": NODE}
    small, other, named = compact("EndpointSlice", slice_)["endpoints"]
    assert isinstance(small, CompactEndpoint) and small.address == ipaddress.ip_address(
        "10.244.0.7"
    )
    assert small == plain and plain == small and dict(small) == plain
    assert small.get("zone") is None and "zone" not in small and len(small) == 3
    assert small != {**plain, "nodeName": "node-b"}
    assert compact("EndpointSlice", slice_)["endpoints"][0] == small  # a relist compares equal
    assert type(other) is dict and type(named) is dict


def test_a_non_canonical_address_stays_as_written():
    slice_ = eps("web-1", "web", [sport("http", 8080)], ep("FD00::7"), address_type="IPv6")
    (kept,) = compact("EndpointSlice", slice_)["endpoints"]
    assert kept == {"addresses": ["FD00::7"], "conditions": {}}
    assert type(kept) is dict


def test_repeated_values_are_shared_and_one_never_stands_for_true():
    a = compact("Service", svc("a", port("http", 80)))
    b = compact("Service", svc("b", port("http", 80)))
    assert a["spec"]["ports"] is b["spec"]["ports"]
    flag = compact("Service", svc("c", port("http", 80), publishNotReadyAddresses=True))
    one = share([{"name": "http", "port": True}])
    assert share([{"name": "http", "port": 1}])[0]["port"] is not True
    assert one[0]["port"] is True and flag["spec"]["publishNotReadyAddresses"] is True


# --- metadata kept as CompactMeta -----------------------------------------------------------

_LABEL_NAMES = st.sampled_from(
    ["kubernetes.io/service-name", "service.kubernetes.io/service-proxy-name", "app"]
)
# Metadata as the API server serves it, which becomes a CompactMeta ...
_PLAIN_METADATA = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["web", "web-1"]),
        "namespace": st.sampled_from(["demo", "default", ""]),
    },
    optional={
        "labels": st.dictionaries(_LABEL_NAMES, st.sampled_from(["web", "x"]), max_size=2),
        "resourceVersion": st.just("7"),
    },
)
# ... and anything else, which stays a dict.
_MESSY_METADATA = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["web", "web-1", ""]), _VALUE),
        "namespace": st.one_of(st.sampled_from(["demo", ""]), _VALUE),
        "labels": st.one_of(
            st.dictionaries(_LABEL_NAMES, st.one_of(st.sampled_from(["web", "x"]), _VALUE)),
            _VALUE,
        ),
        "annotations": st.one_of(
            st.just({"service.kubernetes.io/topology-mode": "Auto"}), st.just({"a": "b"})
        ),
        "uid": st.just("u-1"),
    },
)


_METADATA = st.one_of(_PLAIN_METADATA, _MESSY_METADATA)


@settings(max_examples=300, deadline=None)
@given(svc_meta=_METADATA, slice_meta=_METADATA)
def test_any_metadata_compacts_to_what_translates_and_keys_the_same(svc_meta, slice_meta):
    service = svc("web", port("http", 80))
    service["metadata"] = svc_meta
    whole = eps("web-1", "web", [sport("http", 8080)], ep("10.244.0.7"))
    whole["metadata"] = slice_meta
    small_svc, small_slice = compact("Service", service), compact("EndpointSlice", whole)
    assert translate([small_svc], [small_slice]) == translate([service], [whole])
    for small, obj in ((small_svc, service), (small_slice, whole)):
        assert slice_owner(small) == slice_owner(obj)
        try:
            key = object_key(obj)
        except ValueError:
            with pytest.raises(ValueError):
                object_key(small)
        else:
            assert object_key(small) == key


def test_plain_metadata_is_kept_small_and_reads_as_the_dict_it_came_from():
    sl = compact("EndpointSlice", eps("web-1", "web", [sport("http", 8080)]))
    meta = sl["metadata"]
    plain = {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}}
    assert isinstance(meta, CompactMeta)
    assert meta == plain and plain == meta and dict(meta) == plain and len(meta) == 3
    assert meta.get("annotations") is None and "annotations" not in meta
    with pytest.raises(KeyError):
        meta["annotations"]
    again = compact("EndpointSlice", eps("web-1", "web", [sport("http", 8080)]))["metadata"]
    assert again == meta and again != compact("EndpointSlice", eps("web-2", "web", []))["metadata"]
    unlabelled = svc("web", port("http", 80))
    del unlabelled["metadata"]["labels"]
    bare = compact("Service", unlabelled)["metadata"]
    assert isinstance(bare, CompactMeta) and bare == {"name": "web", "namespace": "demo"}
    assert "labels" not in bare and bare.get("labels") is None and len(bare) == 2
    service = compact("Service", svc("web", port("http", 80)))["metadata"]
    assert isinstance(service, CompactMeta) and service == {
        "name": "web",
        "namespace": "demo",
        "labels": {},
    }
