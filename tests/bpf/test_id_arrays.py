"""The backend and reverse-NAT maps are arrays indexed by id (_v2), where they were
hashes keyed by it: an element is never deleted, a removed one is all zero, and every
reader (the program, read_state, the CLI's look-ups) takes zero for "none". An upgrade
copies the old hashes into the arrays, so the ids that conntrack entries name keep
their meaning."""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_legacy_pins
from ebpflb.dataplane.bpf.loader import compile_program
from ebpflb.dataplane.bpf.maps import BpfMaps, IdArrayMap, migrate_legacy_pins, read_state
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    MapType,
    PinnedMap,
    map_create,
    obj_pin,
    prog_test_run,
)
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf import packets as pk
from tests.bpf import packets6 as pk6
from tests.bpf.conftest import MAX_BACKENDS, MAX_CONNTRACK, MAX_SERVICES, TC_ACT_OK, RunFn
from tests.bpf.maps6 import Maps6

pytestmark = pytest.mark.root

U32 = ctypes.c_uint32


@dataclass(frozen=True)
class Family:
    name: str
    client: str
    vip: str
    pods: tuple[str, str]
    frame: Callable[..., bytes]
    parse: Callable[[bytes], pk.Parsed]
    backend: type[ctypes.Structure]
    rnat: type[ctypes.Structure]

    def maps(self, m: BpfMaps) -> tuple[IdArrayMap, IdArrayMap]:
        if self.name == "ipv6":
            return m.backends6, m.rnat6
        return m.backends, m.rnat


FAMILIES = (
    Family(
        "ipv4",
        "10.0.0.5",
        "10.96.0.10",
        ("10.0.1.1", "10.0.1.2"),
        pk.frame,
        pk.parse,
        abi.Lb4Backend,
        abi.Lb4Rnat,
    ),
    Family(
        "ipv6",
        "fd00::5",
        "fd00:96::10",
        ("fd00:1::1", "fd00:1::2"),
        pk6.frame6,
        pk6.parse6,
        abi.Lb6Backend,
        abi.Lb6Rnat,
    ),
)


def _state(fam: Family, pods: tuple[str, ...]) -> DesiredState:
    address = ipaddress.ip_address
    entry = ServiceEntry(
        Frontend(address(fam.vip), 80, Protocol.TCP, FrontendKind.CLUSTER_IP),
        ServicePortName(ServiceRef("demo", "web"), "http", Protocol.TCP),
        tuple(sorted(Backend(address(p), 8080, ready=True) for p in pods)),
    )
    return DesiredState.build([entry])


def _raw(m: PinnedMap, ident: int) -> bytes:
    """The array's element as the kernel holds it (PinnedMap's look-up, not the
    all-zero-is-none one)."""
    value = PinnedMap.lookup(m, U32(ident), ctypes.c_char * m.info.value_size)
    assert value is not None  # an array has every index below its size
    return bytes(value)


def _ids_by_address(m: IdArrayMap, fam: Family) -> dict[str, int]:
    def address(v: ctypes.Structure) -> str:
        a = v.address
        return str(abi.unpack_addr6(a) if fam.name == "ipv6" else abi.unpack_ip4(a))

    return {address(v): k.value for k, v in m.items(U32, fam.backend)}


@pytest.mark.parametrize("fam", FAMILIES, ids=[f.name for f in FAMILIES])
def test_a_removed_backend_reads_as_gone_and_its_flow_moves(
    maps6: Maps6, run: RunFn, fam: Family
) -> None:
    with BpfMaps(maps6.v4.pin_dir) as bpf:
        writer = MapWriter(bpf, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
        backends, rnat = fam.maps(bpf)
        assert (backends.info.type, rnat.info.type) == (MapType.ARRAY, MapType.ARRAY)
        writer.apply(diff(writer.frontends, desired_frontends(_state(fam, fam.pods))))
        ids = _ids_by_address(backends, fam)
        assert set(ids) == {str(ipaddress.ip_address(p)) for p in fam.pods}

        flow = pk.Flow(pk.TCP, fam.client, fam.vip, 40000, 80)
        inp = fam.frame(flow)
        gone = fam.parse(run(inp).data).daddr
        (live,) = set(ids) - {gone}
        writer.apply(diff(writer.frontends, desired_frontends(_state(fam, (live,)))))

        # the element is zeroed, and every reader takes it for "none"
        assert _raw(backends, ids[gone]) == bytes(backends.info.value_size)
        assert backends.lookup(U32(ids[gone]), fam.backend) is None
        assert _ids_by_address(backends, fam) == {live: ids[live]}
        (held,) = read_state(bpf).frontends.values()
        assert [str(b.address) for b in held.backends] == [live]
        # the flow's next packet finds its backend gone and is sent to the one left
        res = run(fam.frame(flow, b"more", tcp_flags=pk.TCP_ACK))
        assert res.retval == TC_ACT_OK
        assert (fam.parse(res.data).daddr, fam.parse(res.data).dport) == (live, 8080)
        assert maps6.v4.gstat_value(abi.GlobalStat.RESELECT) == 1

        # the Service goes: its reverse-NAT element is zeroed, a reply passes untouched
        (sid,) = writer.svc_ids.values()
        assert rnat.lookup(U32(sid), fam.rnat) is not None
        writer.apply(diff(writer.frontends, desired_frontends(DesiredState.build([]))))
        assert _raw(rnat, sid) == bytes(rnat.info.value_size)
        assert _raw(backends, ids[live]) == bytes(backends.info.value_size)
        assert backends.dump_raw()[2] == rnat.dump_raw()[2] == 0
        reply = fam.frame(pk.Flow(pk.TCP, live, fam.client, 8080, 40000), b"answer")
        res = run(reply)
        assert (res.retval, res.data) == (TC_ACT_OK, reply)
        assert maps6.v4.gstat_value(abi.GlobalStat.REPLY) == 0


@pytest.mark.parametrize("mmapable", [True, False], ids=["mmap", "batch-lookup"])
def test_an_id_array_acts_as_the_hash_it_replaced(mmapable: bool) -> None:
    fd = map_create(
        BPF_MAP_TYPE_ARRAY, 4, 12, 3000, "t_ids", flags=BPF_F_MMAPABLE if mmapable else 0
    )
    with IdArrayMap("t_ids", fd=fd) as m:
        values = {
            i: abi.Lb4Backend(abi.pack_ip4(f"10.0.{i >> 8}.{i & 255}"), 1, 6, 1, 9)
            for i in (0, 5, 1023, 1024, 2999)
        }
        m.update_batch([U32(i) for i in values], list(values.values()))
        keys, raw, count = m.dump_raw()
        assert count == 5 and list(memoryview(keys).cast("I")) == sorted(values)
        assert raw == b"".join(bytes(values[i]) for i in sorted(values))
        assert [k.value for k in m.keys(U32)] == sorted(values)
        assert m.delete(U32(1023)) and not m.delete(U32(1023)) and not m.delete(U32(7))
        m.delete_batch([U32(0), U32(2999)])
        assert [k.value for k in m.keys(U32)] == [5, 1024]
        assert m.lookup(U32(2999), abi.Lb4Backend) is None
        found = m.lookup(U32(5), abi.Lb4Backend)
        assert found is not None and bytes(found) == bytes(values[5])


# what an older version pinned: hashes keyed by the id, with these entries
OLD_BACKENDS4 = {7: ("10.0.1.7", 8080, 3), 200: ("10.0.1.200", 8080, 3), 300: ("10.0.1.1", 1, 3)}
OLD_BACKENDS6 = {8: ("fd00:1::8", 8080, 4)}
OLD_RNAT4 = {3: ("10.96.0.10", 80)}
OLD_RNAT6 = {4: ("fd00:96::10", 80)}


def _pin_hash(
    pin_dir: str, name: str, value_size: int, entries: int, items: Mapping[int, ctypes.Structure]
) -> None:
    fd = map_create(MapType.HASH, 4, value_size, entries, name)
    with PinnedMap(name, fd=fd) as m:
        for ident, value in items.items():
            m.update(U32(ident), value)
        obj_pin(m.fd, os.path.join(pin_dir, name))


def _pin_old_maps(pin_dir: str) -> None:
    be4 = {
        i: abi.Lb4Backend(abi.pack_ip4(a), abi.htons(p), pk.TCP, abi.BackendFlag.ACTIVE, s)
        for i, (a, p, s) in OLD_BACKENDS4.items()
    }
    be6 = {
        i: abi.Lb6Backend(abi.addr6(a), abi.htons(p), pk.TCP, abi.BackendFlag.ACTIVE, s)
        for i, (a, p, s) in OLD_BACKENDS6.items()
    }
    rnat4 = {i: abi.Lb4Rnat(abi.pack_ip4(a), abi.htons(p)) for i, (a, p) in OLD_RNAT4.items()}
    rnat6 = {i: abi.Lb6Rnat(abi.addr6(a), abi.htons(p)) for i, (a, p) in OLD_RNAT6.items()}
    _pin_hash(pin_dir, "ebpflb_be4", 12, MAX_BACKENDS, be4)
    _pin_hash(pin_dir, "ebpflb_be6", 24, MAX_BACKENDS, be6)
    _pin_hash(pin_dir, "ebpflb_rnat4", 8, MAX_SERVICES, rnat4)
    _pin_hash(pin_dir, "ebpflb_rnat6", 20, MAX_SERVICES, rnat6)


@pytest.fixture
def agent_pins(bpffs: str) -> str:
    """A pin directory as the agent wants one (mode 0700) on the test's own bpffs."""
    path = os.path.join(bpffs, "pins")
    os.mkdir(path, 0o700)
    return path


def test_an_upgrade_carries_the_old_hashes_into_the_arrays(agent_pins: str) -> None:
    bpffs = agent_pins
    _pin_old_maps(bpffs)
    migrate_legacy_pins(bpffs)
    remove_legacy_pins(bpffs)
    assert not any(os.path.exists(os.path.join(bpffs, old)) for old in abi.ID_MAPS_MIGRATED)
    made = {}
    for name, entries in (
        (abi.MAP_BACKENDS, MAX_BACKENDS),
        (abi.MAP_BACKENDS6, MAX_BACKENDS),
        (abi.MAP_REVNAT, MAX_SERVICES),
        (abi.MAP_REVNAT6, MAX_SERVICES),
    ):
        with IdArrayMap(os.path.join(bpffs, name)) as m:
            info = m.info
            assert (info.type, info.max_entries, info.flags, info.name) == (
                MapType.ARRAY,
                entries,
                BPF_F_MMAPABLE,
                name,
            )
            made[name] = (info.id, [k.value for k in m.keys(U32)])
    # id 300 does not fit an array of MAX_BACKENDS (256): left out, the others kept
    assert made[abi.MAP_BACKENDS][1] == [7, 200]
    assert made[abi.MAP_BACKENDS6][1] == [8]
    assert (made[abi.MAP_REVNAT][1], made[abi.MAP_REVNAT6][1]) == ([3], [4])

    # the loader reuses the arrays, and the program serves the copied backend ids
    prog = compile_program(
        pin_dir=bpffs,
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        max_conntrack=MAX_CONNTRACK,
    )
    try:
        for name, (map_id, _ids) in made.items():
            with PinnedMap(os.path.join(bpffs, name)) as m:
                assert m.info.id == map_id
        with PinnedMap(os.path.join(bpffs, abi.MAP_SLOTS)) as slots:
            slots.update(abi.Lb4SlotKey(3, 0), U32(200))
        with PinnedMap(os.path.join(bpffs, abi.MAP_SERVICES)) as svc:
            svc.update(
                abi.Lb4Key(abi.pack_ip4("10.96.0.10"), abi.htons(80), pk.TCP),
                abi.Lb4Service(3, 1, abi.SvcFlag.CLUSTERIP),
            )
        flow = pk.Flow(pk.TCP, "10.0.0.5", "10.96.0.10", 40000, 80)
        res = prog_test_run(prog.fd, pk.frame(flow))
        assert res.retval == TC_ACT_OK
        assert (pk.parse(res.data).daddr, pk.parse(res.data).dport) == ("10.0.1.200", 8080)
        reply = pk.frame(pk.Flow(pk.TCP, "10.0.1.200", "10.0.0.5", 8080, 40000), b"a")
        out = pk.parse(prog_test_run(prog.fd, reply).data)
        assert (out.saddr, out.sport) == ("10.96.0.10", 80)  # the copied reverse NAT
    finally:
        prog.close()


def test_no_copy_over_arrays_already_there(agent_pins: str) -> None:
    bpffs = agent_pins
    """A second start (or an agent of this version that ran already): the arrays win."""
    fd = map_create(BPF_MAP_TYPE_ARRAY, 4, 12, MAX_BACKENDS, abi.MAP_BACKENDS, flags=BPF_F_MMAPABLE)
    with IdArrayMap("new", fd=fd) as m:
        obj_pin(m.fd, os.path.join(bpffs, abi.MAP_BACKENDS))
    _pin_old_maps(bpffs)
    migrate_legacy_pins(bpffs)
    with IdArrayMap(os.path.join(bpffs, abi.MAP_BACKENDS)) as m:
        assert m.dump_raw()[2] == 0
    with IdArrayMap(os.path.join(bpffs, abi.MAP_REVNAT)) as m:
        assert [k.value for k in m.keys(U32)] == [3]  # this one was still to copy
