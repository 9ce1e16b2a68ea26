"""The model's values: a Frontend's key is made once and follows its fields; a Backend
is as small as it can be and still compares as the dataclass it was."""

from __future__ import annotations

import copy
import ipaddress
import pickle
from dataclasses import FrozenInstanceError, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.model import Backend, Frontend, FrontendKind, Protocol

ADDRESS = ipaddress.ip_address("10.96.0.10")


def test_a_frontends_key_is_one_tuple_of_its_address_port_and_protocol():
    fe = Frontend(ADDRESS, 80, Protocol.TCP)
    assert fe.key == (ADDRESS, 80, Protocol.TCP)
    assert fe.key is fe.key  # made once, shared by every table keyed by it


def test_the_key_follows_replace_and_copies():
    fe = Frontend(ADDRESS, 80, Protocol.TCP)
    moved = replace(fe, port=81, kind=FrontendKind.NODE_PORT)
    assert moved.key == (ADDRESS, 81, Protocol.TCP)
    assert copy.copy(fe).key == fe.key and copy.deepcopy(moved).key == moved.key


def test_the_key_changes_neither_equality_nor_order_nor_repr():
    a = Frontend(ADDRESS, 80, Protocol.TCP)
    b = Frontend(ADDRESS, 80, Protocol.TCP, FrontendKind.EXTERNAL)
    assert a == b and hash(a) == hash(b)
    assert sorted([Frontend(ADDRESS, 81, Protocol.TCP), a])[0] is a
    assert "key" not in repr(a)


# --- Backend: four slots, compared as the dataclass it was --------------------------------

_BACKENDS = st.builds(
    Backend,
    st.sampled_from([ipaddress.ip_address("10.244.0.7"), ipaddress.ip_address("10.244.0.8")]),
    st.sampled_from([80, 8080]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "node-a", "node-b"]),
    st.sampled_from([None, "z1"]),
    st.sampled_from([(), ("z1",), ("z1", "z2")]),
    st.sampled_from([(), ("node-a",)]),
)


FIELDS = (
    "address",
    "port",
    "ready",
    "serving",
    "terminating",
    "node",
    "zone",
    "for_zones",
    "for_nodes",
)


def _fields(b: Backend) -> tuple[object, ...]:
    return (b.address, b.port, b.ready, b.serving, b.terminating)


@settings(max_examples=300, deadline=None)
@given(a=_BACKENDS, b=_BACKENDS)
def test_backends_compare_by_address_port_and_conditions_only(a, b):
    assert (a == b) == (_fields(a) == _fields(b))
    assert (a < b) == (_fields(a) < _fields(b)) and (a <= b) == (_fields(a) <= _fields(b))
    assert (a > b) == (_fields(a) > _fields(b)) and (a >= b) == (_fields(a) >= _fields(b))
    if a == b:
        assert hash(a) == hash(b)


@settings(max_examples=100, deadline=None)
@given(b=_BACKENDS)
def test_a_backend_keeps_what_it_was_made_with(b):
    again = Backend(*(getattr(b, n) for n in FIELDS))
    assert all(getattr(again, n) == getattr(b, n) for n in FIELDS)
    assert pickle.loads(pickle.dumps(b)) == b and copy.deepcopy(b).node == b.node
    assert b.replace(ready=not b.ready).ready is not b.ready
    assert b.replace(zone="z9").zone == "z9" and b.replace(zone="z9") == b
    assert repr(b).startswith(f"Backend(address={b.address!r}, port={b.port!r}, ready=")
    with pytest.raises(FrozenInstanceError):
        b.port = 1


def test_backends_of_one_place_share_it():
    a = Backend(ADDRESS, 80, node="node-a", zone="z1")
    b = Backend(ipaddress.ip_address("10.96.0.11"), 80, node="node-a", zone="z1")
    assert a.node == "node-a" and a.zone == "z1" and a.for_zones == () and a.for_nodes == ()
    assert a._place is b._place
    assert Backend(ADDRESS, 80).node is None and Backend(ADDRESS, 80).for_nodes == ()
    assert Backend(ADDRESS, 80) == Backend(ADDRESS, 80, True, True, False)
    assert str(a) == "10.96.0.10:80"
