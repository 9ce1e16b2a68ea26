"""An asyncio event loop on a daemon thread of its own, started at the first hand-over:
what the agent's side servers (health checks, DNS) run on, so the sync loop never waits
on a socket. Hand-overs are coroutines and return concurrent futures; after close()
they are refused (None), so a late hand-over from the agent cannot restart a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

CLOSE_TIMEOUT = 5.0  # seconds for the owner's closer, then for the thread to end


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serialises starting and closing
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the thread has been started (and not closed)."""
        return self._thread is not None

    def submit(self, coro: Coroutine[Any, Any, Any], *, start: bool = True) -> Future[Any] | None:
        """Run coro on the loop; None (coro discarded) once closed, or when the thread is
        not running and ``start`` is false (nothing to do that needs it)."""
        with self._lock:
            if self._closed or (self._loop is None and not start):
                coro.close()
                return None
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_run, args=(loop,), name=self.name, daemon=True)
                self._loop, self._thread = loop, thread
                thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until everything handed over so far has run (for tests)."""
        done = self.submit(asyncio.sleep(0), start=False)
        if done is not None:
            done.result(timeout)

    def close(self, closer: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Run ``closer`` on the loop (the owner's listeners), then stop and join the
        thread. Idempotent."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if closer is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(closer(), loop).result(timeout=CLOSE_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=CLOSE_TIMEOUT)
        if not thread.is_alive():
            loop.close()


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
