"""The writer's id allocator against a plain reference model: ids handed out in order,
a freed id reused only after the rest of the range, adopted ids never handed out
again (those outside the range included), and a full range refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.dataplane.bpf.ids import (
    IdAllocator,
    backend_key,
    pack_ids,
    pack_tables,
    table_ids,
    table_size,
    unpack_ids,
)
from ebpflb.errors import CapacityError


class Reference:
    """The allocator's contract in the plainest form: a set, and a cursor that walks
    the range round from where the last id was handed out."""

    def __init__(self, low: int, high: int, used: list[int]) -> None:
        self.low, self.high, self.used = low, high, set(used)
        self.next = max(used) + 1 if used else low

    def alloc(self) -> int | None:
        for _ in range(self.high - self.low + 1):
            if not self.low <= self.next <= self.high:
                self.next = self.low
            candidate = self.next
            self.next += 1
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate
        return None


ops = st.lists(st.one_of(st.just(("alloc", 0)), st.tuples(st.just("free"), st.integers(0, 40))))


@settings(max_examples=300, deadline=None)
@given(used=st.lists(st.integers(0, 40), max_size=12), steps=ops)
def test_allocator_follows_the_reference(used: list[int], steps: list[tuple[str, int]]) -> None:
    alloc = IdAllocator(1, 30, what="backend", used=used)
    ref = Reference(1, 30, used)
    for op, ident in steps:
        if op == "free":
            alloc.free(ident)
            ref.used.discard(ident)
        else:
            want = ref.alloc()
            if want is None:
                with pytest.raises(CapacityError, match="no free backend id"):
                    alloc.alloc()
            else:
                assert alloc.alloc() == want
        assert alloc.free_count == sum(1 for i in range(1, 31) if i not in ref.used)
        assert [i for i in range(0, 41) if i in alloc] == sorted(ref.used)


def test_a_freed_id_comes_back_last() -> None:
    alloc = IdAllocator(1, 4, what="frontend")
    assert [alloc.alloc() for _ in range(3)] == [1, 2, 3]
    alloc.free(1)
    assert alloc.alloc() == 4
    assert alloc.alloc() == 1
    with pytest.raises(CapacityError):
        alloc.alloc()


def test_adopted_ids_outside_the_range_stay_taken() -> None:
    alloc = IdAllocator(1, 3, what="frontend", used=[2, 9])
    assert 9 in alloc and 2 in alloc and 1 not in alloc
    assert alloc.free_count == 2
    assert sorted(alloc.alloc() for _ in range(2)) == [1, 3]
    alloc.free(9)
    assert 9 not in alloc


def _table_st(size: int) -> st.SearchStrategy[dict[bytes, int]]:
    key = st.builds(backend_key, st.binary(min_size=size, max_size=size), st.integers(0, 65535))
    return st.dictionaries(key, st.integers(0, 2**32 - 1), max_size=8)


@settings(max_examples=200)
@given(_table_st(4), _table_st(16))
def test_a_packed_id_table_reads_back_as_the_mapping(
    v4: dict[bytes, int], v6: dict[bytes, int]
) -> None:
    for ids, is_v6 in ((v4, False), (v6, True)):
        table = pack_ids(ids, v6=is_v6)
        assert unpack_ids(table, v6=is_v6) == ids
        assert list(unpack_ids(table, v6=is_v6)) == list(ids)  # in the mapping's order
        assert table_ids(table, v6=is_v6) == list(ids.values())
        assert table_size(table, v6=is_v6) == len(ids)
        assert len(table) == len(ids) * (22 if is_v6 else 10)
    # read back as mappings, each table's family is that of its keys
    packed = pack_tables({1: v4, 2: v6, 3: {}})
    assert 3 not in packed
    assert unpack_ids(packed.get(1, b""), v6=False) == v4
    assert unpack_ids(packed.get(2, b""), v6=True) == v6
