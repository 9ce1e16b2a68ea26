"""A Service that lost every endpoint resets its established TCP connections: a TCP
segment that opens nothing (no SYN) to a frontend without backends is turned into
the reset RFC 9293 prescribes and sent back out of its interface, so the client sees
ECONNRESET at once; a SYN keeps today's refusal (ICMP port unreachable, tested in
test_datapath). Packet tables through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from tests.bpf import packets as pk
from tests.bpf.conftest import TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn

pytestmark = pytest.mark.root

TC_ACT_REDIRECT = 7
CLIENT = "10.0.0.5"
SVC_IP = "10.96.0.20"
FLOW = pk.Flow(pk.TCP, CLIENT, SVC_IP, 40000, 80)
BACKENDS = {1: ("10.0.1.1", 8080)}


@dataclass(frozen=True)
class Tcp:
    saddr: str
    daddr: str
    sport: int
    dport: int
    seq: int
    ack: int
    doff: int
    flags: int
    window: int
    urg: int
    payload: bytes


def parse_tcp(data: bytes) -> Tcp:
    ip = data[pk.ETH_HLEN :]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    sport, dport, seq, ack, doff, flags, window, _csum, urg = struct.unpack(
        "!HHIIBBHHH", ip[ihl : ihl + 20]
    )
    p = pk.parse(data)
    return Tcp(
        p.saddr,
        p.daddr,
        sport,
        dport,
        seq,
        ack,
        doff >> 4,
        flags,
        window,
        urg,
        ip[ihl + (doff >> 4) * 4 : total],
    )


@dataclass(frozen=True)
class Case:
    id: str
    frame: bytes
    seq: int  # the reset's sequence number
    ack: int  # its acknowledgment number
    flags: int


PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"
CASES = [
    # a segment with ACK: the reset takes its sequence number from that acknowledgment
    Case(
        "ack-with-data",
        pk.frame(FLOW, PAYLOAD, tcp_flags=pk.TCP_ACK | pk.TCP_PSH, seq=7000, ack=0x90000001),
        0x90000001,
        0,
        pk.TCP_RST,
    ),
    Case("pure-ack", pk.frame(FLOW, tcp_flags=pk.TCP_ACK, seq=7000, ack=123), 123, 0, pk.TCP_RST),
    Case(
        "fin-ack", pk.frame(FLOW, tcp_flags=pk.TCP_FIN | pk.TCP_ACK, seq=7, ack=9), 9, 0, pk.TCP_RST
    ),
    # without ACK: sequence 0, acknowledging all the segment occupied (data, FIN)
    Case(
        "fin-without-ack",
        pk.frame(FLOW, b"abc", tcp_flags=pk.TCP_FIN, seq=0xFFFFFFFE),
        0,
        (0xFFFFFFFE + 3 + 1) % 2**32,
        pk.TCP_RST | pk.TCP_ACK,
    ),
    # IP options in the segment: the reset's own header has none
    Case(
        "ip-options",
        pk.frame(FLOW, b"xy", tcp_flags=pk.TCP_ACK, seq=5, ack=77, options=bytes([1] * 8)),
        77,
        0,
        pk.TCP_RST,
    ),
]


@pytest.fixture
def empty(maps: Maps) -> Maps:
    maps.add_service(3, SVC_IP, 80, pk.TCP, {})
    return maps


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_segment_to_a_service_without_endpoints_is_reset(
    case: Case, empty: Maps, run: RunFn
) -> None:
    res = run(case.frame)
    assert res.retval == TC_ACT_REDIRECT
    out = res.data
    assert out[:6] == case.frame[6:12] and out[6:12] == case.frame[:6]  # MACs swapped
    assert len(out) == pk.ETH_HLEN + 20 + 20
    assert out[pk.ETH_HLEN] == 0x45 and out[pk.ETH_HLEN + 8] > 0  # no options, a TTL
    assert pk.checksum_errors(out) == []
    rst = parse_tcp(out)
    assert (rst.saddr, rst.sport, rst.daddr, rst.dport) == (SVC_IP, 80, CLIENT, 40000)
    assert (rst.seq, rst.ack, rst.flags) == (case.seq, case.ack, case.flags)
    assert (rst.doff, rst.window, rst.urg, rst.payload) == (5, 0, 0, b"")
    assert empty.gstat_value(abi.GlobalStat.RESET) == 1
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 0
    assert empty.drop_counts() == {}  # answered, not dropped


def test_a_reset_is_never_answered(empty: Maps, run: RunFn) -> None:
    res = run(pk.frame(FLOW, tcp_flags=pk.TCP_RST | pk.TCP_ACK, seq=1, ack=2))
    assert res.retval == TC_ACT_SHOT
    assert empty.drop_counts() == {"no_backend": 1}
    assert empty.gstat_value(abi.GlobalStat.RESET) == 0


def test_a_syn_is_still_refused_with_port_unreachable(empty: Maps, run: RunFn) -> None:
    res = run(pk.frame(FLOW, tcp_flags=pk.TCP_SYN))
    assert res.retval == TC_ACT_REDIRECT
    assert pk.parse_icmp_error(res.data).quoted == FLOW
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 1
    assert empty.gstat_value(abi.GlobalStat.RESET) == 0


def test_established_flow_is_reset_once_its_service_scales_to_zero(maps: Maps, run: RunFn) -> None:
    """The flow is tracked to a backend; the writer then removes the last backend (count
    0, backend entry deleted): the next segment of the flow is reset, not re-chosen."""
    maps.add_service(3, SVC_IP, 80, pk.TCP, BACKENDS)
    assert run(pk.frame(FLOW)).retval == TC_ACT_OK
    data = pk.frame(FLOW, b"more", tcp_flags=pk.TCP_ACK, seq=1001, ack=4242)
    assert run(data).retval == TC_ACT_OK
    maps.set_count(3, SVC_IP, 80, pk.TCP, 0)
    maps.be4.delete(ctypes.c_uint32(1))
    res = run(data)
    assert res.retval == TC_ACT_REDIRECT
    rst = parse_tcp(res.data)
    assert (rst.flags, rst.seq, rst.daddr, rst.dport) == (pk.TCP_RST, 4242, CLIENT, 40000)
    assert pk.checksum_errors(res.data) == []
    assert maps.gstat_value(abi.GlobalStat.RESET) == 1


def test_local_policy_frontend_still_drops(maps: Maps, run: RunFn) -> None:
    maps.svc4.update(
        abi.Lb4Key(abi.pack_ip4(SVC_IP), abi.htons(80), pk.TCP),
        abi.Lb4Service(3, 0, abi.SvcFlag.NODEPORT | abi.SvcFlag.DROP_EMPTY),
    )
    assert run(pk.frame(FLOW, tcp_flags=pk.TCP_ACK, ack=5)).retval == TC_ACT_SHOT
    assert maps.gstat_value(abi.GlobalStat.RESET) == 0
    assert maps.drop_counts() == {"no_backend": 1}
