"""Id allocation for frontends and backends. Ids are adopted from the pinned maps on
start, so live flows (whose conntrack entries name ids) keep their meaning, and a freed
id is reused as late as possible so a stale conntrack entry rarely meets a new owner.
``backend_key`` is a backend's key in the writer's per-frontend id tables."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ebpflb.errors import CapacityError

# A backend in the id tables: its address bytes and then its port. Unlike a tuple
# (IPv4Address, port) it hashes without running Python code, the GC never tracks it,
# and it is smaller (48 bytes; 50,000 of them at 10,000 Services).
BackendKey = bytes
_U16 = struct.Struct("<H").pack


def backend_key(packed_address: bytes, port: int) -> BackendKey:
    return packed_address + _U16(port)


class IdAllocator:
    def __init__(self, low: int, high: int, *, what: str, used: Iterable[int] = ()) -> None:
        self.low, self.high, self.what = low, high, what
        self._used = set(used)
        self._next = (max(self._used) + 1) if self._used else low

    @property
    def free_count(self) -> int:
        return (self.high - self.low + 1) - len(self._used)

    def alloc(self) -> int:
        candidate = self._next
        if candidate <= self.high and candidate not in self._used:  # the common case
            self._next = candidate + 1
            self._used.add(candidate)
            return candidate
        return self._search()

    def _search(self) -> int:
        span = self.high - self.low + 1
        for _ in range(span):
            if self._next > self.high:
                self._next = self.low
            candidate = self._next
            self._next += 1
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate
        raise CapacityError(f"no free {self.what} id (all {span} in use)")

    def free(self, ident: int) -> None:
        self._used.discard(ident)

    def __contains__(self, ident: int) -> bool:
        return ident in self._used
