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
from ebpflb.plan import BackendState, FrontendState, UpsertBackends, held_as_built

_ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.10", "fd00::1", "fd00::2", "fe80::1%eth0"]
_PORTS = [80, 255, 256, 8080, 65535, 70000]  # 70000: no map holds it, nothing packs it
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
# more of them, on more ports, usually ready: past _fullsync.c's 16 on the stack
_many_backends = st.lists(
    st.builds(
        lambda a, p, r, t: Backend(a, p, ready=r, terminating=t),
        st.one_of(
            st.integers(0x0A000000, 0x0A0000FF).map(ipaddress.IPv4Address),
            st.integers(1, 255).map(lambda i: ipaddress.IPv6Address(0xFD00 << 112 | i)),
            _pick(_ADDRESSES).map(_ip),
        ),
        _pick(_PORTS),
        st.booleans() | st.just(True),
        st.just(False) | st.booleans(),
    ),
    max_size=24,
)


@st.composite
def _entry(draw: st.DrawFn) -> ServiceEntry:
    backends = draw(st.lists(_backend, max_size=5) | _many_backends)
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
    if isinstance(value, bytes):
        return bytes(bytearray(value))
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
    with (
        mock.patch.object(plan, "_native_flat", None),
        mock.patch.object(plan, "_native_pack", None),
    ):
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
    assert len(_fullsync.flat(usual) or ()) == 1 + 2 * 6  # a tag, then 6 bytes each


_FRONTEND = Frontend(_ip("10.96.0.1"), 80, Protocol.TCP)
_PORT_NAME = ServicePortName(ServiceRef("d", "w"), "http", Protocol.TCP)


def _states(backends: list[Backend]) -> tuple[BackendState, ...]:
    """BackendStates of ``backends`` in key order, each key once (a state's own)."""
    made = {
        (b.address, b.port): BackendState(b.address, b.port, b.ready, b.terminating)
        for b in backends
    }
    return tuple(sorted(made.values(), key=plan.backend_order))


def _packs(states: tuple[BackendState, ...]) -> bool:
    """Whether FrontendState packs these backends (see its docstring)."""
    families = {s.address.__class__ for s in states}
    return (
        bool(states)
        and all(s.active and not s.terminating and s.port <= 0xFFFF for s in states)
        and (
            families == {ipaddress.IPv4Address}
            or (
                families == {ipaddress.IPv6Address}
                and all(s.address.scope_id is None for s in states)  # type: ignore[union-attr]
            )
        )
    )


@settings(max_examples=600, deadline=None)
@given(_many_backends, st.booleans())
def test_a_packed_store_reads_as_the_backend_states_it_stands_for(
    backends: list[Backend], own_slots: bool
) -> None:
    states = _states(backends)
    keys = tuple(s.key for s in states if s.active)
    slots = tuple(reversed(keys)) if own_slots else keys
    state = FrontendState(_FRONTEND, _PORT_NAME, states, slots)
    assert isinstance(state._backends, bytes) == _packs(states)
    with mock.patch.object(plan, "_native_pack", None):  # packed in Python
        assert FrontendState(_FRONTEND, _PORT_NAME, states, slots)._backends == state._backends
    if isinstance(state._backends, bytes):  # the tag, then 6 or 18 bytes a backend
        size = 6 if states[0].address.version == 4 else 18
        assert len(state._backends) == 1 + size * len(states)
    assert state.backends == states and state.backend_count == len(states)
    assert state.slots == slots and state.slot_count == len(slots)
    with mock.patch.object(plan, "_native_unpack", None):  # the Python views
        assert state.backends == states and state.slots == slots
        python = state.backends
        assert all(type(a.address) is type(b.address) for a, b in zip(python, states, strict=True))
    assert state.slots_are_backends == (slots == tuple(s.key for s in states))
    # the views make the same objects' values, and the fields compare as the views do
    assert all(
        type(a.address) is type(b.address) for a, b in zip(state.backends, states, strict=True)
    )
    again = FrontendState(_FRONTEND, _PORT_NAME, state.backends, state.slots)
    assert again == state and hash(again) == hash(state)
    assert state.replace() == state and state.with_backends(states) == state
    op, shared = UpsertBackends(_FRONTEND, states), UpsertBackends.of(state)
    for upsert in (op, shared):
        assert upsert.backends == states and upsert.backend_count == len(states)
        assert [tuple(r) for r in upsert.rows()] == [tuple(s) for s in states]
        assert list(upsert.packed_rows()) == [
            (s.address.packed, s.port, s.active, s.terminating) for s in states
        ]
    assert shared.holds_backends_of(state) and op._backends == state._backends


@settings(max_examples=600, deadline=None)
@given(_many_backends)
def test_a_flat_store_read_back_is_packed_as_the_constructor_packs(
    backends: list[Backend],
) -> None:
    states = tuple(s._replace(active=True, terminating=False) for s in _states(backends))
    flat = tuple(x for s in states for x in s.key)  # as the maps' read-back cuts it
    built = FrontendState(_FRONTEND, _PORT_NAME, states, None)._backends
    native = plan.compact_store(flat)
    with mock.patch.object(plan, "_native_pack", None):
        python = plan.compact_store(flat)
    assert native == python == built
    assert type(native) is type(built)
    assert plan.compact_store(states) is states  # BackendStates: as they are


def test_the_packed_store_is_the_records_of_the_keys() -> None:
    states = (
        BackendState(_ip("10.0.0.1"), 8080),
        BackendState(_ip("10.0.1.2"), 443),
    )
    packed = FrontendState(_FRONTEND, _PORT_NAME, states, None)._backends
    assert packed == b"\x04" + bytes([10, 0, 0, 1, 0x1F, 0x90, 10, 0, 1, 2, 0x01, 0xBB])
    six = (BackendState(_ip("fd00::1"), 80),)
    packed6 = FrontendState(_FRONTEND, _PORT_NAME, six, None)._backends
    assert packed6 == b"\x06" + _ip("fd00::1").packed + b"\x00\x50"
    # not packed: an inactive or terminating backend, a scope id, two families
    for odd in (
        (BackendState(_ip("10.0.0.1"), 80, active=False),),
        (BackendState(_ip("10.0.0.1"), 80, terminating=True),),
        (BackendState(_ip("fe80::1%eth0"), 80),),
        (states[0], six[0]),
    ):
        assert FrontendState(_FRONTEND, _PORT_NAME, odd, None)._backends == odd


def test_the_c_store_helpers_leave_what_they_cannot_read_to_python() -> None:
    for odd in (b"", b"\x05" + bytes(6), b"\x04" + bytes(5), b"\x06" + bytes(17), ()):
        assert _fullsync.unpack(odd) is None  # type: ignore[arg-type]
    v4, v6 = _ip("10.0.0.1"), _ip("fd00::1")
    for flat in (
        (_ip("fe80::1%eth0"), 80),  # a scope id
        (v6, 80, v4, 80),  # two families
        (v4, 80, v6, 80),
        (v6, 70000),  # a port no map holds
        (v4, True),  # a port not exactly an int
        (v4,),
        (),
    ):
        assert _fullsync.pack(flat) is None
        if len(flat) % 2 == 0:  # a flat store read back is (address, port) pairs
            with mock.patch.object(plan, "_native_pack", None):
                assert not isinstance(plan.compact_store(flat), bytes)
