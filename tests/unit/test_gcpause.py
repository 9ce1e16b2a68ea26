"""Holding off full collections: restored when the last holder leaves, nesting and
threads included; young collections go on."""

from __future__ import annotations

import gc
import threading

from ebpflb.gcpause import no_full_collections


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
