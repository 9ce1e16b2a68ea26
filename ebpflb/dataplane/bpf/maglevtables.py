"""Each frontend's Maglev table in the pinned maps: the inner maps of ebpflb_mg4,
filled from ``ebpflb.maglev``'s slot order over the frontend's active backends,
rewritten in place when they change (see ``MaglevTables``). The writer calls it in
its service phase, before the entries that make the tables used.
"""

from __future__ import annotations

import ctypes
from array import array
from ipaddress import IPv4Address, IPv6Address

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.ids import BackendKey, backend_key
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_INNER_MAP,
    BPF_MAP_TYPE_ARRAY,
    PinnedMap,
    map_create,
    map_fd_by_id,
)

_U32 = abi.PACK_U32.pack


class MaglevTables:
    """Each frontend's Maglev table, an inner map of ebpflb_mg4.

    A table is rewritten in place when its frontend's active backends change: a packet
    in between may meet some old and some new slots, each naming a backend of the
    frontend (or one leaving it, which the kernel then passes over for a random one).
    Swapping a new inner map in instead would make every update wait for an RCU grace
    period (about 9 ms here), so only new frontends' tables are put into the outer map,
    all of a plan's at once with one batch update (one wait). A table stays with its
    frontend id after the frontend is deleted (no wait for that either) and is
    rewritten in place when the id is given out again; the kernel never reads a table
    without a service entry that uses it. The slot -> backend order depends only on
    the backends' names, so frontends with the same backends share the work."""

    def __init__(self, outer: PinnedMap, size: int) -> None:
        self.outer = outer
        self.size = size
        self._keys = b"".join(_U32(i) for i in range(size))
        self._orders: dict[tuple[str, ...], list[int]] = {}
        self._new: list[tuple[int, PinnedMap]] = []  # (frontend id, new table): pending

    def _order(self, names: tuple[str, ...]) -> list[int]:
        """The table over these names; computed once per write phase (a Service port's
        ClusterIP and NodePort frontends share it), forgotten after it (`flush`)."""
        order = self._orders.get(names)
        if order is None:
            order = self._orders[names] = maglev.table(names, self.size)
        return order

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
        ids = [owned[backend_key(a.packed, p)] for a, p in slots]
        order = self._order(tuple(f"{a}:{p}" for a, p in slots))
        values = array("I", map(ids.__getitem__, order)).tobytes()  # native: as the map
        table = self._held(sid)
        if table is not None:
            with table:
                table.update_batch_raw(self._keys, values, self.size)
            return
        table = self._create(sid)
        try:
            table.update_batch_raw(self._keys, values, self.size)
        except BaseException:
            table.close()
            raise
        self._new.append((sid, table))

    def flush(self) -> None:
        """End of a write phase: put the new tables into the outer map (one batch, one
        RCU wait)."""
        self._orders.clear()
        if not self._new:
            return
        new, self._new = self._new, []
        try:
            self.outer.update_batch_raw(
                b"".join(_U32(sid) for sid, _ in new),
                b"".join(_U32(t.fd) for _, t in new),
                len(new),
            )
        finally:
            for _, t in new:
                t.close()  # the outer map holds them now

    def _held(self, sid: int) -> PinnedMap | None:
        """The table the outer map holds for `sid`, if it has this size."""
        found = self.outer.lookup(ctypes.c_uint32(sid), ctypes.c_uint32)
        if found is None:
            return None
        table = PinnedMap(f"maglev table of frontend {sid}", fd=map_fd_by_id(found.value))
        if table.info.max_entries != self.size:  # made for another --maglev-table-size
            table.close()
            return None
        return table

    def _create(self, sid: int) -> PinnedMap:
        return PinnedMap(
            f"maglev table of frontend {sid}",
            fd=map_create(BPF_MAP_TYPE_ARRAY, 4, 4, self.size, "ebpflb_mgt", flags=BPF_F_INNER_MAP),
        )
