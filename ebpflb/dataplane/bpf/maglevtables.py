"""Each frontend's Maglev table in the pinned maps: the inner maps of ebpflb_mg4_v2,
filled from ``ebpflb.maglev``'s slot order over the frontend's active backends,
rewritten in place when they change (see ``MaglevTables``). The writer calls it in
its service phase, before the entries that make the tables used.

The tables are BPF_F_MMAPABLE arrays, written by mmap() and one copy: a batch update
costs the kernel about 190 ns per element (a 1021-slot table 0.2 ms, 10,000 tables
2 s); mmap + copy + munmap costs ~8 us of CPU per table, map_create ~7 us per new one.
The outer map accepts only inner maps made with its template's flags (ebpflb_mgtmpl
in bpf/lib/maps.h), hence the _v2 name that came with them: the old ebpflb_mg4 could
not hold them.
"""

from __future__ import annotations

import ctypes
import os
import resource
from array import array
from ipaddress import IPv4Address, IPv6Address

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.ids import BackendKey, backend_key
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_INNER_MAP,
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    PinnedMap,
    array_stride,
    map_create,
    map_fd_by_id,
    map_info,
    map_mmap,
)

_U32 = abi.PACK_U32.pack
# the template's flags (ebpflb_mgtmpl): the outer map refuses a table made otherwise
TABLE_FLAGS = BPF_F_INNER_MAP | BPF_F_MMAPABLE
_STRIDE = array_stride(4)  # a table's u32 backend ids lie 8 bytes apart in its memory
_WORDS_PER_SLOT = _STRIDE // 4
_PENDING_MAX = 8192  # new tables' fds held until they go into the outer map


class MaglevTables:
    """Each frontend's Maglev table, an inner map of ebpflb_mg4_v2.

    A table is rewritten in place when its frontend's active backends change: a packet
    in between may meet some old and some new slots, each naming a backend of the
    frontend (or one leaving it, which the kernel then passes over for a random one).
    Swapping a new inner map in instead would make every update wait for an RCU grace
    period (about 9 ms here), so only new frontends' tables are put into the outer map,
    all of a plan's at once with one batch update (one wait; one per `pending_max` new
    tables in a large plan). A table stays with its
    frontend id after the frontend is deleted (no wait for that either) and is
    rewritten in place when the id is given out again; the kernel never reads a table
    without a service entry that uses it.

    A table is written through a mapping of its memory (``map_mmap``), as the batch
    update it replaces wrote it: slot by slot with plain stores, no slot ever holding
    anything but an old or a new backend id of the frontend (the kernel's own copy of
    a batch update is a memcpy too)."""

    def __init__(self, outer: PinnedMap, size: int, *, pending_max: int | None = None) -> None:
        """`pending_max`: how many new tables (an fd each) may wait for `flush`; more
        are put into the outer map at once, at the cost of one more RCU wait (default:
        8,192, or half the open-files limit if that is lower: a full sync of 100,000
        frontends would otherwise hold 100,000 fds)."""
        self.outer = outer
        self.size = size
        if pending_max is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = _PENDING_MAX if soft == resource.RLIM_INFINITY else soft // 2
            pending_max = max(1, min(_PENDING_MAX, limit))
        self.pending_max = pending_max
        self._new: list[tuple[int, int]] = []  # (frontend id, its new table's fd): pending
        self._image = array("I", bytes(size * _STRIDE))  # a table's memory, as _fill writes it
        # frontend id -> 1 where the outer map may hold a table: read from it once, then
        # kept by flush (tables are never taken out), so that a new frontend's id costs
        # no lookup. Only a hint: _held still asks the outer map where it says 1.
        self._tabled: bytearray | None = None

    def write(
        self,
        sid: int,
        slots: tuple[tuple[IPv4Address | IPv6Address, int], ...],
        owned: dict[BackendKey, int],
    ) -> None:
        """Fill frontend `sid`'s table from its active backends `slots` (none: nothing
        to fill; the kernel finds no backend before it looks at a table)."""
        if not slots:
            return
        values = maglev.table_ids(
            [f"{a}:{p}" for a, p in slots],
            [owned[backend_key(a.packed, p)] for a, p in slots],
            self.size,
        )  # native u32s, as the map holds them
        fd = self._held(sid)
        if fd is not None:
            try:
                self._fill(fd, values)
            finally:
                os.close(fd)
            return
        fd = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, self.size, "ebpflb_mgt", flags=TABLE_FLAGS)
        try:
            self._fill(fd, values)
        except BaseException:
            os.close(fd)
            raise
        self._new.append((sid, fd))
        if len(self._new) >= self.pending_max:
            self._put_new()

    def _fill(self, fd: int, values: bytes) -> None:
        """Copy `values` (one u32 per slot) into the table behind `fd`: laid out as the
        kernel lays out the table's memory (each id in the first 4 of its slot's 8
        bytes, zeros after it) in a buffer kept for it, then one copy into the table
        (1.8 us per 1021 slots, against 3.4 us for a strided copy into the mapping)."""
        self._image[::_WORDS_PER_SLOT] = array("I", values)
        with map_mmap(fd, len(self._image) * 4) as mem:
            mem[:] = self._image

    def flush(self) -> None:
        """End of a write phase: put the new tables into the outer map (one batch, one
        RCU wait)."""
        self._put_new()

    def _put_new(self) -> None:
        if not self._new:
            return
        new, self._new = self._new, []
        try:
            self.outer.update_batch_raw(
                b"".join(_U32(sid) for sid, _ in new),
                b"".join(_U32(fd) for _, fd in new),
                len(new),
            )
        finally:
            for _, fd in new:
                os.close(fd)  # the outer map holds them now
        tabled = self._tabled
        if tabled is not None:
            for sid, _ in new:
                tabled[sid] = 1

    def _may_hold(self, sid: int) -> bool:
        if self._tabled is None:
            keys, _, count = self.outer.dump_raw()  # only the ids that hold a table
            self._tabled = bytearray(self.outer.info.max_entries)
            for held in array("I", keys)[:count]:
                self._tabled[held] = 1
        return sid < len(self._tabled) and self._tabled[sid] == 1

    def _held(self, sid: int) -> int | None:
        """An fd of the table the outer map holds for `sid`, if it has this size."""
        if not self._may_hold(sid):
            return None
        found = self.outer.lookup(ctypes.c_uint32(sid), ctypes.c_uint32)
        if found is None:
            return None
        fd = map_fd_by_id(found.value)
        try:
            sized = map_info(fd).max_entries == self.size  # else: another --maglev-table-size
        except BaseException:
            os.close(fd)
            raise
        if not sized:
            os.close(fd)
            return None
        return fd
