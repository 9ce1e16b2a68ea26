"""held_as_built, which a full sync asks of every frontend the data path holds, says
a held state stands for an entry exactly when building the entry's state gives an
equal one: checked on random entries and held states that differ from them (or not)
in any field, as built from an entry or as read back from the maps (no object shared
with the entry); with the C checks of ebpflb/_fullsync.c (which must say True only
when it is so, and do say it for the usual IPv4 frontend) and without them (the
Python path, where the module was not built). from_entry's C one-pass case builds
what the Python one does."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _fullsync, plan
from ebpflb.model import (
    Backend,
    Frontend,
    FrontendKind,
    IPAddress,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import FrontendState, held_as_built

_ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.10", "fd00::1", "fd00::2", "fe80::1%eth0"]
_pick = st.sampled_from


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


_backend = st.builds(
    lambda a, p, r, s, t: Backend(_ip(a), p, ready=r, serving=s, terminating=t),
    _pick(_ADDRESSES),
    _pick([80, 8080]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@st.composite
def _entry(draw: st.DrawFn) -> ServiceEntry:
    backends = draw(st.lists(_backend, max_size=5))
    if draw(st.booleans()):  # translate's own shape: one family, in key order
        family = backends[0].address.version if backends else 4
        backends = sorted(b for b in backends if b.address.version == family)
    frontend = Frontend(
        _ip(draw(_pick(["10.96.0.1", "10.96.0.2", "fd00::a"]))),
        draw(_pick([80, 443])),
        draw(_pick([Protocol.TCP, Protocol.UDP])),
        draw(_pick(list(FrontendKind))),
    )
    port_name = ServicePortName(
        ServiceRef(draw(_pick(["demo", "other"])), draw(_pick(["web", "db"]))),
        draw(_pick(["", "http"])),
        draw(_pick([Protocol.TCP, Protocol.UDP])),
    )
    return ServiceEntry(
        frontend,
        port_name,
        tuple(backends),
        draw(_pick([0, 10800])),
        draw(_pick([None, _ip("10.0.0.1")])),
        draw(_pick([(), (ipaddress.ip_network("10.0.0.0/8"),)])),
        draw(st.booleans()),
    )


def _copy(value: Any) -> Any:
    """An equal value that shares no object with ``value`` (as read back)."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_address(str(value))
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, Frontend):
        return Frontend(_copy(value.address), value.port, value.protocol, value.kind)
    if isinstance(value, ServicePortName):
        ref = ServiceRef(value.service.namespace, value.service.name)
        return ServicePortName(ref, value.port, value.protocol)
    return value


def _read_back(state: FrontendState) -> FrontendState:
    held = object.__new__(FrontendState)
    held._set(
        _copy(state.frontend),
        _copy(state.port_name),
        _copy(state._backends),
        _copy(state._slots),
        state.affinity_timeout,
        _copy(state.snat_address),
        _copy(state.source_ranges),
        state.drop_when_empty,
    )
    return held


@settings(max_examples=1500, deadline=None)
@given(_entry(), _entry(), st.booleans())
def test_held_as_built_is_building_and_comparing(
    entry: ServiceEntry, other: ServiceEntry, read_back: bool
) -> None:
    def changed(change: Any) -> ServiceEntry:
        backends = tuple(b.replace(**change(b)) for b in entry.backends)
        return dataclasses.replace(entry, backends=backends)

    # held as desired, as another entry's, or as the entry's were it ready throughout,
    # on other ports, or at other addresses
    for source in (
        entry,
        other,
        changed(lambda b: {"ready": True, "terminating": False}),
        changed(lambda b: {"port": 80 if b.port == 8080 else 8080}),
        changed(lambda b: {"address": b.address + 1}),
    ):
        held = FrontendState.from_entry(source)
        if read_back:
            held = _read_back(held)
        equal = FrontendState.from_entry(entry) == held
        assert held_as_built(entry, held) == equal
        assert not _fullsync.held(entry, held) or equal  # True only when it is so
        with mock.patch.object(plan, "_native_held", None):
            assert held_as_built(entry, held) == equal


@settings(max_examples=800, deadline=None)
@given(_entry())
def test_from_entry_builds_in_c_what_it_builds_in_python(entry: ServiceEntry) -> None:
    native = FrontendState.from_entry(entry)
    with mock.patch.object(plan, "_native_flat", None):
        python = FrontendState.from_entry(entry)
    assert native == python
    assert native._backends == python._backends and native._slots == python._slots


def test_a_read_back_state_of_the_usual_entry_is_taken_for_it() -> None:
    backends = tuple(Backend(_ip(f"10.0.0.{i}"), 8080) for i in range(1, 6))
    frontend = Frontend(_ip("10.96.0.1"), 80, Protocol.TCP)
    entry = ServiceEntry(
        frontend, ServicePortName(ServiceRef("d", "w"), "", Protocol.TCP), backends
    )
    held = _read_back(FrontendState.from_entry(entry))
    assert held.frontend.address is not frontend.address
    assert held_as_built(entry, held)
    assert _fullsync.held(entry, held)  # decided in C
    assert _fullsync.flat(backends) == FrontendState.from_entry(entry)._backends
    changed = _read_back(
        FrontendState.from_entry(
            ServiceEntry(frontend, entry.port_name, (*backends[:4], Backend(_ip("10.0.0.9"), 8080)))
        )
    )
    assert not held_as_built(entry, changed)


def test_a_frontend_of_more_backends_than_the_c_checks_keep_on_the_stack() -> None:
    # 40 backends: past _fullsync.c's SMALL (16), so its arrays are allocated
    backends = tuple(Backend(_ip(f"10.0.{i // 250}.{i % 250 + 1}"), 8080) for i in range(40))
    frontend = Frontend(_ip("10.96.0.1"), 80, Protocol.TCP)
    port_name = ServicePortName(ServiceRef("d", "w"), "", Protocol.TCP)
    entry = ServiceEntry(frontend, port_name, backends)
    assert _fullsync.held(entry, _read_back(FrontendState.from_entry(entry)))
    assert _fullsync.flat(backends) == FrontendState.from_entry(entry)._backends
    last = (*backends[:-1], Backend(_ip("10.0.9.9"), 8080))
    other = _read_back(FrontendState.from_entry(ServiceEntry(frontend, port_name, last)))
    assert not _fullsync.held(entry, other)


def test_the_c_checks_leave_what_they_cannot_read_to_python() -> None:
    class Odd(ipaddress.IPv4Address):
        pass

    port_name = ServicePortName(ServiceRef("d", "w"), "", Protocol.TCP)
    usual = (Backend(_ip("10.0.0.1"), 8080), Backend(_ip("10.0.0.2"), 8080))
    cases = [
        (Backend(_ip("fd00::1"), 8080),),  # IPv6
        (Backend(Odd("10.0.0.1"), 8080),),  # another address class
        (Backend(_ip("10.0.0.1"), 70000),),  # a port no map holds
        (Backend(_ip("10.0.0.1"), 8080, terminating=True),),
        tuple(reversed(usual)),
        (usual[0], usual[0]),
    ]
    for backends in cases:
        assert _fullsync.flat(backends) is None
        entry = ServiceEntry(Frontend(_ip("10.96.0.1"), 80, Protocol.TCP), port_name, backends)
        held = _read_back(FrontendState.from_entry(entry))
        assert not _fullsync.held(entry, held)
        assert held_as_built(entry, held)  # Python says so
    unset = object.__new__(FrontendState)  # no slot set: not known, and no crash
    entry = ServiceEntry(Frontend(_ip("10.96.0.1"), 80, Protocol.TCP), port_name, usual)
    assert not _fullsync.held(entry, unset)
    assert len(_fullsync.flat(usual) or ()) == 4
