"""Holding off full collections: restored when the last holder leaves, nesting and
threads included; young collections go on."""

from __future__ import annotations

import gc
import threading

from ebpflb.gcpause import (
    freeze_survivors,
    no_collections,
    no_full_collections,
    paced_collections,
    trim_heap,
)


def test_the_oldest_threshold_is_held_and_restored() -> None:
    before = gc.get_threshold()
    with no_full_collections():
        held = gc.get_threshold()
        assert held[:2] == before[:2] and held[2] > 10**9
        with no_full_collections():
            assert gc.get_threshold() == held
        assert gc.get_threshold() == held  # the outer holder still holds
    assert gc.get_threshold() == before


def test_restored_after_an_exception() -> None:
    before = gc.get_threshold()
    try:
        with no_full_collections():
            raise KeyError
    except KeyError:
        pass
    assert gc.get_threshold() == before


def test_overlapping_holders_in_threads() -> None:
    before = gc.get_threshold()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with no_full_collections():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    with no_full_collections():
        pass
    assert gc.get_threshold()[2] > 10**9  # the thread still holds
    release.set()
    t.join(5)
    assert gc.get_threshold() == before


def test_young_collections_go_on() -> None:
    counts: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts.append(info["generation"])

    gc.callbacks.append(note)
    try:
        with no_full_collections():
            junk: list[list[int]] = [[] for _ in range(20 * gc.get_threshold()[0])]
            del junk
    finally:
        gc.callbacks.remove(note)
    if gc.isenabled():
        assert 0 in counts and 2 not in counts


def test_trim_heap_returns_freed_memory_to_the_kernel():
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    # ~60 MB in blocks too big for Python's own allocator (which unmaps its arenas by
    # itself) and too small for malloc to give them their own mapping.
    chunks = [bytes(1000) + b"x" for _ in range(60_000)]
    keep = chunks[-1]  # holds the top of the heap, so a plain free() cannot shrink it
    del chunks
    before = rss_kb()
    trim_heap()
    assert rss_kb() < before - 20_000
    assert keep.endswith(b"x")


def test_freeze_survivors_hides_them_from_full_collections():
    survivors = [[i] for i in range(10_000)]  # tracked containers
    before = gc.get_freeze_count()
    try:
        freeze_survivors()
        assert gc.get_freeze_count() >= before + len(survivors)
        young = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in young for o in survivors[::1000])
        del survivors  # frozen objects are still freed by reference counting
    finally:
        gc.unfreeze()


def test_no_collections_holds_every_generation_and_restores() -> None:
    counts: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(note)
    try:
        with no_collections():
            with no_collections():
                pass
            assert not gc.isenabled()  # the outer holder still holds
            junk: list[list[int]] = [[] for _ in range(20 * gc.get_threshold()[0])]
            del junk
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(note)
    assert counts == []


def test_no_collections_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with no_collections():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_paced_collections_hold_automatic_ones_and_collect_young_when_due() -> None:
    generations: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    now = [0.0]
    gc.callbacks.append(note)
    try:
        with paced_collections(10.0, clock=lambda: now[0]) as between_units:
            assert not gc.isenabled()
            junk: list[list[int]] = [[] for _ in range(20 * gc.get_threshold()[0])]
            between_units()  # not due yet
            assert generations == []
            now[0] = 9.9
            between_units()
            assert generations == []
            now[0] = 10.0
            between_units()  # due: one young collection, and the pace starts again
            assert generations == [0]
            now[0] = 19.0
            between_units()
            assert generations == [0]
            now[0] = 20.0
            between_units()
            assert generations == [0, 0]
            del junk
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(note)
