"""What the Kubernetes source keeps of an object: translating the compact form gives
exactly what translating the whole object gives (state and errors, for every good and
bad object of the translation tables), while what a proxy never reads is gone."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ebpflb.sources.compact import compact
from ebpflb.sources.translate import node_addresses, translate
from tests.unit.test_translate import BAD, GOOD, GOOD_SLICE, GOOD_SVC, NODE, NODE_IPS, NODES


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
    assert len(json.dumps(svc)) < len(json.dumps(FAT_SERVICE)) / 5
    first, second = sl["endpoints"][0], sl["endpoints"][1]
    assert first["conditions"] is second["conditions"]  # one dict for every {ready: true}
    assert translate([svc], [sl]) == translate([FAT_SERVICE], [FAT_SLICE])


def test_an_update_of_unread_fields_compares_equal():
    touched = copy.deepcopy(FAT_SLICE)
    touched["metadata"]["resourceVersion"] = "10"
    touched["endpoints"][0]["targetRef"]["resourceVersion"] = "11"
    assert compact("EndpointSlice", touched) == compact("EndpointSlice", FAT_SLICE)
