"""Fixtures for the packet tests: the tc program compiled once per session with its
maps pinned on a private bpffs under /run (unmounted and removed afterwards, even when a
test fails), and a ``maps`` handle that empties every map before each test."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import LoadedProgram, compile_program
from ebpflb.dataplane.bpf.maps import open_map
from ebpflb.dataplane.bpf.syscall import PinnedMap, TestRunResult, possible_cpus, prog_test_run
from tests.bpf.maps6 import Maps6
from tests.bpffs import private_bpffs

MAX_SERVICES = 64
MAX_BACKENDS = 256
MAX_CONNTRACK = 1024

TC_ACT_OK = 0
TC_ACT_SHOT = 2


@pytest.fixture(scope="session")
def pin_dir() -> Iterator[str]:
    """A fresh bpffs under /run, unmounted and removed at the end of the session."""
    with private_bpffs("ebpflb-test") as path:
        yield path


@pytest.fixture(scope="session")
def program(pin_dir: str) -> Iterator[LoadedProgram]:
    prog = compile_program(
        pin_dir=pin_dir,
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        max_conntrack=MAX_CONNTRACK,
    )
    try:
        yield prog
    finally:
        prog.close()


@dataclass
class Maps:
    """The program's pinned maps, opened like the CLI opens them, plus small writers."""

    pin_dir: str
    svc4: PinnedMap
    slot4: PinnedMap
    be4: PinnedMap
    rnat4: PinnedMap
    ct4: PinnedMap
    svcstat: PinnedMap
    gstat: PinnedMap
    svcmeta: PinnedMap
    affinity: PinnedMap
    src_ranges: PinnedMap
    config: PinnedMap
    maglev: PinnedMap
    drops: PinnedMap

    @classmethod
    def open(cls, pin_dir: str) -> Maps:
        def m(name: str) -> PinnedMap:
            return open_map(os.path.join(pin_dir, name))

        return cls(
            pin_dir,
            m(abi.MAP_SERVICES),
            m(abi.MAP_SLOTS),
            m(abi.MAP_BACKENDS),
            m(abi.MAP_REVNAT),
            m(abi.MAP_CONNTRACK),
            m(abi.MAP_SVC_STATS),
            m(abi.MAP_GLOBAL_STATS),
            m(abi.MAP_SVC_META),
            m(abi.MAP_AFFINITY),
            m(abi.MAP_SRC_RANGES),
            m(abi.MAP_CONFIG),
            m(abi.MAP_MAGLEV),
            m(abi.MAP_DROPS),
        )

    def all(self) -> list[PinnedMap]:
        return [
            self.svc4,
            self.slot4,
            self.be4,
            self.rnat4,
            self.ct4,
            self.svcstat,
            self.gstat,
            self.svcmeta,
            self.affinity,
            self.src_ranges,
            self.config,
            self.maglev,
            self.drops,
        ]

    def clear(self) -> None:
        """Empty the hash maps and zero the per-CPU arrays."""
        hashes: list[tuple[PinnedMap, type[ctypes.Structure]]] = [
            (self.svc4, abi.Lb4Key),
            (self.slot4, abi.Lb4SlotKey),
            (self.ct4, abi.Ct4Key),
            (self.be4, _U32),
            (self.rnat4, _U32),
            (self.svcmeta, _U32),
            (self.affinity, abi.Aff4Key),
            (self.src_ranges, abi.SrcRange4Key),
        ]
        for m, key_type in hashes:
            for key in list(m.keys(key_type)):
                m.delete(key)
        for index in range(abi.CFG_MAX):
            self.config.update(ctypes.c_uint32(index), ctypes.c_uint32(0))
        for index in range(self.maglev.info.max_entries):
            self.maglev.delete(ctypes.c_uint32(index))
        for m in (self.svcstat, self.gstat, self.drops):
            stride = (m.info.value_size + 7) & ~7
            zeros = ctypes.create_string_buffer(stride * possible_cpus())
            for index in range(m.info.max_entries):
                m.update(ctypes.c_uint32(index), zeros)

    def close(self) -> None:
        for m in self.all():
            m.close()

    # Writers, in the order the real map writer uses: backends, slots, reverse NAT,
    # then the service entry whose count makes the slots visible.
    def add_backend(self, svc_id: int, backend_id: int, addr: str, port: int, proto: int) -> None:
        self.be4.update(
            ctypes.c_uint32(backend_id),
            abi.Lb4Backend(
                abi.pack_ip4(addr), abi.htons(port), proto, abi.BackendFlag.ACTIVE, svc_id
            ),
        )

    def set_slots(self, svc_id: int, backend_ids: list[int]) -> None:
        for slot, backend_id in enumerate(backend_ids):
            self.slot4.update(abi.Lb4SlotKey(svc_id, slot), ctypes.c_uint32(backend_id))

    def add_service(
        self, svc_id: int, addr: str, port: int, proto: int, backends: dict[int, tuple[str, int]]
    ) -> None:
        for backend_id, (baddr, bport) in backends.items():
            self.add_backend(svc_id, backend_id, baddr, bport, proto)
        self.set_slots(svc_id, list(backends))
        self.rnat4.update(ctypes.c_uint32(svc_id), abi.Lb4Rnat(abi.pack_ip4(addr), abi.htons(port)))
        self.set_count(svc_id, addr, port, proto, len(backends))

    def set_count(self, svc_id: int, addr: str, port: int, proto: int, count: int) -> None:
        self.svc4.update(
            abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto),
            abi.Lb4Service(svc_id, count, abi.SvcFlag.CLUSTERIP),
        )

    def gstat_value(self, stat: abi.GlobalStat) -> int:
        return sum(v.value for v in self.gstat.lookup_percpu(ctypes.c_uint32(stat), _U64))

    def drop_count(self, reason: abi.DropReason) -> int:
        return sum(v.value for v in self.drops.lookup_percpu(ctypes.c_uint32(-reason), _U64))

    def drop_counts(self) -> dict[str, int]:
        """Every reason's count that is not 0, by name: what the exit counted."""
        counts = {r.name.lower(): self.drop_count(r) for r in abi.DropReason}
        return {name: n for name, n in counts.items() if n}

    def svc_stats(self, svc_id: int) -> abi.LbStats:
        total = abi.LbStats()
        for v in self.svcstat.lookup_percpu(ctypes.c_uint32(svc_id), abi.LbStats):
            for field in abi.LbStats._fields_:
                setattr(total, field[0], getattr(total, field[0]) + getattr(v, field[0]))
        return total


class _U32(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint32)]


class _U64(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


@pytest.fixture(scope="session")
def session_maps(program: LoadedProgram) -> Iterator[Maps]:
    maps = Maps.open(program.pin_dir)
    try:
        yield maps
    finally:
        maps.close()


@pytest.fixture
def maps(session_maps: Maps) -> Maps:
    """The pinned maps, emptied before the test."""
    session_maps.clear()
    return session_maps


RunFn = Callable[[bytes], TestRunResult]


@pytest.fixture
def run(program: LoadedProgram) -> RunFn:
    """Run the program once on a frame (BPF_PROG_TEST_RUN)."""
    return functools.partial(prog_test_run, program.fd)


@pytest.fixture
def run_egress(program: LoadedProgram) -> RunFn:
    """Run the egress program (reverse translation only) once on a frame."""
    return functools.partial(prog_test_run, program.egress_fd)


@pytest.fixture
def bpffs() -> Iterator[str]:
    """A private BPF filesystem of the test's own under /run: its pins (and any
    directory a test makes in it) go with the mount, even when the test fails."""
    with private_bpffs("ebpflb-bpffs") as path:
        yield path


@pytest.fixture(scope="session")
def session_maps6(session_maps: Maps) -> Iterator[Maps6]:
    def m(name: str) -> PinnedMap:
        return open_map(os.path.join(session_maps.pin_dir, name))

    maps6 = Maps6(
        session_maps,
        m(abi.MAP_SERVICES6),
        m(abi.MAP_BACKENDS6),
        m(abi.MAP_REVNAT6),
        m(abi.MAP_CONNTRACK6),
        m(abi.MAP_AFFINITY6),
        m(abi.MAP_SRC_RANGES6),
    )
    try:
        yield maps6
    finally:
        maps6.close()


@pytest.fixture
def maps6(maps: Maps, session_maps6: Maps6) -> Maps6:
    """Every map, IPv4, shared and IPv6, emptied before the test."""
    session_maps6.clear()
    return session_maps6
