"""The model's values: a Frontend's key is made once and follows its fields."""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import replace

from ebpflb.model import Frontend, FrontendKind, Protocol

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
