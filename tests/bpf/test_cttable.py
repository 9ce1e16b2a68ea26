"""The conntrack tables (bpf/lib/cttable.h) as the program writes them and userspace
(ebpflb/dataplane/bpf/cttable.py) reads them: the same hash on both sides, a full
bucket giving up its least recently seen entry, a bucket held by another writer, the
tag rule look-ups rely on, the seed kept across loads, and an older version's LRU
tables carried over."""

from __future__ import annotations

import ctypes
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi, cttable
from ebpflb.dataplane.bpf.loader import LoadedProgram, compile_program
from ebpflb.dataplane.bpf.maps import open_map
from ebpflb.dataplane.bpf.syscall import MapType, PinnedMap, map_create, obj_pin, prog_test_run
from ebpflb.errors import DataplaneError
from tests.bpf import packets as pk
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn

pytestmark = pytest.mark.root

CLUSTER_IP, PORT = "10.96.0.10", 80
BACKEND, BACKEND_PORT = "10.244.1.11", 8080


def _service(maps: Maps) -> None:
    """One ClusterIP with one backend: every flow's REPLY key is known in advance."""
    maps.add_service(1, CLUSTER_IP, PORT, pk.TCP, {1: (BACKEND, BACKEND_PORT)})


def _keys(client: str, sport: int) -> tuple[abi.Ct4Key, abi.Ct4Key]:
    """A flow's SERVICE and REPLY keys, as the program makes them."""
    c, f, b = abi.pack_ip4(client), abi.pack_ip4(CLUSTER_IP), abi.pack_ip4(BACKEND)
    service = abi.Ct4Key(c, f, abi.htons(sport), abi.htons(PORT), pk.TCP, abi.CtDir.SERVICE)
    reply = abi.Ct4Key(b, c, abi.htons(BACKEND_PORT), abi.htons(sport), pk.TCP, abi.CtDir.REPLY)
    return service, reply


def _syn(client: str, sport: int) -> bytes:
    return pk.frame(pk.Flow(pk.TCP, client, CLUSTER_IP, sport, PORT), b"x")


def _reply(client: str, sport: int) -> bytes:
    flow = pk.Flow(pk.TCP, BACKEND, client, BACKEND_PORT, sport)
    return pk.frame(flow, b"y", tcp_flags=pk.TCP_ACK)


@pytest.fixture
def table(maps: Maps) -> cttable.ConntrackTable:
    return _table(maps)


def test_userspace_finds_every_entry_where_the_program_put_it(
    maps: Maps, run: RunFn, table: cttable.ConntrackTable
) -> None:
    _service(maps)
    for sport in range(20000, 20200):
        assert run(_syn("10.244.0.7", sport)).retval == TC_ACT_OK
    assert table.count() == 400
    for sport in range(20000, 20200):
        service, reply = _keys("10.244.0.7", sport)
        found = table.lookup(service, abi.Ct4Value)
        assert found is not None and found.backend_id == 1
        assert found.nat_address == abi.pack_ip4(BACKEND)
        assert table.lookup(reply, abi.Ct4Value) is not None
    # the placement the lookups used is the program's: each entry sits in its bucket
    buckets = table._all_buckets()
    for sport in range(20000, 20200):
        for key in _keys("10.244.0.7", sport):
            index, tag = table.place(key)
            at = index * table.stride
            head = abi.CtHead.from_buffer_copy(buckets[at : at + ctypes.sizeof(abi.CtHead)])
            assert tag in list(head.tags)


def test_the_program_finds_an_entry_userspace_wrote(
    maps: Maps, run: RunFn, table: cttable.ConntrackTable
) -> None:
    _service(maps)
    _, reply = _keys("10.244.0.8", 41000)
    value = abi.Ct4Value(1, 1, 1, 1, abi.pack_ip4(CLUSTER_IP), abi.htons(PORT))
    table.update(reply, value)
    out = run(_reply("10.244.0.8", 41000))
    assert out.retval == TC_ACT_OK
    assert pk.parse(out.data).flow == pk.Flow(pk.TCP, CLUSTER_IP, "10.244.0.8", PORT, 41000)


def _key_in(table: cttable.ConntrackTable, index: int, rng: random.Random) -> abi.Ct4Key:
    """A made-up REPLY key that lands in bucket index."""
    while True:
        key = abi.Ct4Key(
            rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16),
            pk.UDP, abi.CtDir.REPLY,
        )  # fmt: skip
        if table.place(key)[0] == index:
            return key


def test_a_full_bucket_gives_up_its_least_recently_seen_entry(
    maps: Maps, run: RunFn, table: cttable.ConntrackTable
) -> None:
    _service(maps)
    rng = random.Random(7)
    sport = next(
        p
        for p in range(42000, 43000)
        if len({table.place(k)[0] for k in _keys("10.244.0.9", p)}) == 2
    )
    _, reply = _keys("10.244.0.9", sport)
    index = table.place(reply)[0]
    # eight entries in the REPLY key's bucket, seen at different times; way 5 the oldest
    seen = [9004, 9001, 9006, 9000, 9007, 10, 9002, 9005]
    others = [_key_in(table, index, rng) for _ in range(abi.CT_WAYS)]
    for key, when in zip(others, seen, strict=True):
        table.update(key, abi.Ct4Value(when, when, 1, 1))
    assert table.count() == abi.CT_WAYS
    assert run(_syn("10.244.0.9", sport)).retval == TC_ACT_OK
    assert table.lookup(reply, abi.Ct4Value) is not None
    gone = [key for key in others if table.lookup(key, abi.Ct4Value) is None]
    assert [bytes(k) for k in gone] == [bytes(others[5])]


def test_a_bucket_held_by_another_writer_drops_the_new_flow_as_ct_full(
    maps: Maps, run: RunFn, table: cttable.ConntrackTable
) -> None:
    _service(maps)
    _, reply = _keys("10.244.0.10", 43000)
    index = table.place(reply)[0]
    bucket = table._bucket(index)
    bucket[:8] = (1).to_bytes(8, "little")  # the lock word, as a writer holds it
    PinnedMap.update(
        table, ctypes.c_uint32(index), (ctypes.c_char * len(bucket)).from_buffer(bucket)
    )
    before = maps.gstat_value(abi.GlobalStat.CT_FULL)
    assert run(_syn("10.244.0.10", 43000)).retval == TC_ACT_SHOT
    assert maps.gstat_value(abi.GlobalStat.CT_FULL) == before + 1
    assert maps.drop_count(abi.DropReason.CT_FULL) >= 1
    assert table.count() == 0  # nothing half-written
    table._write_bucket(index, table._bucket(index))  # released
    assert run(_syn("10.244.0.10", 43000)).retval == TC_ACT_OK
    assert table.lookup(reply, abi.Ct4Value) is not None


def test_a_third_entry_of_one_tag_takes_the_first_ones_way(
    maps: Maps, run: RunFn, table: cttable.ConntrackTable
) -> None:
    """Look-ups compare two ways of a tag; the program never lets a bucket hold three.
    Three flows whose REPLY keys share bucket and tag are found by search."""
    _service(maps)
    by_place: dict[tuple[int, int], list[tuple[str, int]]] = {}
    flows: list[tuple[str, int]] = []
    rng = random.Random(11)  # random flows: a grid of them falls on a lattice of sums
    for _ in range(400_000):
        client = f"10.244.{rng.randrange(2, 250)}.{rng.randrange(1, 250)}"
        sport = rng.randrange(1024, 61000)
        got = by_place.setdefault(table.place(_keys(client, sport)[1]), [])
        if (client, sport) in got:  # the same flow drawn again: no second key
            continue
        got.append((client, sport))
        if len(got) == 3:
            flows = got
            break
    assert flows, "no three keys of one bucket and tag found"
    for client, sport in flows:
        assert run(_syn(client, sport)).retval == TC_ACT_OK
    replies = [_keys(client, sport)[1] for client, sport in flows]
    assert table.lookup(replies[0], abi.Ct4Value) is None
    for (client, sport), reply in zip(flows[1:], replies[1:], strict=True):
        assert table.lookup(reply, abi.Ct4Value) is not None
        out = run(_reply(client, sport))
        assert pk.parse(out.data).flow.saddr == CLUSTER_IP  # the program finds it too


@pytest.fixture
def fresh(bpffs: str) -> Iterator[str]:
    yield bpffs


def _table(maps: Maps) -> cttable.ConntrackTable:
    assert isinstance(maps.ct4, cttable.ConntrackTable)
    return maps.ct4


def _load(pin_dir: str, conntrack: int = 1024) -> LoadedProgram:
    return compile_program(
        pin_dir=pin_dir, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS,
        max_conntrack=conntrack,
    )  # fmt: skip


def test_the_seed_is_the_tables_and_outlives_the_program(fresh: str) -> None:
    first = _load(fresh)
    try:
        maps = Maps.open(fresh)
        seed = cttable.table_seed(fresh)
        assert seed != 0 and _table(maps).seed() == seed
        _service(maps)
        assert prog_test_run(first.fd, _syn("10.244.0.11", 44000)).retval == TC_ACT_OK
        maps.close()
    finally:
        first.close()
    second = _load(fresh)  # a restart: same pins, the seed read back from them
    try:
        maps = Maps.open(fresh)
        assert _table(maps).seed() == seed
        hits = maps.gstat_value(abi.GlobalStat.CT_HIT)
        out = prog_test_run(second.fd, _syn("10.244.0.11", 44000))
        assert pk.parse(out.data).flow.daddr == BACKEND
        assert maps.gstat_value(abi.GlobalStat.CT_HIT) == hits + 1  # the old entry found
        maps.close()
    finally:
        second.close()


def test_tables_made_apart_have_seeds_of_their_own(fresh: str, program: LoadedProgram) -> None:
    made = _load(fresh)
    try:
        assert cttable.table_seed(fresh) != cttable.table_seed(program.pin_dir)
    finally:
        made.close()


def test_an_upgrade_carries_the_lru_tables_flows_over(fresh: str) -> None:
    """An older version's ebpflb_ct4_v2 (an LRU hash) is copied into the new table
    before its pin goes; the program then translates the flows' replies."""
    old = os.path.join(fresh, "ebpflb_ct4_v2")
    fd = map_create(
        MapType.LRU_HASH, ctypes.sizeof(abi.Ct4Key), ctypes.sizeof(abi.Ct4Value), 1024, "old"
    )
    obj_pin(fd, old)
    os.close(fd)
    flows = [("10.244.0.12", 45000 + i) for i in range(50)]
    with PinnedMap(old) as lru:
        for client, sport in flows:
            service, reply = _keys(client, sport)
            lru.update(
                service, abi.Ct4Value(1, 1, 1, 1, abi.pack_ip4(BACKEND), abi.htons(BACKEND_PORT))
            )
            lru.update(reply, abi.Ct4Value(1, 1, 1, 1, abi.pack_ip4(CLUSTER_IP), abi.htons(PORT)))
    cttable.migrate_conntrack(fresh)
    new = open_map(os.path.join(fresh, abi.MAP_CONNTRACK))
    assert isinstance(new, cttable.ConntrackTable)
    assert new.count() == 100 and new.seed() != 0
    assert cttable.max_conntrack_of(new.info.max_entries) == 1024
    new.close()
    prog = _load(fresh)
    try:
        maps = Maps.open(fresh)
        _service(maps)
        for client, sport in flows[:5]:
            out = prog_test_run(prog.fd, _reply(client, sport))
            assert pk.parse(out.data).flow == pk.Flow(pk.TCP, CLUSTER_IP, client, PORT, sport)
        maps.close()
    finally:
        prog.close()


def test_tables_too_big_for_the_node_are_refused_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader checks the tables' size against the node's memory (here a node of
    1 GiB: 2^21 entries would take 704 MiB) before it compiles or makes a pin dir."""
    from ebpflb.dataplane.bpf import loader

    monkeypatch.setattr(loader, "memory_total", lambda: 1 << 30)
    pin_dir = tmp_path / "pins"
    with pytest.raises(DataplaneError, match=r"^--max-conntrack 2097152: .* 0\.7 GiB"):
        compile_program(
            pin_dir=str(pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS,
            max_conntrack=1 << 21,
        )  # fmt: skip
    assert not pin_dir.exists()
