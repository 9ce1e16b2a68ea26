"""A UDP frontend of the userspace proxy takes a 2,000-datagram burst whole: its socket's
receive buffer holds what the one-thread engine has not read yet (with the kernel's
default buffer, 48-72% of such a burst was lost). Root: past net.core.rmem_max the
buffer needs CAP_NET_ADMIN (SO_RCVBUFFORCE), as the agent has."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.userspace.proxy import Engine, EngineConfig
from ebpflb.dataplane.userspace.udp import FRONTEND_RCVBUF, SO_RCVBUFFORCE
from ebpflb.model import (
    Backend,
    Frontend,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import FrontendState

pytestmark = pytest.mark.root

FRONT_IP, CLIENT_IP = "127.0.0.10", "127.0.0.2"
BURST = 2000


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(EngineConfig(device=None, tick=0.05))
    try:
        yield eng
    finally:
        eng.call(eng.shutdown_on_loop)
        eng.thread.join(5)
        eng.addresses.close(remove=False)


def _rx(eng: Engine) -> int:
    return int(eng.call(lambda: eng.stats()).services[0].rx_packets)


@pytest.mark.parametrize("size", [100, 1400])
def test_a_2000_datagram_burst_is_not_dropped(engine: Engine, size: int):
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        backend.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)  # never the bottleneck
        backend.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((FRONT_IP, 0))
            port = probe.getsockname()[1]
        pn = ServicePortName(ServiceRef("t", "burst"), "p", Protocol.UDP)
        st = FrontendState.from_entry(
            ServiceEntry(
                Frontend(
                    ipaddress.ip_address(FRONT_IP), port, Protocol.UDP, FrontendKind.LOAD_BALANCER
                ),
                pn,
                (Backend(ipaddress.ip_address("127.0.0.1"), backend.getsockname()[1]),),
                0,
            )
        )
        engine.call(lambda: engine.apply_on_loop({st.frontend.key: st}))
        fe_sock = engine.call(lambda: next(iter(engine.frontends.values())).sock)
        assert fe_sock is not None
        assert fe_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * FRONTEND_RCVBUF

        client.bind((CLIENT_IP, 0))
        payload = b"x" * size
        for _ in range(BURST):
            client.sendto(payload, (FRONT_IP, port))
        deadline = time.monotonic() + 10
        while _rx(engine) < BURST and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # settled: nothing more arrives
        assert _rx(engine) == BURST
