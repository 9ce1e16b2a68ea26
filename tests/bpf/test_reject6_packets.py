"""An IPv6 Service without endpoints refuses its traffic (bpf/lib/reject6.h), as
test_reset and test_datapath check for IPv4: UDP gets an ICMPv6 port unreachable
(type 1 code 4) quoting it, any TCP segment (a SYN too, unlike IPv4: the kernel drops
an ICMPv6 error for a socket that connect() still holds) the reset RFC 9293
prescribes; either is sent back out of the interface the packet came in on.
Every checksum of the answer is recomputed in the test over its IPv6 pseudo-header.
Packet tables through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import LoadedProgram
from tests.bpf import icmp6frames as f6
from tests.bpf import packets as pk
from tests.bpf.conftest import TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn
from tests.bpf.icmp6frames import Maps6

pytestmark = pytest.mark.root

TC_ACT_REDIRECT = 7
CLIENT = "fd00:10:244::c8"
SVC_IP = "fd00:10:96::14"
SVC_ID = 3
BACKEND = ("fd00:10:244:1::b", 8080)
TCP_FLOW = pk.Flow(pk.TCP, CLIENT, SVC_IP, 40000, 80)
UDP_FLOW = pk.Flow(pk.UDP, CLIENT, SVC_IP, 40001, 53)


@pytest.fixture(scope="module")
def module_maps6(program: LoadedProgram) -> Iterator[Maps6]:
    maps6 = f6.open_maps6(program.pin_dir)
    try:
        yield maps6
    finally:
        maps6.close()


@pytest.fixture
def maps6(module_maps6: Maps6) -> Maps6:
    """The IPv6 maps, emptied before the test."""
    module_maps6.clear()
    return module_maps6


@pytest.fixture
def empty(maps: Maps, maps6: Maps6) -> Maps:
    """Both frontends of the Service, with no endpoint."""
    for flow in (TCP_FLOW, UDP_FLOW):
        maps6.set_service(SVC_ID, SVC_IP, flow.dport, flow.proto, 0, abi.SvcFlag.CLUSTERIP)
    maps6.set_rnat(SVC_ID, SVC_IP, 80)
    return maps


def check_answer(out: bytes, frame: bytes, nexthdr: int) -> f6.Ip6:
    """The answer goes back to the sender (MACs swapped), from the frontend, with a hop
    limit, no extension headers, nothing after it, and a valid checksum."""
    assert out[:6] == frame[6:12] and out[6:12] == frame[:6]
    assert struct.unpack("!H", out[12:14])[0] == pk.ETH_P_IPV6
    ip = f6.parse_ip6(out)
    assert (ip.saddr, ip.daddr, ip.nexthdr, ip.hop_limit) == (SVC_IP, CLIENT, nexthdr, 64)
    assert struct.unpack("!I", out[pk.ETH_HLEN : pk.ETH_HLEN + 4])[0] == 6 << 28
    assert len(out) == pk.ETH_HLEN + f6.IP6_HLEN + len(ip.payload)
    assert f6.l4_checksum_ok(out)
    return ip


# --- port unreachable -------------------------------------------------------------------

UNREACHABLE = [
    ("udp", f6.frame6(UDP_FLOW, b"query")),
    ("udp-empty", f6.frame6(UDP_FLOW)),
    ("udp-long", f6.frame6(UDP_FLOW, bytes(range(256)) * 8)),
]


@pytest.mark.parametrize("frame", [f for _, f in UNREACHABLE], ids=[i for i, _ in UNREACHABLE])
def test_new_flow_gets_port_unreachable(frame: bytes, empty: Maps, run: RunFn) -> None:
    res = run(frame)
    assert res.retval == TC_ACT_REDIRECT
    ip = check_answer(res.data, frame, f6.ICMPV6)
    # type 1 code 4, unused 0, then the IPv6 header and the first 8 L4 bytes
    assert ip.payload[:2] == bytes([f6.ICMP6_DEST_UNREACH, f6.ICMP6_PORT_UNREACH])
    assert ip.payload[4:8] == b"\0\0\0\0"
    assert ip.payload[8:] == frame[pk.ETH_HLEN : pk.ETH_HLEN + 48]
    want = f6.icmp6_message(SVC_IP, CLIENT, 1, 4, b"\0" * 4, frame[pk.ETH_HLEN :][:48])
    assert res.data[pk.ETH_HLEN + f6.IP6_HLEN :] == want
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 1
    assert empty.gstat_value(abi.GlobalStat.RESET) == 0
    assert empty.drop_counts() == {}


def test_syn_gets_a_reset_counted_as_a_reject(empty: Maps, run: RunFn) -> None:
    """RST+ACK acknowledging the SYN: connect() gets ECONNREFUSED at once, where an
    ICMPv6 error arriving while it holds its socket would be dropped (lb6_reject)."""
    frame = f6.frame6(TCP_FLOW, tcp_flags=pk.TCP_SYN, seq=77)
    res = run(frame)
    assert res.retval == TC_ACT_REDIRECT
    check_answer(res.data, frame, pk.TCP)
    assert parse_rst(res.data) == (80, 40000, 0, 78, 5, pk.TCP_RST | pk.TCP_ACK, 0, 0, 20)
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 1
    assert empty.gstat_value(abi.GlobalStat.RESET) == 0
    assert empty.drop_counts() == {}


def test_udp_with_an_extension_header_is_dropped(empty: Maps, run: RunFn) -> None:
    """As reject.h drops a packet with IP options it would quote: the fixed quote would
    cut the ports off."""
    res = run(f6.frame6(UDP_FLOW, b"q", ext=True))
    assert res.retval == TC_ACT_SHOT
    assert empty.drop_counts() == {"no_backend": 1}
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 0


# --- TCP reset --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    frame: bytes
    seq: int  # the reset's sequence number
    ack: int  # its acknowledgment number
    flags: int


PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"
RESETS = [
    # with ACK: the reset's sequence number is that acknowledgment, no ACK of its own
    Case(
        "ack-with-data",
        f6.frame6(TCP_FLOW, PAYLOAD, tcp_flags=pk.TCP_ACK | pk.TCP_PSH, seq=7000, ack=0x90000001),
        0x90000001,
        0,
        pk.TCP_RST,
    ),
    Case("pure-ack", f6.frame6(TCP_FLOW, tcp_flags=pk.TCP_ACK, seq=7000, ack=123), 123, 0, 4),
    Case(
        "syn-ack", f6.frame6(TCP_FLOW, tcp_flags=pk.TCP_SYN | pk.TCP_ACK, ack=55), 55, 0, pk.TCP_RST
    ),
    # without ACK: sequence 0, acknowledging all the segment occupied (data, FIN)
    Case(
        "fin-without-ack",
        f6.frame6(TCP_FLOW, b"abc", tcp_flags=pk.TCP_FIN, seq=0xFFFFFFFE),
        0,
        (0xFFFFFFFE + 3 + 1) % 2**32,
        pk.TCP_RST | pk.TCP_ACK,
    ),
    # an extension header before TCP: not part of the segment length; none in the reset
    Case(
        "dstopts-header",
        f6.frame6(TCP_FLOW, b"xyz", tcp_flags=pk.TCP_PSH, seq=100, ext=True),
        0,
        103,
        pk.TCP_RST | pk.TCP_ACK,
    ),
]


def parse_rst(out: bytes) -> tuple[int, int, int, int, int, int, int, int, int]:
    """sport, dport, seq, ack, data offset, flags, window, urgent pointer, length."""
    seg = f6.parse_ip6(out).payload
    sport, dport, seq, ack, doff, flags, window, _csum, urg = struct.unpack("!HHIIBBHHH", seg[:20])
    return sport, dport, seq, ack, doff >> 4, flags, window, urg, len(seg)


@pytest.mark.parametrize("case", RESETS, ids=[c.id for c in RESETS])
def test_segment_that_opens_nothing_is_reset(case: Case, empty: Maps, run: RunFn) -> None:
    res = run(case.frame)
    assert res.retval == TC_ACT_REDIRECT
    check_answer(res.data, case.frame, pk.TCP)
    rst = parse_rst(res.data)
    assert rst == (80, 40000, case.seq, case.ack, 5, case.flags, 0, 0, 20)
    assert empty.gstat_value(abi.GlobalStat.RESET) == 1
    assert empty.gstat_value(abi.GlobalStat.REJECT) == 0
    assert empty.drop_counts() == {}


def test_a_reset_is_never_answered(empty: Maps, run: RunFn) -> None:
    res = run(f6.frame6(TCP_FLOW, tcp_flags=pk.TCP_RST | pk.TCP_ACK, seq=1, ack=2))
    assert res.retval == TC_ACT_SHOT
    assert empty.drop_counts() == {"no_backend": 1}
    assert empty.gstat_value(abi.GlobalStat.RESET) == 0


def test_local_policy_frontend_still_drops(maps: Maps, maps6: Maps6, run: RunFn) -> None:
    maps6.set_service(SVC_ID, SVC_IP, 80, pk.TCP, 0, abi.SvcFlag.NODEPORT | abi.SvcFlag.DROP_EMPTY)
    assert run(f6.frame6(TCP_FLOW, tcp_flags=pk.TCP_ACK, ack=5)).retval == TC_ACT_SHOT
    assert run(f6.frame6(TCP_FLOW)).retval == TC_ACT_SHOT
    assert maps.gstat_value(abi.GlobalStat.RESET) == 0
    assert maps.gstat_value(abi.GlobalStat.REJECT) == 0
    assert maps.drop_counts() == {"no_backend": 2}


def test_established_flow_is_reset_once_its_service_scales_to_zero(
    maps: Maps, maps6: Maps6, run: RunFn
) -> None:
    """The flow is tracked to a backend by the program; the writer then removes the last
    backend (count 0, backend entry deleted): the next segment is reset, not re-chosen."""
    maps6.be6.update(
        ctypes.c_uint32(1),
        abi.Lb6Backend(
            abi.addr6(BACKEND[0]), abi.htons(BACKEND[1]), pk.TCP, abi.BackendFlag.ACTIVE, SVC_ID
        ),
    )
    maps.set_slots(SVC_ID, [1])
    maps6.set_rnat(SVC_ID, SVC_IP, 80)
    maps6.set_service(SVC_ID, SVC_IP, 80, pk.TCP, 1, abi.SvcFlag.CLUSTERIP)
    syn = run(f6.frame6(TCP_FLOW))
    assert syn.retval == TC_ACT_OK and f6.parse_ip6(syn.data).daddr == BACKEND[0]
    data = f6.frame6(TCP_FLOW, b"more", tcp_flags=pk.TCP_ACK, seq=1001, ack=4242)
    assert run(data).retval == TC_ACT_OK
    maps6.set_service(SVC_ID, SVC_IP, 80, pk.TCP, 0, abi.SvcFlag.CLUSTERIP)
    maps6.be6.delete(ctypes.c_uint32(1))
    res = run(data)
    assert res.retval == TC_ACT_REDIRECT
    check_answer(res.data, data, pk.TCP)
    assert parse_rst(res.data)[:6] == (80, 40000, 4242, 0, 5, pk.TCP_RST)
    assert maps.gstat_value(abi.GlobalStat.RESET) == 1
