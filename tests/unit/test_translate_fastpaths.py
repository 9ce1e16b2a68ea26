"""The fast paths of translation give what the general, validating path gives.

Translation parses a ports list or an endpoint's conditions once per object that
``compact`` shares between Services or slices, and reads the single-stack ClusterIP
shape without the dual-stack checks. Both are checked here against the general path,
on random objects both well-formed and malformed: the same objects, compacted (shared
values, CompactEndpoint/CompactMeta), and as plain dicts of which no two share a value
(every look-up a cache miss, every endpoint a dict).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.sources import endpointslices as slices_module
from ebpflb.sources import services as services_module
from ebpflb.sources.compact import compact
from ebpflb.sources.services import _cluster_ips
from ebpflb.sources.translate import translate_dicts

_parse_service = services_module._parse_service
_parse_slice = slices_module._parse_slice


def _uncached_service(obj: Any, errors: Any, cache: Any = None) -> Any:
    return _parse_service(obj, errors)


def _uncached_slice(obj: Any, identity: Any, errors: Any, cache: Any = None) -> Any:
    return _parse_slice(obj, identity, errors)


_GOOD_PORTS: list[Any] = [
    [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    [{"port": 53, "protocol": "UDP"}],
    [{"name": "a", "port": 80}, {"name": "b", "port": 443, "nodePort": 30443}],
]
_BAD_PORTS: list[Any] = [
    [{"name": "a", "port": 80}, {"port": 81}],  # a name missing
    [{"name": "a", "port": 0}],
    [{"name": "a", "port": "80"}, {"name": "a", "port": 81}],
    [{"name": "a", "port": 80, "protocol": "ICMP"}],
    ["not a port"],
    "not a list",
]
_SLICE_PORTS: list[Any] = [
    [{"name": "http", "port": 8080, "protocol": "TCP"}],
    [{"port": 53, "protocol": "UDP"}],
    [{"name": "a", "port": 80}, {"name": "b", "port": 443}],
    [{"name": "a", "port": 70000}],
    [{"name": 5, "port": 80}],
    [7],
]
_CONDITIONS: list[Any] = [
    None,
    {},
    {"ready": True},
    {"ready": False},
    {"ready": False, "serving": True, "terminating": True},
    {"ready": 1},  # not a boolean
    {"serving": "yes"},
    "not an object",
]
_CLUSTER_IPS = ["10.96.0.1", "10.96.0.2", "fd00::1", "None", "", "10.96.0", "010.96.0.1", None, 5]
_ADDRESSES = ["10.128.0.1", "10.128.0.2", "10.128.0.2", "fd00::5", "fd00::0005", "x", 3]

_pick = st.sampled_from


@st.composite
def _service(draw: st.DrawFn, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "clusterIP": draw(_pick(_CLUSTER_IPS)),
        "ports": draw(_pick([*_GOOD_PORTS, *_BAD_PORTS])),
    }
    if draw(st.booleans()):
        spec["type"] = draw(_pick(["ClusterIP", "NodePort", "Bogus"]))
    if draw(st.integers(0, 4)) == 0:
        spec["clusterIPs"] = draw(st.lists(_pick(_CLUSTER_IPS), max_size=3))
    if draw(st.integers(0, 4)) == 0:
        spec["ipFamilies"] = draw(st.lists(_pick(["IPv4", "IPv6", "IPvX"]), max_size=2))
    if draw(st.integers(0, 4)) == 0:
        spec["ipFamilyPolicy"] = draw(_pick(["SingleStack", "RequireDualStack", "Other"]))
    name = f"svc-{draw(st.integers(0, i))}"  # sometimes a duplicate
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


@st.composite
def _slice(draw: st.DrawFn, i: int) -> dict[str, Any]:
    endpoints = []
    for _ in range(draw(st.integers(0, 4))):
        endpoint: dict[str, Any] = {"addresses": [draw(_pick(_ADDRESSES))]}
        conditions = draw(_pick(_CONDITIONS))
        if conditions is not None:
            endpoint["conditions"] = conditions
        if draw(st.booleans()):
            endpoint["nodeName"] = draw(_pick(["node-a", "node-b", ""]))
        endpoints.append(endpoint)
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{draw(st.integers(0, i))}-{i}",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": f"svc-{draw(st.integers(0, i))}"},
        },
        "addressType": draw(_pick(["IPv4", "IPv4", "IPv6", "Bogus"])),
        "ports": draw(_pick(_SLICE_PORTS)),
        "endpoints": endpoints,
    }


def _plain(value: Any) -> Any:
    """``value`` rebuilt of new dicts and lists: nothing shared with anything."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@st.composite
def _objects(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = draw(st.integers(1, 12))
    services = [draw(_service(i)) for i in range(n)]
    slices = [draw(_slice(i)) for i in range(draw(st.integers(0, 2 * n)))]
    return services, slices


@settings(max_examples=300, deadline=None)
@given(_objects())
def test_shared_values_translate_as_unshared_ones(
    objects: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    services, slices = objects
    shared = translate_dicts(
        [compact("Service", s) for s in services],
        [compact("EndpointSlice", s) for s in slices],
        node_name="node-a",
    )
    with (  # the general path: no cache, and every endpoint a dict
        mock.patch.object(services_module, "_parse_service", _uncached_service),
        mock.patch.object(slices_module, "_parse_slice", _uncached_slice),
    ):
        alone = translate_dicts(
            [_plain(s) for s in services], [_plain(s) for s in slices], node_name="node-a"
        )
    assert shared.errors == alone.errors
    assert shared.entries == alone.entries
    assert list(shared.entries) == list(alone.entries)
    assert shared.services == alone.services
    assert shared.keys_of == alone.keys_of


def _outcome(spec: dict[str, Any]) -> Any:
    try:
        return _cluster_ips(spec)
    except Exception as e:
        return (type(e), str(e))


@settings(max_examples=500, deadline=None)
@given(
    _pick([*_CLUSTER_IPS, "1.2.3.4", "255.255.255.255", "1.2.3.4 ", "::ffff:1.2.3.4"]),
    st.text(alphabet="0123456789.:abcdef", max_size=16),
    st.booleans(),
)
def test_single_stack_cluster_ip_reads_as_the_general_path(
    picked: Any, text: str, use_text: bool
) -> None:
    """ipFamilies: None and clusterIPs: None read as absent, but take the general path."""
    spec = {"clusterIP": text if use_text else picked}
    assert _outcome(spec) == _outcome({**spec, "ipFamilies": None, "clusterIPs": None})
