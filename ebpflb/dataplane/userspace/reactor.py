"""The userspace proxy's event loop: level-triggered epoll, one callback per file
descriptor, owned by one thread.

Why not asyncio: a profile of the proxy under new-connection load showed asyncio's
per-event machinery (a Handle per add_reader, SelectorKey churn and an epoll_ctl on
every reader/writer change, the ready queue, context.run) costing about as much as
the proxy's own work. Here an event is one dict look-up and one call with the event
mask (so a callback sees EPOLLRDHUP and EPOLLERR without a system call), interest
changes are explicit, and a descriptor about to be closed is forgotten without an
epoll_ctl (closing it removes it from the epoll set).

Other threads use `call_soon_threadsafe` (an eventfd wakes the loop); timers are a
heap, for the few periodic jobs. `now` is the monotonic time of the last wake-up,
cheap enough to stamp every packet with.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

IN = select.EPOLLIN
OUT = select.EPOLLOUT
RDHUP = select.EPOLLRDHUP
ERR = select.EPOLLERR
HUP = select.EPOLLHUP
MAX_EVENTS = 256

Callback = Callable[[int], None]  # called with the epoll event mask


class Timer:
    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._fds: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}
        # Descriptors forgotten while a batch of events is dispatched: a later event of
        # the same batch may name the number, now reused by a new socket, and is dropped.
        self._gone: set[int] = set()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()  # no write to the eventfd once it is closed
        self._stopping = False
        self.now = time.monotonic()
        self.register(self._wake, IN, self._run_calls)

    # -- interest (loop thread) ---------------------------------------------------------

    def register(self, fd: int, mask: int, callback: Callback) -> None:
        """Call `callback(events)` when `fd` is ready for `mask` (0: not watched yet)."""
        if mask:
            self._ep.register(fd, mask)
        self._fds[fd] = callback
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        """Change what `fd` is watched for; 0 stops watching it (it stays known)."""
        old = self._masks[fd]
        if mask == old:
            return
        if not mask:
            self._ep.unregister(fd)
        elif not old:
            self._ep.register(fd, mask)
        else:
            self._ep.modify(fd, mask)
        self._masks[fd] = mask

    def forget(self, fd: int) -> None:
        """Drop `fd` just before it is closed (the close takes it out of epoll)."""
        if self._fds.pop(fd, None) is not None:
            del self._masks[fd]
            self._gone.add(fd)

    def unregister(self, fd: int) -> None:
        """Drop `fd`, which stays open."""
        if self._fds.pop(fd, None) is not None:
            if self._masks.pop(fd):
                self._ep.unregister(fd)
            self._gone.add(fd)

    # -- timers and other threads ----------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(time.monotonic() + delay, fn)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        with self._wake_lock:
            if self._wake < 0:
                raise RuntimeError("the userspace proxy's event loop is closed")
            self._calls.append(fn)
            os.eventfd_write(self._wake, 1)

    def _run_calls(self, _events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        calls = self._calls
        while calls:
            self._safely(calls.popleft())

    def _safely(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("userspace proxy: %r failed", fn)

    # -- the loop -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True

    def run_forever(self) -> None:
        poll = self._ep.poll
        fds = self._fds
        gone = self._gone
        timers = self._timers
        monotonic = time.monotonic
        while not self._stopping:
            timeout = -1.0
            if timers:  # from the last wake-up's time: the timers are coarse
                timeout = timers[0][0] - self.now
                if timeout < 0.0:
                    timeout = 0.0
            events = poll(timeout, MAX_EVENTS)
            self.now = monotonic()
            if gone:
                gone.clear()
            for fd, ev in events:
                if gone and fd in gone:
                    continue
                cb = fds.get(fd)
                if cb is None:
                    continue
                try:
                    cb(ev)
                except Exception:
                    log.exception("userspace proxy: handling fd %d", fd)
            while timers and timers[0][0] <= self.now:
                t = heapq.heappop(timers)[2]
                if not t.cancelled:
                    self._safely(t.fn)

    def close(self) -> None:
        self._ep.close()
        with self._wake_lock:
            os.close(self._wake)
            self._wake = -1
        self._fds.clear()
        self._masks.clear()
