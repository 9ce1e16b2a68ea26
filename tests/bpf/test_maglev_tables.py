"""The Maglev tables as the kernel holds them: mmapable inner maps of ebpflb_mg4_v2,
written with one copy into their memory and rewritten in place, read by the program
like any array; and the old ebpflb_mg4 (whose inner maps could not be mmapped)
removed when an agent of this version starts over its pins."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from array import array
from ipaddress import IPv4Address
from typing import Any

import pytest

from ebpflb import _maglevfill, maglev
from ebpflb.dataplane.bpf import abi, maglevtables
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


def _tables(maps: Maps, pending_max: int | None = None) -> MaglevTables:
    return MaglevTables(maps.maglev, SIZE, pending_max=pending_max)


def _backends(i: int, n: int) -> tuple[tuple[IPv4Address, int], ...]:
    return tuple((IPv4Address(f"10.244.{i}.{j}"), 8080) for j in range(1, n + 1))


def _write(tables: MaglevTables, sid: int, slots: tuple[tuple[IPv4Address, int], ...]) -> None:
    tables.write(sid, slots, [100 * sid + j for j in range(len(slots))])


def _table_of(maps: Maps, sid: int) -> tuple[int, list[int]]:
    """Frontend `sid`'s table: its map id and the id in each slot, as the kernel reads them."""
    found = maps.maglev.lookup(ctypes.c_uint32(sid), ctypes.c_uint32)
    assert found is not None
    with PinnedMap("table", fd=map_fd_by_id(found.value)) as t:
        got = [t.lookup(ctypes.c_uint32(i), ctypes.c_uint32) for i in range(SIZE)]
    return found.value, [g.value for g in got if g is not None]


def _want_of(sid: int, slots: tuple[tuple[IPv4Address, int], ...]) -> list[int]:
    return [100 * sid + i for i in maglev.table([f"{a}:{p}" for a, p in slots], SIZE)]


def _maker(
    count: int, *, value_size: int = 4, ahead: int = 8192, map_bytes: int = 0
) -> _maglevfill.MapMaker:
    return _maglevfill.MapMaker(
        map_type=BPF_MAP_TYPE_ARRAY,
        key_size=4,
        value_size=value_size,
        max_entries=SIZE,
        flags=TABLE_FLAGS,
        name="ebpflb_mgt_but_longer",
        count=count,
        ahead=ahead,
        map_bytes=map_bytes,
    )


def test_the_map_maker_makes_maps_of_the_shape_asked() -> None:
    held = _fds()
    maker = _maker(3)
    fds = [maker.take() for _ in range(3)]
    assert maker.take() is None  # all made and taken: no more will come
    assert maker.counts == (3, 3, 0)
    try:
        assert len({fd for fd in fds if fd is not None}) == 3
        for fd in fds:
            assert fd is not None
            info = map_info(fd)
            shape = (info.type, info.key_size, info.value_size, info.max_entries, info.flags)
            assert shape == (BPF_MAP_TYPE_ARRAY, 4, 4, SIZE, TABLE_FLAGS)
            assert info.name == "ebpflb_mgt_but_"  # cut to 15 characters
            assert os.get_inheritable(fd) is False
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    maker.close()
    assert _fds() == held
    assert _maker(0).take() is None


def test_closing_the_map_maker_closes_what_was_not_taken() -> None:
    held = _fds()
    maker = _maker(5000)
    first = maker.take()
    assert first is not None
    os.close(first)
    maker.close()  # stops it mid-way: what it made and nobody took is closed
    made, taken, err = maker.counts
    assert taken == 1 and 1 <= made <= 5000 and not err
    assert maker.take() is None
    maker.close()  # twice is fine
    assert _fds() == held
    del maker  # and so is dropping it while it runs
    _maker(5000)
    assert _fds() == held


def test_a_map_maker_that_fails_hands_out_nothing_more() -> None:
    held = _fds()
    maker = _maker(2, value_size=0)  # refused by the kernel
    assert maker.take() is None
    assert maker.counts == (0, 0, errno.EINVAL)
    maker.close()
    with pytest.raises(ValueError, match="0 to"):
        _maker(-1)
    with pytest.raises(ValueError, match="at least 1 map ahead"):
        _maker(1, ahead=0)
    assert _fds() == held


def _stays_at(maker: _maglevfill.MapMaker, want: tuple[int, int, int]) -> bool:
    """The maker's counts reach `want` (within 2 s) and are still `want` 50 ms later:
    it waits for room instead of making more."""
    for _ in range(200):
        if maker.counts == want:
            time.sleep(0.05)
            return maker.counts == want
        time.sleep(0.01)
    return False


def test_the_map_maker_keeps_no_more_than_ahead_untaken() -> None:
    held = _fds()
    maker = _maker(100, ahead=10)
    assert _stays_at(maker, (10, 0, 0))
    taken = [maker.take() for _ in range(4)]
    assert _stays_at(maker, (14, 4, 0))  # made as many more as were taken
    taken += [maker.take() for _ in range(96)]
    assert maker.take() is None and maker.counts == (100, 100, 0)
    assert None not in taken and len(set(taken)) == 100
    for fd in taken:
        if fd is not None:
            os.close(fd)
    stalled = _maker(100, ahead=10)
    assert _stays_at(stalled, (10, 0, 0))
    stalled.close()  # stops it while it waits for room
    assert stalled.counts[:2] == (10, 0)
    assert _fds() == held


def test_expected_tables_are_made_ahead_and_written(maps: Maps) -> None:
    held = _fds()
    tables = _tables(maps)
    tables.expect(70)
    assert tables._maker is not None
    maker = tables._maker
    assert _stays_at(maker, (70, 0, 0))  # all made before the first write
    slots = {sid: _backends(sid, 3 + sid % 4) for sid in range(1, 61)}
    for sid, s in slots.items():
        _write(tables, sid, s)
    assert maker.counts[1] == 60  # every table written was made ahead
    tables.flush()
    assert tables._maker is None
    assert _fds() == held  # the ones not used closed, the 60 written held by the outer map
    for sid, s in slots.items():
        assert _table_of(maps, sid)[1] == _want_of(sid, s)


def test_write_makes_its_own_when_none_is_ready_and_the_maker_one_fewer(
    maps: Maps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes right after expect outrun the maker: each write that finds no table
    ready makes its own instead of waiting, and the maker makes one fewer (one more at
    most, when it was already making it), so no table is made twice over."""
    monkeypatch.setattr(maglevtables, "_MAKE_MIN", 4)
    own: list[int] = []
    create = map_create

    def counted(*args: Any, **kwargs: Any) -> int:
        fd = create(*args, **kwargs)
        own.append(fd)
        return fd

    monkeypatch.setattr(maglevtables, "map_create", counted)
    held = _fds()
    tables = _tables(maps)
    tables.expect(60)
    assert tables._maker is not None
    maker = tables._maker
    for sid in range(1, 61):
        _write(tables, sid, _backends(sid, 3))
    made, taken, err = maker.counts
    assert taken + len(own) == 60 and not err
    assert taken <= made <= taken + 1 + len(own)  # never more than 60 + 1 in all
    tables.flush()
    assert _fds() == held
    for sid in range(1, 61):
        assert _table_of(maps, sid)[1] == _want_of(sid, _backends(sid, 3))


def test_more_new_tables_than_expected_are_made_by_write(
    maps: Maps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maglevtables, "_MAKE_MIN", 4)
    held = _fds()
    tables = _tables(maps)
    tables.expect(10)
    for sid in range(1, 31):
        _write(tables, sid, _backends(sid, 2))
    tables.flush()
    assert _fds() == held
    for sid in range(1, 31):
        assert _table_of(maps, sid)[1] == _want_of(sid, _backends(sid, 2))


def test_few_or_no_extension_no_thread(maps: Maps, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _tables(maps)
    tables.expect(63)
    assert tables._maker is None
    monkeypatch.setattr(maglevtables, "_MapMaker", None)
    tables.expect(1000)
    assert tables._maker is None


def test_made_ahead_no_more_than_may_wait(maps: Maps) -> None:
    """Every expected table is made, but no more than pending_max at a time wait to be
    taken (each holds an fd, as many as the new tables waiting for the outer map)."""
    tables = _tables(maps, pending_max=100)
    tables.expect(1000)
    assert tables._maker is not None
    assert _stays_at(tables._maker, (100, 0, 0))
    tables.flush()
    assert tables._maker is None


def test_without_the_extension_the_tables_are_the_same(
    maps: Maps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python fill and its copy through a mapping of each table, as a build
    without the extension writes them: new tables and a rewrite in place."""
    monkeypatch.setattr(maglevtables, "_TableWriter", None)
    monkeypatch.setattr(maglevtables, "_MapMaker", None)
    held = _fds()
    tables = _tables(maps)
    assert tables._writer is None
    tables.expect(100)
    for sid in (1, 2):
        _write(tables, sid, _backends(sid, 5))
    tables.flush()
    first_id, got = _table_of(maps, 1)
    assert got == _want_of(1, _backends(1, 5))
    assert _table_of(maps, 2)[1] == _want_of(2, _backends(2, 5))
    _write(tables, 1, _backends(1, 3))
    tables.flush()
    assert _table_of(maps, 1) == (first_id, _want_of(1, _backends(1, 3)))
    with (
        PinnedMap("table", fd=map_fd_by_id(first_id)) as t,
        mmap.mmap(t.fd, SIZE * 8, prot=mmap.PROT_READ) as m,
    ):
        assert not any(array("I", m[:])[1::2])  # zeros between the ids
    assert _fds() == held


def test_the_writer_expects_its_plans_new_tables(
    maps: Maps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its first write, MapWriter.apply tells the tables how many new frontends
    with an active backend (each a new table) its plan writes."""
    expected: list[int] = []
    writer = _writer(maps)
    try:
        assert writer.maglev is not None
        monkeypatch.setattr(writer.maglev, "expect", expected.append)
        backends = [(f"10.244.1.{i}", 8080, True) for i in range(1, 4)]
        entries = [entry(f"10.96.1.{i}", 80, backends) for i in range(1, 4)]
        idle = entry("10.96.1.9", 80, [("10.244.1.9", 8080, False)])  # no active backend
        writer.apply(diff(writer.frontends, desired_frontends(state(*entries, idle))))
        more = entry("10.96.1.4", 80, backends)
        changed = entry("10.96.1.1", 80, backends[:2])
        want = desired_frontends(state(changed, *entries[1:], idle, more))
        writer.apply(diff(writer.frontends, want))
        assert expected == [3, 1]
    finally:
        writer.maps.close()


def test_ids_must_match_the_slots(maps: Maps) -> None:
    tables = _tables(maps)
    with pytest.raises(ValueError, match="2 backend ids for 3 Maglev slots"):
        tables.write(1, _backends(1, 3), [1, 2])
    tables.flush()


def _bpf_mappings() -> int:
    """How many mappings of BPF maps this process holds."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "bpf-map" in line)


def test_tables_made_and_mapped_ahead_are_written_in_place() -> None:
    held, mapped = _fds(), _bpf_mappings()
    maker = _maker(5, ahead=5, map_bytes=SIZE * 8)
    writer = _maglevfill.TableWriter(size=SIZE, stride=8, spots=2)
    assert _stays_at(maker, (5, 0, 0))
    assert _bpf_mappings() == mapped + 5  # mapped by the maker's thread
    names = [f"10.244.1.{i}:8080" for i in range(1, 4)]
    fds = []
    for i in range(5):
        fd = writer.write_made(maker, *maglev.walks(names, SIZE), [i, 10 + i, 20 + i])
        assert fd is not None
        fds.append(fd)
        assert writer.mapped_made == (i % 2) + 1  # unmapped two at a time (spots)
    assert writer.write_made(maker, *maglev.walks(names, SIZE), [1, 2, 3]) is None  # no more
    writer.release()
    assert writer.mapped_made == 0 and _bpf_mappings() == mapped
    order = maglev.table(names, SIZE)
    for i, fd in enumerate(fds):
        with PinnedMap("table", fd=fd) as t:
            got = [t.lookup(ctypes.c_uint32(s), ctypes.c_uint32) for s in range(SIZE)]
            assert [g.value for g in got if g is not None] == [
                [i, 10 + i, 20 + i][j] for j in order
            ]
            with mmap.mmap(t.fd, SIZE * 8, prot=mmap.PROT_READ) as m:
                assert not any(array("I", m[:])[1::2])  # zeros between the ids
    maker.close()
    assert _fds() == held


def test_write_made_refuses_before_taking_a_table() -> None:
    held, mapped = _fds(), _bpf_mappings()
    maker = _maker(2, ahead=2, map_bytes=SIZE * 8)
    writer = _maglevfill.TableWriter(size=SIZE, stride=8, spots=4)
    with pytest.raises(ValueError, match="maps 8168 bytes of each map, not 2008"):
        _maglevfill.TableWriter(size=251, stride=8, spots=1).write_made(maker, [0], [1], [1])
    with pytest.raises(ValueError, match="skips must be in"):
        writer.write_made(maker, [0], [0], [1])
    with pytest.raises(ValueError, match="1 Maglev ids for 2 backends"):
        writer.write_made(maker, [0, 1], [1, 2], [1])
    with pytest.raises(TypeError):
        writer.write_made(object(), [0], [1], [1])  # type: ignore[arg-type]
    assert _stays_at(maker, (2, 0, 0))  # nothing taken
    maker.close()  # closes and unmaps the two
    assert _fds() == held and _bpf_mappings() == mapped


def test_take_of_a_mapping_maker_gives_the_map_unmapped() -> None:
    mapped = _bpf_mappings()
    maker = _maker(1, map_bytes=SIZE * 8)
    fd = maker.take()
    assert fd is not None
    try:
        assert _bpf_mappings() == mapped
        assert map_info(fd).max_entries == SIZE
    finally:
        os.close(fd)
