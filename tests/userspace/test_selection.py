"""ebpflb.selection: uniform over the active backends, None without one."""

from __future__ import annotations

import random
from collections import Counter

from ebpflb.selection import choose_backend


def test_no_backend_is_none():
    assert choose_backend(()) is None
    assert choose_backend(["a"], exclude={"a"}) is None


def test_single_backend_always():
    assert {choose_backend(["a"]) for _ in range(50)} == {"a"}


def test_uniform_over_the_slots():
    rng = random.Random(7)
    slots = ["a", "b", "c", "d"]
    n = 40_000
    counts = Counter(choose_backend(slots, rng=rng) for _ in range(n))
    assert set(counts) == set(slots)
    for v in counts.values():  # each within 5% of n/4 (about 10 standard deviations)
        assert abs(v - n / 4) < 0.05 * n / 4, counts


def test_exclude_leaves_out_failed_backends_and_stays_uniform():
    rng = random.Random(1)
    counts = Counter(choose_backend(["a", "b", "c"], exclude={"b"}, rng=rng)
                     for _ in range(10_000))
    assert set(counts) == {"a", "c"}
    assert abs(counts["a"] - counts["c"]) < 600


def test_affinity_seam_is_accepted():
    import ipaddress

    got = choose_backend(["a"], client=ipaddress.ip_address("10.0.0.1"),
                         affinity_timeout=10800)
    assert got == "a"
