"""ICMPv6 errors about a tracked IPv6 flow are reverse-translated (bpf/lib/icmp6.h): the
quote (client or NAT address -> backend, as the backend saw it) becomes client ->
frontend, the outer header the flow's reply would be. Each output is compared byte for
byte with the error built from scratch as the client must get it, ICMPv6 checksum
(pseudo-header included) recomputed in the test. Packet tables through
BPF_PROG_TEST_RUN."""

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
from tests.bpf.conftest import TC_ACT_OK, Maps, RunFn
from tests.bpf.icmp6frames import Maps6

pytestmark = pytest.mark.root

CLIENT = "fd00:10:244::c8"
FRONTEND = ("fd00:10:96::a", 80)
BACKEND = ("fd00:10:244:1::b", 8080)
ROUTER = "fd00:10:244:1::1"
NODE = "fd00:192:168:50::1"  # the source-NAT address of external traffic
NAT_PORT = 61007
SVC_ID = 7


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


@dataclass(frozen=True)
class Case:
    id: str
    proto: int
    sender: str  # who sends the error: the backend or a router on the way
    icmp_type: int
    code: int
    rest: bytes  # the 4 bytes after the checksum (the MTU of "packet too big")
    snat: bool  # the flow was source-NATed to NODE:NAT_PORT


CASES = [
    Case("backend-port-unreachable-udp", pk.UDP, BACKEND[0], 1, 4, b"\0" * 4, False),
    Case("backend-port-unreachable-tcp", pk.TCP, BACKEND[0], 1, 4, b"\0" * 4, False),
    Case("router-time-exceeded", pk.UDP, ROUTER, 3, 0, b"\0" * 4, False),
    Case("router-packet-too-big", pk.TCP, ROUTER, 2, 0, struct.pack("!I", 1280), False),
    Case("backend-parameter-problem", pk.UDP, BACKEND[0], 4, 1, struct.pack("!I", 6), False),
    Case("snat-router-packet-too-big", pk.TCP, ROUTER, 2, 0, struct.pack("!I", 1400), True),
    Case("snat-backend-port-unreachable", pk.UDP, BACKEND[0], 1, 4, b"\0" * 4, True),
]


def client_flow(proto: int) -> pk.Flow:
    return pk.Flow(proto, CLIENT, FRONTEND[0], 40000, FRONTEND[1])


def backend_view(proto: int, snat: bool) -> pk.Flow:
    """The flow as the backend received it."""
    src = (NODE, NAT_PORT) if snat else (CLIENT, 40000)
    return pk.Flow(proto, src[0], BACKEND[0], src[1], BACKEND[1])


def track(maps6: Maps6, proto: int, snat: bool) -> None:
    maps6.set_rnat(SVC_ID, *FRONTEND)
    maps6.track_reply(
        backend_view(proto, snat).reversed(),
        SVC_ID,
        frontend=FRONTEND,
        peer=(CLIENT, 40000) if snat else None,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_icmp6_error_of_a_tracked_flow_is_reverse_translated(
    case: Case, maps: Maps, maps6: Maps6, run: RunFn
) -> None:
    track(maps6, case.proto, case.snat)
    seen = backend_view(case.proto, case.snat)
    sent = f6.frame6(seen, b"payload-" * 5, tcp_flags=pk.TCP_ACK, seq=9, ack=10)
    err = f6.icmp6_error(
        case.sender, seen.saddr, sent, icmp_type=case.icmp_type, code=case.code, rest=case.rest
    )
    res = run(err)
    assert res.retval == TC_ACT_OK
    want_quote = f6.requoted(sent, saddr=CLIENT, daddr=FRONTEND[0], sport=40000, dport=FRONTEND[1])
    # the backend answers as the frontend; a router keeps its own address
    sender = FRONTEND[0] if case.sender == BACKEND[0] else case.sender
    want = f6.icmp6_error(
        sender, CLIENT, want_quote, icmp_type=case.icmp_type, code=case.code, rest=case.rest
    )
    assert res.data == want
    assert f6.l4_checksum_ok(res.data)
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 1
    assert maps.drop_counts() == {}


def test_quote_checksum_is_left_as_the_backend_saw_it(maps: Maps, maps6: Maps6, run: RunFn) -> None:
    """As icmp.h: the quoted UDP checksum is not fixed (no receiver checks a quote's);
    the ICMPv6 checksum over it is."""
    track(maps6, pk.UDP, False)
    sent = f6.frame6(backend_view(pk.UDP, False), b"x")
    res = run(f6.icmp6_error(BACKEND[0], CLIENT, sent))
    quote = f6.parse_ip6(res.data).payload[8:]
    assert quote[24:40] == f6.a6(FRONTEND[0])  # translated
    assert quote[40 + 6 : 40 + 8] == sent[pk.ETH_HLEN + 40 + 6 : pk.ETH_HLEN + 40 + 8]
    assert f6.l4_checksum_ok(res.data)


UNTOUCHED = [
    # no conntrack entry for the quoted flow
    ("unknown-flow", pk.Flow(pk.UDP, CLIENT, "fd00:10:244:1::99", 40000, 53)),
    # the client -> frontend direction: no REPLY entry is keyed so
    ("quote-of-the-client-side", client_flow(pk.UDP)),
]


@pytest.mark.parametrize("quoted", [q for _, q in UNTOUCHED], ids=[i for i, _ in UNTOUCHED])
def test_icmp6_error_of_an_unknown_flow_passes_untouched(
    quoted: pk.Flow, maps: Maps, maps6: Maps6, run: RunFn
) -> None:
    track(maps6, pk.UDP, False)
    frame = f6.icmp6_error(BACKEND[0], quoted.saddr, f6.frame6(quoted, b"q"))
    res = run(frame)
    assert (res.retval, res.data) == (TC_ACT_OK, frame)
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 0


def test_informational_icmp6_passes_untouched(maps: Maps, maps6: Maps6, run: RunFn) -> None:
    """An echo request whose body happens to look like a quote of a tracked flow is no
    error: only types 1-4 are translated."""
    track(maps6, pk.UDP, False)
    body = f6.frame6(backend_view(pk.UDP, False), b"q")[pk.ETH_HLEN :]
    msg = f6.icmp6_message(BACKEND[0], CLIENT, f6.ICMP6_ECHO_REQUEST, 0, b"\0\1\0\1", body)
    frame = pk.ethernet(f6.ipv6(BACKEND[0], CLIENT, f6.ICMPV6, msg), pk.ETH_P_IPV6)
    res = run(frame)
    assert (res.retval, res.data) == (TC_ACT_OK, frame)
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 0


def test_egress_translates_an_error_from_a_host_network_backend(
    maps: Maps, maps6: Maps6, run_egress: RunFn
) -> None:
    """The egress program (replies from the node's own stack into a client pod) turns
    ICMPv6 errors around too, once the node has host-network backends."""
    track(maps6, pk.UDP, False)
    sent = f6.frame6(backend_view(pk.UDP, False), b"x")
    err = f6.icmp6_error(BACKEND[0], CLIENT, sent)
    assert run_egress(err).data == err  # CFG_HOST_BACKENDS unset: not looked at
    maps.config.update(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32(1))
    res = run_egress(err)
    quote = f6.requoted(sent, saddr=CLIENT, daddr=FRONTEND[0], sport=40000, dport=80)
    assert (res.retval, res.data) == (TC_ACT_OK, f6.icmp6_error(FRONTEND[0], CLIENT, quote))
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 1


def test_icmp6_error_after_a_real_flow(maps: Maps, maps6: Maps6, run: RunFn) -> None:
    """End to end through the IPv6 forward path: the client's packet is translated and
    tracked by the program itself, then the backend's port unreachable about it comes
    back translated."""
    maps6.be6.update(
        ctypes.c_uint32(1),
        abi.Lb6Backend(
            abi.addr6(BACKEND[0]), abi.htons(BACKEND[1]), pk.UDP, abi.BackendFlag.ACTIVE, SVC_ID
        ),
    )
    maps.set_slots(SVC_ID, [1])
    maps6.set_rnat(SVC_ID, *FRONTEND)
    maps6.set_service(SVC_ID, FRONTEND[0], FRONTEND[1], pk.UDP, 1, abi.SvcFlag.CLUSTERIP)
    fwd = run(f6.frame6(client_flow(pk.UDP), b"hello"))
    assert fwd.retval == TC_ACT_OK
    assert f6.parse_ip6(fwd.data).daddr == BACKEND[0]
    res = run(f6.icmp6_error(BACKEND[0], CLIENT, fwd.data))
    assert res.retval == TC_ACT_OK
    quote = f6.requoted(fwd.data, saddr=CLIENT, daddr=FRONTEND[0], sport=40000, dport=80)
    want = f6.icmp6_error(FRONTEND[0], CLIENT, quote)
    assert res.data == want
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 1
