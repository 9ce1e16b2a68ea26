"""Holding off the cyclic garbage collector's full collections during bulk work.

A full sync builds some 35 long-lived objects per Service. CPython starts a full
(oldest-generation) collection whenever the objects that survived the young
collections grow by a quarter of the heap, and each one walks every tracked object,
the Kubernetes objects included: at 10,000 Services that was five full collections,
~0.4 s, inside one full sync. While held off, the young generations are still
collected (so cyclic garbage made meanwhile is still freed); the full collection that
became due runs once, at the first collection after the bulk work ends (~0.1 s at
10,000 Services: the heap did grow).

Process-wide, like the collector itself; nesting and threads are counted, so the
threshold is restored only when the last holder leaves.

``no_collections()`` holds off the young collections too, for a full sync: every
object it builds survives, so each young (and middle) collection walks objects only
to promote them, ~30% of a full sync at 100,000 Services (in-process, interleaved:
6.9-11.6 s with them, 4.9-7.7 s without). Cyclic garbage made meanwhile (by this
thread or another) waits for the first collection after the block.

``paced_collections(interval)`` is ``no_collections()`` for bulk work that waits on a
peer between its units (a list's pages): a young collection runs between units once
``interval`` seconds have passed, so that the cyclic garbage other threads make while
a slow API server keeps the list going waits a bounded time. Re-enabling collections
after each page instead cost 0.6 s of a 100,000-Service list (in-process, 2.3 -> 1.7 s
for Services and EndpointSlices): the first young collection after each page walked
the page's survivors, and every tenth one walked ten pages again.

``freeze_survivors()`` ends a bulk step for good: what it built lives until the next
one, so it is moved out of the collector's sight (``gc.freeze``). The full collection
that became due then walks only what is young (~0.1 s at 10,000 Services otherwise,
and again at every later full collection). Frozen objects are still freed by reference
counting when they die; only a reference cycle among them would outlive its use, and
the state built here holds none.

``trim_heap()`` hands the memory a bulk step freed back to the kernel: glibc keeps
freed heap pages (the list responses, the previous translation) mapped otherwise, and
they count in the agent's RSS (~10 MB at 10,000 Services).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ebpflb import libc

_NEVER = 2**31 - 1  # the largest threshold gc.set_threshold() takes
_lock = threading.Lock()
_holders = 0
_saved = 0  # the oldest generation's threshold before the first holder came


@contextmanager
def no_full_collections() -> Iterator[None]:
    """No full collection starts inside this block (young ones still do)."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _holders, _saved
    with _lock:
        if _holders == 0:
            young, middle, _saved = gc.get_threshold()
            gc.set_threshold(young, middle, _NEVER)
        _holders += 1


def _leave() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0:
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, _saved)


_off_holders = 0
_was_enabled = False


@contextmanager
def no_collections() -> Iterator[None]:
    """No automatic collection at all starts inside this block (nesting and threads
    counted, as no_full_collections)."""
    global _off_holders, _was_enabled
    with _lock:
        if _off_holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _off_holders += 1
    try:
        yield
    finally:
        with _lock:
            _off_holders -= 1
            if _off_holders == 0 and _was_enabled:
                gc.enable()


@contextmanager
def paced_collections(
    interval: float, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[[], None]]:
    """No automatic collection inside this block (as ``no_collections``); the callable
    it gives, called between units of the bulk work, runs a young collection when
    ``interval`` seconds have passed since the block began or the last one ran. Each
    object is then walked at most once per interval, not at every unit."""
    last = clock()

    def between_units() -> None:
        nonlocal last
        if clock() - last >= interval:
            gc.collect(0)
            last = clock()

    with no_collections():
        yield between_units


def freeze_survivors() -> None:
    """Every object alive now is long-lived: keep full collections from walking it."""
    gc.freeze()


def trim_heap() -> None:
    """Return freed heap memory to the kernel (glibc's malloc_trim); a no-op elsewhere."""
    libc.malloc_trim()
