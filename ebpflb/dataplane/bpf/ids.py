"""Id allocation for frontends and backends. Ids are adopted from the pinned maps on
start, so live flows (whose conntrack entries name ids) keep their meaning, and a freed
id is reused as late as possible so a stale conntrack entry rarely meets a new owner.
``backend_key`` is a backend's key in the writer's per-frontend id tables, which are
kept packed (``pack_ids``): at 100,000 Services a dict per frontend, its key bytes and
its id ints held ~63 MiB; packed, one bytes object per frontend, ~10 MiB."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from ebpflb.errors import CapacityError

# A backend in the id tables: its address bytes and then its port. Unlike a tuple
# (IPv4Address, port) it hashes without running Python code, the GC never tracks it,
# and it is smaller (48 bytes; 50,000 of them at 10,000 Services).
BackendKey = bytes
_U16 = struct.Struct("<H").pack


def backend_key(packed_address: bytes, port: int) -> BackendKey:
    return packed_address + _U16(port)


# A frontend's id table: its backends' keys, each followed by its id (u32), one record
# per backend in the table's order. Its family (that of the frontend, which its
# backends share) gives the record's size: 10 bytes, or 22 for IPv6.
IdTable = bytes
_RECORDS = (struct.Struct("<6sI"), struct.Struct("<18sI"))


def pack_ids(ids: Mapping[BackendKey, int], *, v6: bool) -> IdTable:
    """A frontend's id table from its backend key -> id mapping."""
    return b"".join(map(_RECORDS[v6].pack, ids.keys(), ids.values()))


def unpack_ids(table: IdTable, *, v6: bool) -> dict[BackendKey, int]:
    """A frontend's id table as its backend key -> id mapping."""
    return dict(_RECORDS[v6].iter_unpack(table))


def table_ids(table: IdTable, *, v6: bool) -> list[int]:
    """The backend ids in a frontend's id table."""
    return [bid for _key, bid in _RECORDS[v6].iter_unpack(table)]


def table_size(table: IdTable, *, v6: bool) -> int:
    """How many backends a frontend's id table holds."""
    return len(table) // _RECORDS[v6].size


class IdAllocator:
    """Ids in [low, high], a byte each for "in use": 512 KiB at 524,288 backend ids,
    where a set of ints held ~20 MiB at 500,000 used. An adopted id outside the range
    (maps pinned with other sizes) is remembered apart, so it is never handed out twice.
    """

    def __init__(self, low: int, high: int, *, what: str, used: Iterable[int] = ()) -> None:
        self.low, self.high, self.what = low, high, what
        self._used = bytearray(high - low + 1)
        self._outside: set[int] = set()
        self._count = 0
        top = low - 1
        for ident in used:
            if low <= ident <= high:
                if not self._used[ident - low]:
                    self._used[ident - low] = 1
                    self._count += 1
            else:
                self._outside.add(ident)
            top = max(top, ident)
        self._next = top + 1

    @property
    def free_count(self) -> int:
        return len(self._used) - self._count

    def alloc(self) -> int:
        candidate = self._next
        if self.low <= candidate <= self.high and not self._used[candidate - self.low]:
            self._next = candidate + 1
            self._used[candidate - self.low] = 1
            self._count += 1
            return candidate
        return self._search()

    def _search(self) -> int:
        start = min(max(self._next, self.low), self.high + 1) - self.low
        index = self._used.find(0, start)
        if index < 0:
            index = self._used.find(0, 0, start)
        if index < 0:
            raise CapacityError(f"no free {self.what} id (all {len(self._used)} in use)")
        self._used[index] = 1
        self._count += 1
        self._next = self.low + index + 1
        return self.low + index

    def free(self, ident: int) -> None:
        if self.low <= ident <= self.high:
            if self._used[ident - self.low]:
                self._used[ident - self.low] = 0
                self._count -= 1
        else:
            self._outside.discard(ident)

    def __contains__(self, ident: int) -> bool:
        if self.low <= ident <= self.high:
            return bool(self._used[ident - self.low])
        return ident in self._outside


def pack_tables(tables: Mapping[int, Mapping[BackendKey, int]]) -> dict[int, IdTable]:
    """Id tables read back as mappings (``maps.MapState.backend_ids``), packed; each
    table's family is that of its keys' length. Empty tables are left out."""
    packs = (_RECORDS[0].pack, _RECORDS[1].pack)
    v6_key = len(backend_key(bytes(16), 0))
    out: dict[int, IdTable] = {}
    for sid, ids in tables.items():
        for key in ids:  # the first key's length tells the family
            out[sid] = b"".join(map(packs[len(key) == v6_key], ids.keys(), ids.values()))
            break
    return out
