"""The conntrack tables' hash and sizing as userspace computes them (cttable.py) against
bpf/lib/cttable.h: the program and the CLI must put and find a key in one bucket."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ebpflb.dataplane.bpf import abi, cttable

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "lib" / "cttable.h"


def test_the_headers_default_multipliers_are_seed_zeros() -> None:
    found = dict(re.findall(r"^#define CT_M(\d+) (0x[0-9a-f]+)ULL", HEADER.read_text(), re.M))
    assert [int(found[str(i)], 16) for i in range(len(found))] == cttable.ct_multipliers(0)
    assert len(found) == cttable.MULTIPLIERS


@given(st.integers(1, 1 << 26))
def test_a_table_holds_twice_what_it_was_asked_and_tells_its_size_back(n: int) -> None:
    buckets = cttable.ct_buckets(n)
    assert buckets & (buckets - 1) == 0  # a power of two: the program masks the hash
    assert buckets * abi.CT_WAYS >= 2 * n
    assert cttable.ct_buckets(cttable.max_conntrack_of(buckets)) == buckets


def test_seeds_draw_different_multipliers() -> None:
    assert cttable.ct_multipliers(1) != cttable.ct_multipliers(2)
    assert all(m >> 32 for m in cttable.ct_multipliers(12345))  # full 64-bit draws
