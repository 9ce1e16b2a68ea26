"""The side servers' loop thread: started by the first hand-over that needs it, never
after close(), and close() runs the owner's closer on the loop before stopping it."""

from __future__ import annotations

import asyncio

from ebpflb.loopthread import LoopThread


async def _value(x: int) -> int:
    await asyncio.sleep(0)
    return x


def test_started_by_the_first_hand_over_and_refused_after_close() -> None:
    lt = LoopThread("t-loop")
    assert lt.submit(_value(1), start=False) is None and not lt.running
    done = lt.submit(_value(2))
    assert done is not None and done.result(5) == 2 and lt.running
    closed: list[str] = []

    async def closer() -> None:
        closed.append(asyncio.current_task().get_name() if asyncio.current_task() else "")

    lt.close(closer)
    assert len(closed) == 1 and not lt.running
    assert lt.submit(_value(3)) is None  # a late hand-over restarts nothing
    lt.close(closer)  # idempotent
    assert len(closed) == 1
