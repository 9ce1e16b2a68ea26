"""Packet tables through the tc program (BPF_PROG_TEST_RUN): input frame -> verdict ->
output frame, with the maps filled the way the map writer fills them."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from tests.bpf import packets as pk
from tests.bpf.conftest import TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn

pytestmark = pytest.mark.root

CLIENT = "10.0.0.5"
CLUSTER_IP = "10.96.0.10"
EMPTY_IP = "10.96.0.20"

# svc id 1: CLUSTER_IP:80/TCP, svc id 2: CLUSTER_IP:53/UDP, svc id 3: EMPTY_IP:80/TCP (none)
TCP_BACKENDS = {1: ("10.0.1.1", 8080), 2: ("10.0.1.2", 8080)}
UDP_BACKENDS = {3: ("10.0.1.3", 5353), 4: ("10.0.1.4", 5353)}

TCP_FLOW = pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80)
UDP_FLOW = pk.Flow(pk.UDP, CLIENT, CLUSTER_IP, 40000, 53)


@pytest.fixture
def services(maps: Maps) -> Maps:
    maps.add_service(1, CLUSTER_IP, 80, pk.TCP, TCP_BACKENDS)
    maps.add_service(2, CLUSTER_IP, 53, pk.UDP, UDP_BACKENDS)
    maps.add_service(3, EMPTY_IP, 80, pk.TCP, {})
    return maps


def backend_of(out: bytes) -> tuple[str, int]:
    p = pk.parse(out)
    return p.daddr, p.dport


def assert_translated(inp: bytes, out: bytes, backends: dict[int, tuple[str, int]]) -> None:
    """out is inp sent to one of backends: only daddr, dport and checksums changed, and
    the checksums are valid."""
    addr, port = backend_of(out)
    assert (addr, port) in backends.values()
    zero_udp = pk.parse(inp).proto == pk.UDP and pk.parse(inp).l4_csum == 0
    assert pk.checksum_errors(out, udp_zero_allowed=zero_udp) == []
    assert out == pk.rewritten(inp, daddr=addr, dport=port)


# --- translated: (id, frame, backends of its service) -----------------------------


@dataclass(frozen=True)
class Translated:
    id: str
    frame: bytes
    backends: dict[int, tuple[str, int]]


TRANSLATED = [
    Translated("tcp-syn", pk.frame(TCP_FLOW), TCP_BACKENDS),
    Translated(
        "tcp-ack-odd-payload", pk.frame(TCP_FLOW, b"hello", tcp_flags=pk.TCP_ACK), TCP_BACKENDS
    ),
    Translated("udp", pk.frame(UDP_FLOW, b"query"), UDP_BACKENDS),
    Translated("udp-zero-checksum", pk.frame(UDP_FLOW, b"query", udp_zero_csum=True), UDP_BACKENDS),
    Translated(
        "tcp-ip-options", pk.frame(TCP_FLOW, b"x", options=bytes([1, 1, 1, 1] * 3)), TCP_BACKENDS
    ),
    Translated(
        "udp-ip-options-max", pk.frame(UDP_FLOW, b"x", options=bytes([1] * 40)), UDP_BACKENDS
    ),
]


@pytest.mark.parametrize("case", TRANSLATED, ids=[c.id for c in TRANSLATED])
def test_translated(case: Translated, services: Maps, run: RunFn) -> None:
    res = run(case.frame)
    assert res.retval == TC_ACT_OK
    assert_translated(case.frame, res.data, case.backends)


def test_udp_zero_checksum_stays_zero(services: Maps, run: RunFn) -> None:
    inp = pk.frame(UDP_FLOW, b"query", udp_zero_csum=True)
    out = run(inp).data
    assert pk.parse(out).l4_csum == 0
    assert backend_of(out) in UDP_BACKENDS.values()


# --- untouched: (id, frame), verdict TC_ACT_OK and the output byte-for-byte the input --


def _truncated(frame: bytes, length: int) -> bytes:
    return frame[:length]


def _with_byte(frame: bytes, offset: int, value: int) -> bytes:
    return frame[:offset] + bytes([value]) + frame[offset + 1 :]


def _ip_len_too_long(frame: bytes) -> bytes:
    """A frame cut after the TCP header while the IP header still counts the payload."""
    return frame[: pk.ETH_HLEN + 20 + 20]


UNTOUCHED: list[tuple[str, bytes]] = [
    ("not-a-service", pk.frame(pk.Flow(pk.TCP, CLIENT, "10.0.0.99", 40000, 80))),
    ("service-ip-other-port", pk.frame(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 81))),
    ("service-port-other-proto", pk.frame(pk.Flow(pk.UDP, CLIENT, CLUSTER_IP, 40000, 80))),
    (
        "icmp-to-service-ip",
        pk.ethernet(
            pk.ipv4(
                pk.Flow(pk.ICMP, CLIENT, CLUSTER_IP, 0, 0), bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])
            )
        ),
    ),
    ("reply-without-conntrack", pk.frame(pk.Flow(pk.TCP, "10.0.1.1", CLIENT, 8080, 40000))),
    # The kernel's test run refuses an IPv4 frame shorter than Ethernet + 20 bytes, so a
    # frame cut inside the fixed IP header cannot reach the program here; a cut inside
    # the IP options exercises the same bounds check.
    ("ip-header-only", _truncated(pk.frame(TCP_FLOW), pk.ETH_HLEN + 20)),
    ("ihl-below-5", _with_byte(pk.frame(TCP_FLOW), pk.ETH_HLEN, 0x44)),
    ("ip-version-6-in-ipv4-ethertype", _with_byte(pk.frame(TCP_FLOW), pk.ETH_HLEN, 0x65)),
    ("cut-in-ip-options", _truncated(pk.frame(TCP_FLOW, options=bytes([1] * 8)), pk.ETH_HLEN + 24)),
    ("cut-in-tcp-header", _truncated(pk.frame(TCP_FLOW), pk.ETH_HLEN + 20 + 10)),
    ("cut-in-udp-header", _truncated(pk.frame(UDP_FLOW), pk.ETH_HLEN + 20 + 6)),
    ("ip-length-beyond-frame", _ip_len_too_long(pk.frame(TCP_FLOW, b"payload"))),
    ("arp", pk.arp_request()),
    ("ipv6-udp", pk.ipv6_udp(dport=53)),
    ("first-fragment", pk.frame(TCP_FLOW, b"a" * 16, more_fragments=True)),
    ("later-fragment", pk.ethernet(pk.ipv4(TCP_FLOW, b"b" * 16, frag_offset=24))),
    ("last-fragment", pk.ethernet(pk.ipv4(UDP_FLOW, b"c" * 16, frag_offset=1480))),
]


@pytest.mark.parametrize("frame", [f for _, f in UNTOUCHED], ids=[i for i, _ in UNTOUCHED])
def test_untouched(frame: bytes, services: Maps, run: RunFn) -> None:
    res = run(frame)
    assert res.retval == TC_ACT_OK
    assert res.data == frame
    assert services.ct4.items(abi.Ct4Key, abi.Ct4Value) == []


def test_fragments_counted(services: Maps, run: RunFn) -> None:
    run(pk.frame(TCP_FLOW, b"a" * 16, more_fragments=True))
    run(pk.ethernet(pk.ipv4(TCP_FLOW, b"b" * 16, frag_offset=24)))
    assert services.gstat_value(abi.GlobalStat.FRAGMENT) == 2


# --- dropped -------------------------------------------------------------------------

TC_ACT_REDIRECT = 7


@pytest.mark.parametrize(
    "flow",
    [pk.Flow(pk.TCP, CLIENT, EMPTY_IP, 40000, 80), pk.Flow(pk.UDP, CLIENT, EMPTY_IP, 40000, 80)],
    ids=["tcp", "udp"],
)
def test_service_without_any_endpoint_refuses(flow: pk.Flow, services: Maps, run: RunFn) -> None:
    """kube-proxy's REJECT: an ICMP port unreachable quoting the packet goes back out
    of the interface it came in on (MACs swapped), so connect() fails at once."""
    services.add_service(4, EMPTY_IP, 80, pk.UDP, {})
    inp = pk.frame(flow, b"payload of the request")
    res = run(inp)
    assert res.retval == TC_ACT_REDIRECT
    assert res.data[:6] == inp[6:12] and res.data[6:12] == inp[:6]
    err = pk.parse_icmp_error(res.data)
    assert (err.saddr, err.daddr) == (EMPTY_IP, CLIENT)
    assert err.quoted == flow
    assert res.data[pk.ETH_HLEN + 20 : pk.ETH_HLEN + 22] == bytes([3, 3])  # port unreachable
    assert len(res.data) == pk.ETH_HLEN + 20 + 8 + 28
    assert pk.icmp_checksum_errors(res.data) == []
    assert services.gstat_value(abi.GlobalStat.REJECT) == 1
    assert services.ct4.items(abi.Ct4Key, abi.Ct4Value) == []


def test_service_left_empty_by_a_local_policy_drops(services: Maps, run: RunFn) -> None:
    services.svc4.update(
        abi.Lb4Key(abi.pack_ip4(EMPTY_IP), abi.htons(80), pk.TCP),
        abi.Lb4Service(3, 0, abi.SvcFlag.NODEPORT | abi.SvcFlag.DROP_EMPTY),
    )
    res = run(pk.frame(pk.Flow(pk.TCP, CLIENT, EMPTY_IP, 40000, 80)))
    assert res.retval == TC_ACT_SHOT
    assert services.gstat_value(abi.GlobalStat.NO_BACKEND) == 1
    assert services.gstat_value(abi.GlobalStat.REJECT) == 0
    assert services.ct4.items(abi.Ct4Key, abi.Ct4Value) == []


def test_slot_naming_missing_backend_dropped(maps: Maps, run: RunFn) -> None:
    maps.set_slots(1, [99])
    maps.set_count(1, CLUSTER_IP, 80, pk.TCP, 1)
    assert run(pk.frame(TCP_FLOW)).retval == TC_ACT_SHOT
    assert maps.gstat_value(abi.GlobalStat.BACKEND_MISSING) == 1


def test_slot_naming_other_services_backend_dropped(maps: Maps, run: RunFn) -> None:
    maps.add_backend(7, 5, "10.0.9.9", 80, pk.TCP)  # backend 5 belongs to service 7
    maps.set_slots(1, [5])
    maps.set_count(1, CLUSTER_IP, 80, pk.TCP, 1)
    assert run(pk.frame(TCP_FLOW)).retval == TC_ACT_SHOT


# --- backend selection and conntrack ---------------------------------------------------


def _flow(sport: int, proto: int = pk.TCP) -> pk.Flow:
    return pk.Flow(proto, CLIENT, CLUSTER_IP, sport, 80 if proto == pk.TCP else 53)


def test_new_flows_spread_over_all_backends(maps: Maps, run: RunFn) -> None:
    backends = {i: (f"10.0.1.{i}", 8080) for i in range(1, 5)}
    maps.add_service(1, CLUSTER_IP, 80, pk.TCP, backends)
    chosen = set()
    for sport in range(20000, 20200):
        inp = pk.frame(_flow(sport))
        res = run(inp)
        assert res.retval == TC_ACT_OK
        assert_translated(inp, res.data, backends)
        chosen.add(backend_of(res.data))
    assert chosen == set(backends.values())
    assert maps.gstat_value(abi.GlobalStat.NEW_FLOW) == 200


def test_flow_keeps_backend_when_backends_are_added(services: Maps, run: RunFn) -> None:
    inp = pk.frame(TCP_FLOW)
    first = backend_of(run(inp).data)
    more = {**TCP_BACKENDS, 5: ("10.0.1.5", 8080), 6: ("10.0.1.6", 8080)}
    services.add_service(1, CLUSTER_IP, 80, pk.TCP, more)
    for _ in range(30):
        assert backend_of(run(inp).data) == first
    assert services.gstat_value(abi.GlobalStat.CT_HIT) == 30
    assert services.gstat_value(abi.GlobalStat.NEW_FLOW) == 1


def _ct(maps: Maps, flow: pk.Flow, direction: abi.CtDir) -> abi.Ct4Value | None:
    key = abi.Ct4Key(
        abi.pack_ip4(flow.saddr),
        abi.pack_ip4(flow.daddr),
        abi.htons(flow.sport),
        abi.htons(flow.dport),
        flow.proto,
        direction,
    )
    return maps.ct4.lookup(key, abi.Ct4Value)


def test_conntrack_entries_written(services: Maps, run: RunFn) -> None:
    addr, port = backend_of(run(pk.frame(TCP_FLOW)).data)
    backend_id = next(i for i, b in TCP_BACKENDS.items() if b == (addr, port))
    fwd = _ct(services, TCP_FLOW, abi.CtDir.SERVICE)
    assert fwd is not None
    assert (fwd.backend_id, fwd.svc_id) == (backend_id, 1)
    assert (abi.unpack_ip4(fwd.nat_address), abi.ntohs(fwd.nat_port)) == (
        abi.unpack_ip4(abi.pack_ip4(addr)),
        port,
    )
    assert fwd.created_ns > 0 and fwd.last_seen_ns >= fwd.created_ns
    rev = _ct(services, pk.Flow(pk.TCP, addr, CLIENT, port, TCP_FLOW.sport), abi.CtDir.REPLY)
    assert rev is not None
    assert (rev.backend_id, rev.svc_id) == (backend_id, 1)
    assert (str(abi.unpack_ip4(rev.nat_address)), abi.ntohs(rev.nat_port)) == (CLUSTER_IP, 80)
    assert len(services.ct4.items(abi.Ct4Key, abi.Ct4Value)) == 2


def test_conntrack_last_seen_moves_once_a_second(services: Maps, run: RunFn) -> None:
    """last_seen_ns is CLOCK_MONOTONIC (what `ebpflb conntrack` subtracts from) and is
    written only once it is CT_TOUCH_NS (1 s) old, not by every packet."""
    inp = pk.frame(TCP_FLOW)
    run(inp)
    fwd = _ct(services, TCP_FLOW, abi.CtDir.SERVICE)
    assert fwd is not None
    assert abs(time.monotonic_ns() - fwd.created_ns) < 1_000_000_000
    key = abi.Ct4Key(
        abi.pack_ip4(TCP_FLOW.saddr),
        abi.pack_ip4(TCP_FLOW.daddr),
        abi.htons(TCP_FLOW.sport),
        abi.htons(TCP_FLOW.dport),
        TCP_FLOW.proto,
        abi.CtDir.SERVICE,
    )
    for age_ns, moves in ((100_000_000, False), (2_000_000_000, True)):
        old = fwd.last_seen_ns - age_ns
        fwd.last_seen_ns = old
        services.ct4.update(key, fwd)
        run(inp)
        fwd = _ct(services, TCP_FLOW, abi.CtDir.SERVICE)
        assert fwd is not None
        assert (fwd.last_seen_ns != old) is moves, (age_ns, fwd.last_seen_ns - old)


def test_flow_moves_when_its_backend_is_deleted(services: Maps, run: RunFn) -> None:
    inp = pk.frame(TCP_FLOW)
    old = backend_of(run(inp).data)
    old_id = next(i for i, b in TCP_BACKENDS.items() if b == old)
    (live_id,) = set(TCP_BACKENDS) - {old_id}
    # the writer's order for a removal: shrink the service, rewrite slots, delete backend
    services.set_count(1, CLUSTER_IP, 80, pk.TCP, 1)
    services.set_slots(1, [live_id])
    services.be4.delete(ctypes.c_uint32(old_id))

    res = run(inp)
    assert res.retval == TC_ACT_OK
    assert_translated(inp, res.data, {live_id: TCP_BACKENDS[live_id]})
    fwd = _ct(services, TCP_FLOW, abi.CtDir.SERVICE)
    assert fwd is not None and fwd.backend_id == live_id
    assert services.gstat_value(abi.GlobalStat.RESELECT) == 1
    # the old backend's reply entry is gone, the new one's is there
    old_reply = pk.Flow(pk.TCP, old[0], CLIENT, old[1], TCP_FLOW.sport)
    live_addr, live_port = TCP_BACKENDS[live_id]
    new_reply = pk.Flow(pk.TCP, live_addr, CLIENT, live_port, TCP_FLOW.sport)
    assert _ct(services, old_reply, abi.CtDir.REPLY) is None
    assert _ct(services, new_reply, abi.CtDir.REPLY) is not None


def test_a_new_syn_on_a_closed_flows_tuple_leaves_a_not_ready_backend(
    services: Maps, run: RunFn
) -> None:
    """A client reusing a port opens a new connection on the 5-tuple of a closed one
    still in conntrack: its SYN chooses again when that flow's backend no longer takes
    new flows (not ready), while segments of the established flow keep draining to it."""
    old = backend_of(run(pk.frame(TCP_FLOW)).data)
    old_id = next(i for i, b in TCP_BACKENDS.items() if b == old)
    (live_id,) = set(TCP_BACKENDS) - {old_id}
    # the writer's order for a backend turning not ready: shrink, rewrite slots, flag
    services.set_count(1, CLUSTER_IP, 80, pk.TCP, 1)
    services.set_slots(1, [live_id])
    services.be4.update(
        ctypes.c_uint32(old_id),
        abi.Lb4Backend(abi.pack_ip4(old[0]), abi.htons(old[1]), pk.TCP, 0, 1),
    )
    segment = pk.frame(TCP_FLOW, tcp_flags=pk.TCP_ACK)
    assert backend_of(run(segment).data) == old  # established: stays
    res = run(pk.frame(TCP_FLOW))  # a SYN: a new connection
    assert_translated(pk.frame(TCP_FLOW), res.data, {live_id: TCP_BACKENDS[live_id]})
    assert services.gstat_value(abi.GlobalStat.RESELECT) == 1
    fwd = _ct(services, TCP_FLOW, abi.CtDir.SERVICE)
    assert fwd is not None and fwd.backend_id == live_id


def test_a_udp_flow_leaves_a_not_ready_backend(services: Maps, run: RunFn) -> None:
    """A UDP flow's next datagram chooses again once its backend stops taking new flows,
    as kube-proxy clears the UDP conntrack entries of endpoints no longer ready."""
    inp = pk.frame(UDP_FLOW)
    old = backend_of(run(inp).data)
    old_id = next(i for i, b in UDP_BACKENDS.items() if b == old)
    (live_id,) = set(UDP_BACKENDS) - {old_id}
    services.set_count(2, CLUSTER_IP, 53, pk.UDP, 1)
    services.set_slots(2, [live_id])
    services.be4.update(
        ctypes.c_uint32(old_id),
        abi.Lb4Backend(abi.pack_ip4(old[0]), abi.htons(old[1]), pk.UDP, 0, 2),
    )
    assert backend_of(run(inp).data) == UDP_BACKENDS[live_id]
    assert services.gstat_value(abi.GlobalStat.RESELECT) == 1


# --- replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flow", "zero_udp"),
    [(TCP_FLOW, False), (UDP_FLOW, False), (UDP_FLOW, True)],
    ids=["tcp", "udp", "udp-zero-checksum"],
)
def test_reply_rewritten_to_frontend(
    flow: pk.Flow, zero_udp: bool, services: Maps, run: RunFn
) -> None:
    baddr, bport = backend_of(run(pk.frame(flow, udp_zero_csum=zero_udp)).data)
    reply = pk.frame(
        pk.Flow(flow.proto, baddr, CLIENT, bport, flow.sport),
        b"answer",
        tcp_flags=pk.TCP_SYN | pk.TCP_ACK,
        udp_zero_csum=zero_udp,
    )
    res = run(reply)
    assert res.retval == TC_ACT_OK
    assert pk.checksum_errors(res.data, udp_zero_allowed=zero_udp) == []
    assert res.data == pk.rewritten(reply, saddr=CLUSTER_IP, sport=flow.dport)
    assert pk.parse(res.data).flow == flow.reversed()
    assert services.gstat_value(abi.GlobalStat.REPLY) == 1


# A backend whose address sums (16-bit words, ones' complement) as the frontend's: the
# address change leaves the L4 checksum's pseudo-header sum where it was, so the
# program cannot tell a partial checksum from a full one by the pseudo-header fix
# (csum.h csum_l4_ports) and must fix the ports with the kernel helper.
SAME_SUM_BACKENDS = {7: ("10.97.0.9", 8080)}  # 0x0a61 + 0x0009 == 0x0a60 + 0x000a


@pytest.mark.parametrize(
    ("proto", "zero_udp"),
    [(pk.TCP, False), (pk.UDP, False), (pk.UDP, True)],
    ids=["tcp", "udp", "udp-zero-checksum"],
)
def test_address_change_summing_to_zero(proto: int, zero_udp: bool, maps: Maps, run: RunFn) -> None:
    maps.add_service(1, CLUSTER_IP, 80, proto, SAME_SUM_BACKENDS)
    flow = pk.Flow(proto, CLIENT, CLUSTER_IP, 40000, 80)
    inp = pk.frame(flow, b"ask", tcp_flags=pk.TCP_ACK, udp_zero_csum=zero_udp)
    res = run(inp)
    assert res.retval == TC_ACT_OK
    assert_translated(inp, res.data, SAME_SUM_BACKENDS)
    reply = pk.frame(
        pk.Flow(proto, "10.97.0.9", CLIENT, 8080, flow.sport),
        b"answer",
        tcp_flags=pk.TCP_ACK,
        udp_zero_csum=zero_udp,
    )
    res = run(reply)
    assert pk.checksum_errors(res.data, udp_zero_allowed=zero_udp) == []
    assert res.data == pk.rewritten(reply, saddr=CLUSTER_IP, sport=80)


def test_reply_after_service_deleted_passes_unchanged(services: Maps, run: RunFn) -> None:
    baddr, bport = backend_of(run(pk.frame(TCP_FLOW)).data)
    services.rnat4.delete(ctypes.c_uint32(1))
    reply = pk.frame(pk.Flow(pk.TCP, baddr, CLIENT, bport, TCP_FLOW.sport), b"answer")
    res = run(reply)
    assert res.retval == TC_ACT_OK
    assert res.data == reply
    assert services.gstat_value(abi.GlobalStat.REPLY) == 0


def test_service_counters(services: Maps, run: RunFn) -> None:
    requests = [pk.frame(TCP_FLOW, b"x" * n) for n in (0, 10, 100)]
    for inp in requests:
        run(inp)
    baddr, bport = backend_of(run(requests[0]).data)
    replies = [
        pk.frame(pk.Flow(pk.TCP, baddr, CLIENT, bport, TCP_FLOW.sport), b"y" * n) for n in (5, 50)
    ]
    for inp in replies:
        run(inp)
    st = services.svc_stats(1)
    assert (st.rx_packets, st.rx_bytes) == (4, sum(map(len, requests)) + len(requests[0]))
    assert (st.tx_packets, st.tx_bytes) == (2, sum(map(len, replies)))
    other = services.svc_stats(2)
    assert (other.rx_packets, other.tx_packets) == (0, 0)
