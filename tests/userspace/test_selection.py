"""ebpflb.selection: uniform over the active backends, None without one; ClientIP
affinity through an AffinityTable (with an injected clock)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ebpflb.selection import AffinityTable, choose_backend


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
    counts = Counter(choose_backend(["a", "b", "c"], exclude={"b"}, rng=rng) for _ in range(10_000))
    assert set(counts) == {"a", "c"}
    assert abs(counts["a"] - counts["c"]) < 600


def test_affinity_seam_is_accepted():
    import ipaddress

    got = choose_backend(["a"], client=ipaddress.ip_address("10.0.0.1"), affinity_timeout=10800)
    assert got == "a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SLOTS = ["a", "b", "c", "d"]
FE = ("10.96.0.10", 80, "TCP")


def sticky(
    table: AffinityTable[str],
    slots: list[str] = SLOTS,
    *,
    client: str = "10.0.0.1",
    timeout: float = 10,
    rng: random.Random | None = None,
    frontend: object = FE,
) -> str | None:
    return choose_backend(
        slots, client=client, affinity_timeout=timeout, affinity=table, frontend=frontend, rng=rng
    )


def test_affinity_holds_for_a_hundred_new_flows():
    clock = Clock()
    table: AffinityTable[str] = AffinityTable(clock=clock)
    rng = random.Random(3)
    first = sticky(table, rng=rng)
    got = set()
    for _ in range(100):
        clock.now += 5  # each within the timeout of the previous one: refreshed
        got.add(sticky(table, rng=rng))
    assert got == {first}
    assert table.hits == 100
    # Another client, or the same client on another frontend, is chosen afresh.
    others = {sticky(table, client=f"10.0.1.{i}", rng=rng) for i in range(40)}
    assert len(others) > 1
    assert len({sticky(table, frontend=("x", i), rng=rng) for i in range(40)}) > 1


def test_affinity_moves_after_the_timeout_since_last_use():
    clock = Clock()
    table: AffinityTable[str] = AffinityTable(clock=clock)
    rng = random.Random(5)
    first = sticky(table, rng=rng)
    clock.now += 9.9
    assert sticky(table, rng=rng) == first  # refreshed at +9.9
    clock.now += 9.9
    assert sticky(table, rng=rng) == first  # 19.8 s after the first flow: still held
    clock.now += 10  # 10 s since the last use: expired
    # Expired: a fresh random choice each time the entry expires again.
    choices = set()
    for _ in range(40):
        choices.add(sticky(table, rng=rng))
        clock.now += 10
    assert len(choices) > 1


def test_affinity_moves_when_the_backend_leaves_and_sticks_to_the_new_one():
    clock = Clock()
    table: AffinityTable[str] = AffinityTable(clock=clock)
    first = sticky(table)
    assert first is not None
    rest = [s for s in SLOTS if s != first]
    second = sticky(table, rest)
    assert second in rest
    assert {sticky(table, rest) for _ in range(50)} == {second}
    # The first backend comes back: the client stays where affinity recorded it.
    assert {sticky(table) for _ in range(50)} == {second}


def test_excluded_backend_is_not_kept_by_affinity():
    table: AffinityTable[str] = AffinityTable(clock=Clock())
    first = sticky(table)
    assert first is not None
    other = choose_backend(
        SLOTS, client="10.0.0.1", affinity_timeout=10, affinity=table, frontend=FE, exclude={first}
    )
    assert other not in (first, None)
    assert sticky(table) == other  # the working backend is the one recorded


def test_no_affinity_without_timeout_or_table():
    table: AffinityTable[str] = AffinityTable(clock=Clock())
    rng = random.Random(9)
    assert len({sticky(table, timeout=0, rng=rng) for _ in range(60)}) > 1
    assert len(table) == 0
    assert (
        len(
            {
                choose_backend(SLOTS, client="10.0.0.1", affinity_timeout=10, rng=rng)
                for _ in range(60)
            }
        )
        > 1
    )


def test_table_is_a_bounded_lru():
    clock = Clock()
    table: AffinityTable[str] = AffinityTable(max_entries=3, clock=clock)
    for i in range(3):
        sticky(table, client=f"c{i}")
        clock.now += 1
    sticky(table, client="c0")  # c0 used again: c1 is now the least recently used
    clock.now += 1
    sticky(table, client="c3")
    assert len(table) == 3
    assert [e[0] for e in table.entries()] == ["c2", "c0", "c3"]
    assert table.lookup("c1", FE, 100) is None
    with pytest.raises(ValueError):
        AffinityTable(max_entries=0)


def test_drop_frontends_forgets_only_theirs():
    table: AffinityTable[str] = AffinityTable(clock=Clock())
    for i in range(5):
        sticky(table, client=f"c{i}", frontend="keep")
        sticky(table, client=f"c{i}", frontend="gone")
    assert table.drop_frontends({"gone"}) == 5
    assert len(table) == 5 and {e[1] for e in table.entries()} == {"keep"}
    assert table.drop_frontends(set()) == 0


def test_a_preferred_backend_replaces_the_draw_unless_excluded_or_inactive():
    slots = ["a", "b", "c"]
    assert all(choose_backend(slots, preferred="b") == "b" for _ in range(50))
    assert {choose_backend(slots, preferred="b", exclude={"b"}) for _ in range(50)} == {"a", "c"}
    assert choose_backend(slots, preferred="z") in slots  # not active: the draw
