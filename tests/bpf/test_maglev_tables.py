"""The Maglev tables as the kernel holds them: mmapable inner maps of ebpflb_mg4_v2,
written with one copy into their memory and rewritten in place, read by the program
like any array; and the old ebpflb_mg4 (whose inner maps could not be mmapped)
removed when an agent of this version starts over its pins."""

from __future__ import annotations

import ctypes
import mmap
import os
from array import array
from ipaddress import IPv4Address

import pytest

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import ensure_pin_dir, remove_legacy_pins
from ebpflb.dataplane.bpf.loader import compile_program
from ebpflb.dataplane.bpf.maglevtables import TABLE_FLAGS, MaglevTables
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_INNER_MAP,
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    MapType,
    PinnedMap,
    map_create,
    map_fd_by_id,
    map_info,
    obj_pin,
)
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import Protocol
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf import packets as pk
from tests.bpf.conftest import MAX_BACKENDS, MAX_CONNTRACK, MAX_SERVICES, Maps, RunFn
from tests.unit.test_plan import entry, state

pytestmark = pytest.mark.root

SIZE = 1021
CLIENT = "10.244.0.200"
CLUSTER_IP = "10.96.0.10"


def _writer(maps: Maps) -> MapWriter:
    maps.config.update(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32(SIZE))
    return MapWriter(
        BpfMaps(maps.pin_dir),
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        maglev_size=SIZE,
    )


def _apply(writer: MapWriter, backends: list[tuple[str, int, bool]]) -> None:
    want = desired_frontends(state(entry(CLUSTER_IP, 80, backends)))
    writer.apply(diff(writer.frontends, want))


def _slot_ids(maps: Maps, sid: int, count: int) -> list[int]:
    """The backend id of each of the frontend's slots, in the order of its slots, as
    the slot map holds them (the writer's own bookkeeping is none of these tests')."""
    found = [maps.slot4.lookup(abi.Lb4SlotKey(sid, i), ctypes.c_uint32) for i in range(count)]
    assert None not in found
    return [f.value for f in found if f is not None]


def _table_id(maps: Maps, writer: MapWriter) -> tuple[int, list[int]]:
    """The only frontend's table's map id, and the backend ids it must hold."""
    ((key, st),) = writer.frontends.items()
    ids = _slot_ids(maps, writer.svc_ids[key], len(st.slots))
    want = [ids[i] for i in maglev.table([f"{a}:{p}" for a, p in st.slots], SIZE)]
    found = maps.maglev.lookup(ctypes.c_uint32(writer.svc_ids[key]), ctypes.c_uint32)
    assert found is not None
    return found.value, want


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_table_is_mmapable_and_its_memory_is_what_was_written(maps: Maps) -> None:
    writer = _writer(maps)
    try:
        _apply(writer, [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)])
        table_id, want = _table_id(maps, writer)
        with PinnedMap("table", fd=map_fd_by_id(table_id)) as table:
            info = map_info(table.fd)
            assert info.flags == BPF_F_INNER_MAP | BPF_F_MMAPABLE == TABLE_FLAGS
            assert (info.type, info.value_size, info.max_entries) == (BPF_MAP_TYPE_ARRAY, 4, SIZE)
            with mmap.mmap(table.fd, SIZE * 8, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
                words = array("I", m[:])
            # each u32 id in the first half of its slot's 8 bytes, the rest zeros
            assert list(words[::2]) == want
            assert not any(words[1::2])
            # and the kernel's own lookups see the same
            got = [table.lookup(ctypes.c_uint32(i), ctypes.c_uint32) for i in range(SIZE)]
            assert [g.value for g in got if g is not None] == want
    finally:
        writer.maps.close()


def test_a_rewrite_is_in_place_and_the_program_follows_it(maps: Maps, run: RunFn) -> None:
    five = [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)]
    writer = _writer(maps)
    try:
        _apply(writer, five)
        first_id, _ = _table_id(maps, writer)
        flows = [pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, sport, 80) for sport in range(20000, 20200)]
        before = [pk.parse(run(pk.frame(f)).data).daddr for f in flows]
        assert "10.244.1.3" in before
        _apply(writer, five[:2] + five[3:])  # 10.244.1.3 leaves
        table_id, want = _table_id(maps, writer)
        assert table_id == first_id  # the same inner map: rewritten, not swapped
        for key in list(maps.ct4.keys(abi.Ct4Key)):  # as new flows, not tracked ones
            maps.ct4.delete(key)
        (st,) = writer.frontends.values()
        order = maglev.table([f"{a}:{p}" for a, p in st.slots], SIZE)
        after = []
        for f in flows:
            h = maglev.flow_hash(
                IPv4Address(CLIENT), f.sport, IPv4Address(CLUSTER_IP), 80, Protocol.TCP
            )
            after.append(pk.parse(run(pk.frame(f)).data).daddr)
            assert after[-1] == str(st.slots[order[h % SIZE]][0])
        assert "10.244.1.3" not in after and len(want) == SIZE
    finally:
        writer.maps.close()


def test_writing_tables_leaves_no_fd_open(maps: Maps) -> None:
    writer = _writer(maps)
    try:
        backends = [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)]
        _apply(writer, backends)  # warm up whatever is opened once
        held = _fds()
        for n in (4, 3, 5, 2):  # rewrites in place
            _apply(writer, backends[:n])
        _apply(writer, [])  # frontend deleted: its table stays with its id
        _apply(writer, backends)  # its id given out again: the same table rewritten
        assert _fds() == held
    finally:
        writer.maps.close()


def test_an_agent_over_an_old_ebpflb_mg4_pin_removes_it(bpffs: str) -> None:
    """As BpfDataplane starts: ensure_pin_dir, remove_legacy_pins, then the program
    creates (or reuses) its pins. The old outer map, whose inner maps are not mmapable,
    could not hold the new tables at all (EINVAL), so it is renamed, not reused."""
    pin_dir = os.path.join(bpffs, "ebpflb")
    ensure_pin_dir(pin_dir)
    template = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, "ebpflb_mgtmpl", flags=BPF_F_INNER_MAP)
    try:
        old = map_create(
            MapType.ARRAY_OF_MAPS, 4, 4, MAX_SERVICES, "ebpflb_mg4", inner_map_fd=template
        )
    finally:
        os.close(template)
    with PinnedMap("ebpflb_mg4", fd=old) as outer:
        obj_pin(outer.fd, os.path.join(pin_dir, "ebpflb_mg4"))
        table = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, SIZE, "ebpflb_mgt", flags=TABLE_FLAGS)
        try:
            with pytest.raises(OSError):  # the reason for the new name
                outer.update(ctypes.c_uint32(0), ctypes.c_uint32(table))
        finally:
            os.close(table)
    assert "ebpflb_mg4" in abi.LEGACY_MAPS and abi.MAP_MAGLEV == "ebpflb_mg4_v2"

    remove_legacy_pins(pin_dir)
    prog = compile_program(
        pin_dir=pin_dir,
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        max_conntrack=MAX_CONNTRACK,
    )
    try:
        assert not os.path.exists(os.path.join(pin_dir, "ebpflb_mg4"))
        maps = Maps.open(pin_dir)
        try:
            writer = _writer(maps)
            try:
                _apply(writer, [("10.244.1.1", 8080, True), ("10.244.1.2", 8080, True)])
                table_id, want = _table_id(maps, writer)
                with PinnedMap("table", fd=map_fd_by_id(table_id)) as t:
                    slot7 = t.lookup(ctypes.c_uint32(7), ctypes.c_uint32)
                assert slot7 is not None and slot7.value == want[7]
            finally:
                writer.maps.close()
        finally:
            maps.close()
    finally:
        prog.close()


def test_a_table_taken_out_behind_the_writers_back_is_made_again(maps: Maps) -> None:
    """The writer remembers which ids hold a table (read once from the outer map) only
    as a hint: an id whose table is gone gets a new one, not a write into nothing."""
    five = [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)]
    writer = _writer(maps)
    try:
        _apply(writer, five)
        (sid,) = writer.svc_ids.values()
        assert maps.maglev.delete(ctypes.c_uint32(sid))
        _apply(writer, five[:4])
        table_id, want = _table_id(maps, writer)
        with PinnedMap("table", fd=map_fd_by_id(table_id)) as t:
            got = [t.lookup(ctypes.c_uint32(i), ctypes.c_uint32) for i in range(SIZE)]
        assert [g.value for g in got if g is not None] == want
    finally:
        writer.maps.close()


def test_new_tables_beyond_pending_max_go_into_the_outer_map_early(
    maps: Maps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan with more new tables than may wait (each holds an fd) puts them into the
    outer map in several batches; every frontend gets its right table, no fd stays."""
    batches: list[int] = []
    update = maps.maglev.update_batch_raw

    def counted(keys: bytes, values: bytes, count: int, flags: int = 0) -> None:
        batches.append(count)
        update(keys, values, count, flags)

    monkeypatch.setattr(maps.maglev, "update_batch_raw", counted)
    writer = _writer(maps)
    try:
        assert writer.maglev is not None
        writer.maglev = MaglevTables(maps.maglev, SIZE, pending_max=2)
        held = _fds()
        entries = [
            entry(f"10.96.1.{i}", 80, [(f"10.244.{i}.{j}", 8080, True) for j in range(1, 4)])
            for i in range(1, 6)
        ]
        writer.apply(diff(writer.frontends, desired_frontends(state(*entries))))
        assert batches == [2, 2, 1]
        assert _fds() == held
        for key, st in writer.frontends.items():
            sid = writer.svc_ids[key]
            ids = _slot_ids(maps, sid, len(st.slots))
            want = [ids[i] for i in maglev.table([f"{a}:{p}" for a, p in st.slots], SIZE)]
            found = maps.maglev.lookup(ctypes.c_uint32(sid), ctypes.c_uint32)
            assert found is not None, st.frontend
            with PinnedMap("table", fd=map_fd_by_id(found.value)) as t:
                got = [t.lookup(ctypes.c_uint32(i), ctypes.c_uint32) for i in range(SIZE)]
            assert [g.value for g in got if g is not None] == want, st.frontend
    finally:
        writer.maps.close()
