"""The map writer on the real pinned maps: applying the plan from any state A to any
state B leaves exactly B in the kernel's maps (read back the way a restarted agent adopts
them), and a plan that does not fit is refused with A left as it was."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.errors import CapacityError
from ebpflb.model import DesiredState
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, Maps
from tests.unit.test_plan import state_st

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _write(maps: Maps, state: DesiredState, **limits: int) -> MapWriter:
    """A fresh writer (as a starting agent makes) that writes `state` into empty maps."""
    writer = MapWriter(
        BpfMaps(maps.pin_dir),
        max_services=limits.get("services", MAX_SERVICES),
        max_backends=limits.get("backends", MAX_BACKENDS),
    )
    writer.apply(diff(writer.frontends, desired_frontends(state)))
    return writer


def _held(maps: Maps) -> object:
    with BpfMaps(maps.pin_dir) as fresh:
        return read_state(fresh).frontends


@SETTINGS
@given(a=state_st, b=state_st)
def test_any_a_to_any_b_leaves_exactly_b_in_the_maps(maps: Maps, a, b) -> None:
    maps.clear()
    writer = _write(maps, a)
    try:
        assert _held(maps) == desired_frontends(a)
        writer.apply(diff(writer.frontends, desired_frontends(b)))
        assert _held(maps) == desired_frontends(b)
        assert writer.frontends == desired_frontends(b)  # its cache agrees with the maps
        with BpfMaps(maps.pin_dir) as fresh:  # and so do its (packed) id tables
            assert writer.backend_ids() == read_state(fresh).backend_ids
    finally:
        writer.maps.close()


@SETTINGS
@given(a=state_st, b=state_st)
def test_a_refused_overflow_leaves_a(maps: Maps, a, b) -> None:
    maps.clear()
    limit = 1 + sum(len(e.backends) for e in a.entries.values())  # ids 1..limit-1 fit A
    writer = _write(maps, a, backends=limit)
    try:
        try:
            writer.apply(diff(writer.frontends, desired_frontends(b)))
        except CapacityError as exc:
            assert exc.frontend is not None and "nothing was applied" in str(exc)
            assert _held(maps) == desired_frontends(a)
            assert writer.frontends == desired_frontends(a)
        else:
            assert _held(maps) == desired_frontends(b)
    finally:
        writer.maps.close()


def test_an_overflowing_plan_is_refused(maps: Maps) -> None:
    """The property above must meet a refusal: one state that surely overflows."""
    from tests.unit.test_plan import entry, state

    a = state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True)]))
    b = state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, True)]))
    writer = _write(maps, a, backends=2)
    try:
        with pytest.raises(CapacityError, match="backend map full"):
            writer.apply(diff(writer.frontends, desired_frontends(b)))
        assert _held(maps) == desired_frontends(a)
    finally:
        writer.maps.close()


def test_changing_held_backends_needs_no_room(maps: Maps) -> None:
    """A full backend map still takes a change to backends it holds (new flags)."""
    from tests.unit.test_plan import entry, state

    a = state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, True)]))
    b = state(entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, False)]))
    writer = _write(maps, a, backends=3)  # ids 1..2: full
    try:
        writer.apply(diff(writer.frontends, desired_frontends(b)))
        assert _held(maps) == desired_frontends(b)
    finally:
        writer.maps.close()


def _maglev_tables_match(maps: Maps, writer: MapWriter, size: int) -> None:
    """Every frontend with active backends has a table in the kernel equal to the one
    ebpflb.maglev computes over its slots (as backend ids)."""
    import ctypes

    from ebpflb import maglev
    from ebpflb.dataplane.bpf.ids import backend_key
    from ebpflb.dataplane.bpf.syscall import PinnedMap, map_fd_by_id

    for key, st in writer.frontends.items():
        if not st.slots:
            continue
        sid = writer.svc_ids[key]
        owned = writer.owned(sid, v6=key[0].version == 6)
        want = [
            owned[backend_key(st.slots[i][0].packed, st.slots[i][1])]
            for i in maglev.table([f"{a}:{p}" for a, p in st.slots], size)
        ]
        table_id = maps.maglev.lookup(ctypes.c_uint32(sid), ctypes.c_uint32)
        assert table_id is not None, st.frontend
        with PinnedMap("table", fd=map_fd_by_id(table_id.value)) as table:
            got = [table.lookup(ctypes.c_uint32(i), ctypes.c_uint32) for i in range(size)]
        assert [g.value for g in got if g is not None] == want, st.frontend


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=state_st, b=state_st)
def test_maglev_tables_follow_any_a_to_any_b(maps: Maps, a, b) -> None:
    maps.clear()
    writer = MapWriter(
        BpfMaps(maps.pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, maglev_size=251
    )
    try:
        writer.apply(diff(writer.frontends, desired_frontends(a)))
        _maglev_tables_match(maps, writer, 251)
        writer.apply(diff(writer.frontends, desired_frontends(b)))
        _maglev_tables_match(maps, writer, 251)
        assert _held(maps) == desired_frontends(b)
    finally:
        writer.maps.close()


def test_a_reused_service_id_starts_with_zero_counters(maps: Maps) -> None:
    """A service id freed and handed to another frontend has its counters reset; the
    frontend's own counters stay across a restart."""
    import ctypes

    from ebpflb.dataplane.bpf import abi
    from tests.unit.test_plan import entry, state

    a, b, c = (entry(f"10.96.0.{i}", 80, [("10.0.0.1", 80, True)], name=f"s{i}") for i in (1, 2, 3))
    writer = _write(maps, state(a), services=3)  # ids 1..2
    try:
        sid = writer.svc_ids[a.frontend.key]
        counted = abi.LbStats(rx_packets=7, rx_bytes=700)
        writer.maps.svc_stats.update_percpu(ctypes.c_uint32(sid), counted)
        writer.apply(diff(writer.frontends, desired_frontends(state(b))))  # frees a's id
        writer.apply(diff(writer.frontends, desired_frontends(state(c))))  # b's id is next
        assert writer.svc_ids[c.frontend.key] == sid
        assert maps.svc_stats(sid).rx_packets == maps.svc_stats(sid).rx_bytes == 0
        writer.maps.svc_stats.update_percpu(ctypes.c_uint32(sid), counted)
        writer.maps.close()
        writer = _write(maps, state(c), services=3)  # a restart: nothing to write
        assert maps.svc_stats(sid).rx_packets > 0  # the live frontend's counters stay
    finally:
        writer.maps.close()


@SETTINGS
@given(a=state_st, b=state_st)
def test_a_reload_keeps_the_held_objects_the_maps_still_hold(maps: Maps, a, b) -> None:
    """The periodic repair reads the maps back: where they hold what the writer held,
    the writer keeps its own objects (so they are not replaced by copies at every
    repair); where the maps changed behind its back, what they hold wins."""
    maps.clear()
    writer = _write(maps, a)
    other = _write_beside(maps, a, b)  # another writer moves the maps from A to B
    try:
        before = dict(writer.frontends)
        keys_before = {id(k) for k in writer.frontends}
        writer.reload()
        assert writer.frontends == desired_frontends(b)
        with BpfMaps(maps.pin_dir) as fresh:
            assert writer.svc_ids == read_state(fresh).svc_ids
        for key, state in writer.frontends.items():
            held = before.get(key)
            if held is not None and held == state:
                assert state is held and id(key) in keys_before
            else:
                assert state is not held
        writer.apply(diff(writer.frontends, desired_frontends(b)))  # nothing to write
        assert _held(maps) == desired_frontends(b)
    finally:
        writer.maps.close()
        other.maps.close()


def _write_beside(maps: Maps, a: DesiredState, b: DesiredState) -> MapWriter:
    """A second writer that adopts the maps (holding A) and writes B into them."""
    writer = MapWriter(BpfMaps(maps.pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
    assert writer.frontends == desired_frontends(a)
    writer.apply(diff(writer.frontends, desired_frontends(b)))
    return writer


def test_a_reload_of_unchanged_maps_keeps_every_held_object(maps: Maps) -> None:
    from tests.unit.test_plan import entry, state

    maps.clear()
    a = state(
        entry("10.96.0.1", 80, [("10.0.0.1", 80, True), ("10.0.0.2", 80, True)]),
        entry("10.96.0.2", 53, [("10.0.0.3", 5353, True)]),
    )
    writer = _write(maps, a)
    try:
        before = dict(writer.frontends)
        ids, tables = dict(writer.svc_ids), list(writer._backend_ids)
        writer.reload()
        assert writer.frontends == before
        assert all(writer.frontends[k] is v for k, v in before.items())
        assert writer.svc_ids == ids and all(writer.svc_ids[k] is v for k, v in ids.items())
        assert [t for t in writer._backend_ids if t] == [t for t in tables if t]
        assert all(t is tables[sid] for sid, t in enumerate(writer._backend_ids) if t)
    finally:
        writer.maps.close()
