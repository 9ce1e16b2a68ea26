"""The conntrack tables' hash and sizing as userspace computes them (cttable.py) against
bpf/lib/cttable.h: the program and the CLI must put and find a key in one bucket."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpflb.dataplane.bpf import abi, cttable
from ebpflb.errors import DataplaneError

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


GIB = 1 << 30


def test_tables_bytes_counts_both_families_buckets() -> None:
    # the default: 65,536 buckets of 512 (IPv4) and 896 (IPv6) bytes
    assert cttable.tables_bytes(abi.DEFAULT_MAX_CONNTRACK) == 65536 * (512 + 896)
    assert cttable.tables_bytes(1 << 26) == (1 << 24) * (512 + 896)  # 22 GiB


def test_a_conntrack_size_past_half_the_nodes_memory_is_refused_by_name() -> None:
    with pytest.raises(DataplaneError) as err:
        cttable.check_tables_fit(1 << 26, 24 * GIB)
    message = str(err.value)
    assert message.startswith("--max-conntrack 67108864:") and "22.0 GiB" in message
    assert "24.0 GiB" in message and str(abi.DEFAULT_MAX_CONNTRACK) in err.value.fix
    # half the memory exactly still fits; unknown memory refuses nothing
    cttable.check_tables_fit(1 << 26, 44 * GIB)
    cttable.check_tables_fit(1 << 26, None)
    cttable.check_tables_fit(abi.DEFAULT_MAX_CONNTRACK, 1 * GIB)


def test_memory_total_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:        1000 kB\n")
    assert cttable.memory_total(str(meminfo)) == 24576000 * 1024
    meminfo.write_text("MemFree: 1 kB\n")
    assert cttable.memory_total(str(meminfo)) is None
    assert cttable.memory_total(str(tmp_path / "absent")) is None
    real = cttable.memory_total()
    assert real is not None and real > 0
