"""Each frontend's Maglev table in the pinned maps: the inner maps of ebpflb_mg4_v2,
filled from ``ebpflb.maglev``'s slot order over the frontend's active backends,
rewritten in place when they change (see ``MaglevTables``). The writer calls it in
its service phase, before the entries that make the tables used.

The tables are BPF_F_MMAPABLE arrays, written in their memory: a batch update costs
the kernel about 190 ns per element (a 1021-slot table 0.2 ms, 10,000 tables 2 s).
Measured in the agent's full sync of 10,000 frontends (2-vCPU VM), a new table cost
~70 us: map_create ~35 us (the kernel zeroing three fresh pages, which the VM's host
backs only when first touched), mmap ~10 us, the hashes of the backends' names ~8 us,
the fill ~3 us (in a process whose pages are warm, map_create costs ~4 us). Hence,
with ebpflb/_maglevfill.c: a plan's new tables are made by a native thread that
never takes the GIL (`MaglevTables.expect`), on another CPU when one is free, while
this one writes; its TableWriter maps each table into a span of address space,
stores the ids there (no intermediate buffer, no copy) and unmaps a whole span at
once. Without the extension, each table is made here, filled in Python and copied
through an mmap of its own.

The outer map accepts only inner maps made with its template's flags (ebpflb_mgtmpl
in bpf/lib/maps.h), hence the _v2 name that came with them: the old ebpflb_mg4 could
not hold them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from array import array
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
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

if TYPE_CHECKING:
    from ebpflb._maglevfill import MapMaker, TableWriter

# ebpflb/_maglevfill.c's writer and map maker; without the extension (see setup.py),
# each table is filled in Python and copied through a mapping of its own, and every
# table is made by the writing thread
_TableWriter: type[TableWriter] | None
_MapMaker: type[MapMaker] | None
try:
    from ebpflb import _maglevfill
except ImportError:
    _TableWriter = _MapMaker = None
else:
    _TableWriter, _MapMaker = _maglevfill.TableWriter, _maglevfill.MapMaker

log = logging.getLogger(__name__)

_U32 = abi.PACK_U32.pack
# the template's flags (ebpflb_mgtmpl): the outer map refuses a table made otherwise
TABLE_FLAGS = BPF_F_INNER_MAP | BPF_F_MMAPABLE
_STRIDE = array_stride(4)  # a table's u32 backend ids lie 8 bytes apart in its memory
_WORDS_PER_SLOT = _STRIDE // 4
_PENDING_MAX = 8192  # new tables' fds held until they go into the outer map
_SPAN_BYTES = 4 << 20  # tables' memory mapped at once (their pages count as our RSS)
_MAKE_MIN = 64  # fewer new tables than this are not worth a thread
_AHEAD_BYTES = 16 << 20  # tables' memory the maker may map ahead of the writes


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

    A table is written through a mapping of its memory, as the batch update it
    replaces wrote it: slot by slot with plain 4-byte stores, no slot ever holding
    anything but an old or a new backend id of the frontend (the kernel's own copy of
    a batch update is a memcpy too). The mappings of the tables written are undone
    together, by `flush` or when their span of address space is full (4 MiB: 512
    tables of 1021 slots)."""

    def __init__(self, outer: PinnedMap, size: int, *, pending_max: int | None = None) -> None:
        """`pending_max`: how many new tables (an fd each) may wait for `flush`; more
        are put into the outer map at once, at the cost of one more RCU wait; as many
        may be made ahead by `expect` (default: 8,192, or a quarter of the open-files
        limit if that is lower: a full sync of 100,000 frontends would otherwise hold
        100,000 fds)."""
        self.outer = outer
        self.size = size
        if pending_max is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = _PENDING_MAX if soft == resource.RLIM_INFINITY else soft // 4
            pending_max = max(1, min(_PENDING_MAX, limit))
        self.pending_max = pending_max
        self._new: list[tuple[int, int]] = []  # (frontend id, its new table's fd): pending
        # the new tables being made ahead by a thread of its own (see expect)
        self._maker: MapMaker | None = None
        self._table_bytes = size * _STRIDE
        # the extension's writer; without it, a table's memory as _fill lays it out
        self._writer = (
            None
            if _TableWriter is None
            else _TableWriter(
                size=size, stride=_STRIDE, spots=max(1, _SPAN_BYTES // (size * _STRIDE))
            )
        )
        self._image = array("I", b"" if self._writer else bytes(size * _STRIDE))
        # frontend id -> 1 where the outer map may hold a table: read from it once, then
        # kept by flush (tables are never taken out), so that a new frontend's id costs
        # no lookup. Only a hint: _held still asks the outer map where it says 1.
        self._tabled: bytearray | None = None

    def write(
        self,
        sid: int,
        slots: tuple[tuple[IPv4Address | IPv6Address, int], ...],
        ids: list[int],
    ) -> None:
        """Fill frontend `sid`'s table from its active backends `slots`, whose backend
        ids are `ids` (in the same order; none: nothing to fill, the kernel finds no
        backend before it looks at a table)."""
        if not slots:
            return
        if len(ids) != len(slots):
            raise ValueError(f"{len(ids)} backend ids for {len(slots)} Maglev slots")
        names = [f"{a}:{p}" for a, p in slots]
        fd = self._held(sid)
        if fd is not None:
            try:
                self._fill(fd, names, ids)
            finally:
                os.close(fd)
            return
        fd = None
        if self._maker is not None and self._writer is not None:  # made and mapped ahead
            fd = self._writer.write_made(self._maker, *maglev.walks(names, self.size), ids)
        if fd is None:
            fd = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, self.size, "ebpflb_mgt", flags=TABLE_FLAGS)
            try:
                self._fill(fd, names, ids)
            except BaseException:
                os.close(fd)
                raise
        self._new.append((sid, fd))
        if len(self._new) >= self.pending_max:
            self._put_new()

    def _fill(self, fd: int, names: list[str], ids: list[int]) -> None:
        """Fill the table behind `fd` with `ids` (`ids[i]` for backend `names[i]`) in
        Maglev's slot order, in its memory: each id in the first 4 of its slot's 8
        bytes. The extension's writer stores them into the mapped table; without it,
        a buffer laid out as the table is filled, then copied into a mapping of it."""
        if self._writer is not None:
            self._writer.write(fd, *maglev.walks(names, self.size), ids)
            return
        self._image[::_WORDS_PER_SLOT] = array("I", maglev.table_ids(names, ids, self.size))
        with map_mmap(fd, len(self._image) * 4) as mem:
            mem[:] = self._image

    def expect(self, count: int) -> None:
        """About `count` new frontends are to be written: have their tables made and
        mapped meanwhile by a thread of their own, for `write` to fill.

        Making a table costs the kernel 5-35 us (its fresh pages, zeroed; the most in
        a VM whose host backs a page only when it is first touched) and mapping it
        7-15 us, most of a new table's write. The extension's MapMaker does both in a
        native thread, which never waits for the GIL, so on another CPU (when there is
        one to spare) while this thread writes the backends and the service entries;
        `write` fills them in turn (TableWriter.write_made); when none is ready it
        makes its own instead of waiting (and the maker one fewer), so a maker with
        no CPU to run on costs the sync nothing but the tables it did make. The
        maker stays at most 16 MiB of mappings (2,048 tables of 1021 slots) and
        `pending_max` fds ahead. `flush` stops it and closes what was not taken (a
        plan that fails before its flush leaves that to the next `expect` or
        `flush`). Without the extension, or for fewer than 64,
        each table is made by `write`."""
        self._stop_making()
        if _MapMaker is None or self._writer is None or count < _MAKE_MIN:
            return
        self._maker = _MapMaker(
            map_type=BPF_MAP_TYPE_ARRAY,
            key_size=4,
            value_size=4,
            max_entries=self.size,
            flags=TABLE_FLAGS,
            name="ebpflb_mgt",
            count=count,
            ahead=min(self.pending_max, max(1, _AHEAD_BYTES // self._table_bytes)),
            map_bytes=self._table_bytes,
        )

    def _stop_making(self) -> None:
        maker, self._maker = self._maker, None
        if maker is not None:
            maker.close()
            if maker.counts[2]:  # write made its own instead, and met the error there
                log.debug("making Maglev tables ahead failed: %s", os.strerror(maker.counts[2]))

    def flush(self) -> None:
        """End of a write phase: put the new tables into the outer map (one batch, one
        RCU wait), unmap the tables written (one munmap), close those made ahead and
        not used."""
        try:
            self._stop_making()
            self._put_new()
        finally:
            if self._writer is not None:
                self._writer.release()

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
