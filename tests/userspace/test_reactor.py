"""The userspace proxy's epoll loop: callbacks with the event mask, interest changes,
timers, calls from other threads, and no stale event delivered to a new socket that
reused a descriptor number within one batch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.userspace.reactor import IN, OUT, RDHUP, Reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor()
    yield r
    r.close()


def run(r: Reactor, timeout: float = 5.0) -> None:
    """Run the loop in a thread until something calls r.stop(); fail on a hang."""
    guard = threading.Timer(timeout, lambda: r.call_soon_threadsafe(r.stop))
    guard.start()
    try:
        r.run_forever()
    finally:
        guard.cancel()


def test_callbacks_get_the_event_mask_and_interest_changes(reactor: Reactor):
    a, b = socket.socketpair()
    seen: list[int] = []

    def on_event(ev: int) -> None:
        seen.append(ev)
        if len(seen) == 1:  # readable
            a.recv(10)
            reactor.modify(a.fileno(), OUT)  # writable at once
        elif len(seen) == 2:  # writable
            reactor.modify(a.fileno(), 0)
            b.close()  # the peer's FIN: seen once IN is watched again
            reactor.modify(a.fileno(), IN | RDHUP)
        else:
            reactor.modify(a.fileno(), 0)
            reactor.stop()

    with a:
        reactor.register(a.fileno(), IN, on_event)
        b.send(b"x")
        run(reactor)
    assert len(seen) == 3, seen
    assert seen[0] & IN and seen[1] & OUT and seen[2] & RDHUP, seen


def test_timers_and_calls_from_other_threads(reactor: Reactor):
    # The loop stops when both the timer and the other thread's call have run, not
    # after a fixed 50 ms: the thread may not be scheduled that soon on a busy machine.
    # The cancelled timer is due before "later", so it would have run by then.
    order: list[str] = []

    def record(what: str) -> None:
        order.append(what)
        if {"call", "later"} <= set(order):
            reactor.stop()

    reactor.call_later(0.02, lambda: record("later"))
    cancelled = reactor.call_later(0.01, lambda: record("cancelled"))
    cancelled.cancel()
    caller = threading.Thread(target=reactor.call_soon_threadsafe, args=(lambda: record("call"),))
    caller.start()
    run(reactor)
    caller.join(5)
    assert sorted(order) == ["call", "later"]


def test_a_stale_event_never_reaches_a_socket_that_reused_the_number(reactor: Reactor):
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    reused: list[socket.socket] = []
    wrong: list[int] = []

    def on_a(_ev: int) -> None:
        # B is closed while its event may still be in this batch; a new socket takes
        # its number and is registered: B's stale event must not be delivered to it.
        number = b.fileno()
        reactor.forget(number)
        b.close()
        for s in socket.socketpair():
            reused.append(s)
        new = next(s for s in reused if s.fileno() == number)
        reactor.register(number, IN, wrong.append)
        reactor.modify(a.fileno(), 0)
        assert new.fileno() == number
        reactor.call_later(0.05, reactor.stop)

    reactor.register(a.fileno(), IN, on_a)
    reactor.register(b.fileno(), IN, lambda ev: None)
    a_peer.send(b"x")
    b_peer.send(b"x")
    try:
        run(reactor)
    finally:
        for s in (a, a_peer, b_peer, *reused):
            s.close()
    assert wrong == []


def test_exceptions_in_callbacks_are_logged_and_the_loop_goes_on(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
):
    a, b = socket.socketpair()

    def boom(_ev: int) -> None:
        a.recv(10)
        reactor.call_later(0.02, reactor.stop)
        raise ValueError("boom")

    with a, b:
        reactor.register(a.fileno(), IN, boom)
        b.send(b"x")
        run(reactor)
    assert "boom" in caplog.text


def test_no_call_after_close():
    r = Reactor()
    r.close()
    with pytest.raises(RuntimeError):
        r.call_soon_threadsafe(lambda: None)
