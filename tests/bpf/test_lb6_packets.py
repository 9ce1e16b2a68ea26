"""IPv6 packet tables through the tc programs (BPF_PROG_TEST_RUN): input frame ->
verdict -> output frame, with the IPv6 maps written directly here (ids shared with
IPv4: the slot, Maglev, stats and config maps are the IPv4 tests' own)."""

from __future__ import annotations

import ctypes
import ipaddress
import struct
import sys

import pytest

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maglevtables import TABLE_FLAGS
from ebpflb.dataplane.bpf.syscall import MapType, PinnedMap, map_create
from tests.bpf import packets as pk
from tests.bpf import packets6 as p6
from tests.bpf.conftest import TC_ACT_OK, TC_ACT_SHOT, RunFn
from tests.bpf.maps6 import Maps6

pytestmark = pytest.mark.root

CLIENT = "fd00:10:244:1::c8"
CLUSTER_IP = "fd00:10:96::a"
NODE_IP = "fd00:192:168:50::1"
EXTERNAL_CLIENT = "fd00:192:168:50::65"
NODE_PORT = 30080
POD1, POD2, POD3 = "fd00:10:244::b", "fd00:10:244::c", "fd00:10:244::d"

TCP_BACKENDS = {11: (POD1, 8080), 12: (POD2, 8080)}
UDP_BACKENDS = {13: (POD1, 5353), 14: (POD2, 5353)}
TCP_FLOW = pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80)
UDP_FLOW = pk.Flow(pk.UDP, CLIENT, CLUSTER_IP, 40000, 53)
PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"


@pytest.fixture
def services(maps6: Maps6) -> Maps6:
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, TCP_BACKENDS)
    maps6.add_service(2, CLUSTER_IP, 53, pk.UDP, UDP_BACKENDS)
    return maps6


def gstat(maps6: Maps6, stat: abi.GlobalStat) -> int:
    return maps6.v4.gstat_value(stat)


def dest_of(out: bytes) -> tuple[str, int]:
    p = p6.parse6(out)
    return p.daddr, p.dport


def assert_translated(inp: bytes, out: bytes, backends: dict[int, tuple[str, int]]) -> None:
    """out is inp sent to one of backends: only the destination and the L4 checksum
    changed, and that checksum is right (recomputed in full here)."""
    addr, port = dest_of(out)
    assert (addr, port) in backends.values()
    assert p6.checksum_errors6(out) == []
    assert out == p6.rewritten6(inp, daddr=addr, dport=port)


# --- new flows, conntrack, replies -------------------------------------------------


EXT_HOP_DST = [(p6.HOPOPTS, p6.options_header(8)), (p6.DSTOPTS, p6.options_header(16))]

TRANSLATED = [
    ("tcp-syn", p6.frame6(TCP_FLOW, PAYLOAD), TCP_BACKENDS),
    ("tcp-ack-odd-payload", p6.frame6(TCP_FLOW, b"odd", tcp_flags=pk.TCP_ACK), TCP_BACKENDS),
    ("udp", p6.frame6(UDP_FLOW, b"query"), UDP_BACKENDS),
    (
        "tcp-hop-by-hop-and-dest-options",
        p6.frame6(TCP_FLOW, PAYLOAD, ext=EXT_HOP_DST),
        TCP_BACKENDS,
    ),
    ("udp-routing-header", p6.frame6(UDP_FLOW, b"q", ext=[(p6.ROUTING, bytes(7))]), UDP_BACKENDS),
    (
        "tcp-four-extension-headers",
        p6.frame6(TCP_FLOW, b"x", ext=[(p6.DSTOPTS, p6.options_header(8))] * 4),
        TCP_BACKENDS,
    ),
]


@pytest.mark.parametrize("name,frame,backends", TRANSLATED, ids=[c[0] for c in TRANSLATED])
def test_new_flow_translated(
    name: str, frame: bytes, backends: dict[int, tuple[str, int]], services: Maps6, run: RunFn
) -> None:
    res = run(frame)
    assert res.retval == TC_ACT_OK
    assert_translated(frame, res.data, backends)
    assert gstat(services, abi.GlobalStat.NEW_FLOW) == 1
    assert services.v4.drop_counts() == {}


def test_conntrack_entries_and_hit(services: Maps6, run: RunFn) -> None:
    first = run(p6.frame6(TCP_FLOW, PAYLOAD)).data
    backend = dest_of(first)
    entries = {
        (k.dir, abi.unpack_addr6(k.saddr), abi.ntohs(k.sport)) for k, _ in services.ct_entries()
    }
    assert entries == {
        (abi.CtDir.SERVICE, ipaddress.IPv6Address(CLIENT), 40000),
        (abi.CtDir.REPLY, ipaddress.IPv6Address(backend[0]), backend[1]),
    }
    # the flow keeps its backend: 20 more packets, all to it, all conntrack hits
    for i in range(20):
        inp = p6.frame6(TCP_FLOW, b"more %d" % i, tcp_flags=pk.TCP_ACK)
        out = run(inp).data
        assert dest_of(out) == backend
        assert out == p6.rewritten6(inp, daddr=backend[0], dport=backend[1])
    assert gstat(services, abi.GlobalStat.NEW_FLOW) == 1
    assert gstat(services, abi.GlobalStat.CT_HIT) == 20


@pytest.mark.parametrize("flow", [TCP_FLOW, UDP_FLOW], ids=["tcp", "udp"])
def test_reply_reverse_translated(flow: pk.Flow, services: Maps6, run: RunFn) -> None:
    baddr, bport = dest_of(run(p6.frame6(flow, b"ask")).data)
    reply = p6.frame6(
        pk.Flow(flow.proto, baddr, CLIENT, bport, flow.sport), b"answer", tcp_flags=pk.TCP_ACK
    )
    res = run(reply)
    assert res.retval == TC_ACT_OK
    assert p6.checksum_errors6(res.data) == []
    assert res.data == p6.rewritten6(reply, saddr=CLUSTER_IP, sport=flow.dport)
    assert gstat(services, abi.GlobalStat.REPLY) == 1
    st = services.v4.svc_stats(1 if flow.proto == pk.TCP else 2)
    assert (st.rx_packets, st.tx_packets, st.tx_bytes) == (1, 1, len(reply))


# A backend whose address sums as the frontend's (16-bit words, ones' complement): the
# pseudo-header fix cannot tell the checksum state, the ports take the helper (see
# test_datapath's twin).
SAME_SUM_POD = "fd00:10:96::1:9"  # ::1:9 sums as ::a


@pytest.mark.parametrize("proto", [pk.TCP, pk.UDP], ids=["tcp", "udp"])
def test_address_change_summing_to_zero(proto: int, maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(1, CLUSTER_IP, 80, proto, {11: (SAME_SUM_POD, 8080)})
    flow = pk.Flow(proto, CLIENT, CLUSTER_IP, 40000, 80)
    inp = p6.frame6(flow, b"ask", tcp_flags=pk.TCP_ACK)
    res = run(inp)
    assert res.retval == TC_ACT_OK
    assert_translated(inp, res.data, {11: (SAME_SUM_POD, 8080)})
    reply = p6.frame6(
        pk.Flow(proto, SAME_SUM_POD, CLIENT, 8080, flow.sport), b"answer", tcp_flags=pk.TCP_ACK
    )
    res = run(reply)
    assert p6.checksum_errors6(res.data) == []
    assert res.data == p6.rewritten6(reply, saddr=CLUSTER_IP, sport=80)


def test_reply_through_egress_with_host_backends(
    services: Maps6, run: RunFn, run_egress: RunFn
) -> None:
    baddr, bport = dest_of(run(p6.frame6(TCP_FLOW)).data)
    reply = p6.frame6(pk.Flow(pk.TCP, baddr, CLIENT, bport, 40000), tcp_flags=pk.TCP_ACK)
    assert run_egress(reply).data == reply  # CFG_HOST_BACKENDS unset: not looked at
    services.v4.config.update(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32(1))
    assert run_egress(reply).data == p6.rewritten6(reply, saddr=CLUSTER_IP, sport=80)


# --- source NAT: NodePort (externalTrafficPolicy: Cluster) and hairpin ---------------


def _nat_port_ok(port: int) -> bool:
    return abi.NAT_PORT_MIN <= port < abi.NAT_PORT_MIN + abi.NAT_PORT_COUNT


def test_node_port_source_nat_and_its_reply(maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(
        5, NODE_IP, NODE_PORT, pk.TCP, {21: (POD3, 8080)}, flags=abi.SvcFlag.NODEPORT, snat=NODE_IP
    )
    flow = pk.Flow(pk.TCP, EXTERNAL_CLIENT, NODE_IP, 51000, NODE_PORT)
    inp = p6.frame6(flow, PAYLOAD)
    out = run(inp).data
    p = p6.parse6(out)
    assert (p.saddr, p.daddr, p.dport) == (NODE_IP, POD3, 8080)
    assert _nat_port_ok(p.sport)
    assert out == p6.rewritten6(inp, saddr=NODE_IP, sport=p.sport, daddr=POD3, dport=8080)
    assert p6.checksum_errors6(out) == []
    assert gstat(maps6, abi.GlobalStat.SNAT) == 1
    # the next packet keeps the same NAT port
    again = p6.parse6(run(p6.frame6(flow, b"2", tcp_flags=pk.TCP_ACK)).data)
    assert again.sport == p.sport
    # the backend answers the node's NAT port: back to the client, from the NodePort
    reply = p6.frame6(pk.Flow(pk.TCP, POD3, NODE_IP, 8080, p.sport), b"ok", tcp_flags=pk.TCP_ACK)
    back = run(reply).data
    assert back == p6.rewritten6(
        reply, saddr=NODE_IP, sport=NODE_PORT, daddr=EXTERNAL_CLIENT, dport=51000
    )
    assert p6.checksum_errors6(back) == []


def test_udp_node_port_source_nat(maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(
        5, NODE_IP, NODE_PORT, pk.UDP, {21: (POD3, 5353)}, flags=abi.SvcFlag.NODEPORT, snat=NODE_IP
    )
    inp = p6.frame6(pk.Flow(pk.UDP, EXTERNAL_CLIENT, NODE_IP, 51000, NODE_PORT), b"dns?")
    out = run(inp).data
    p = p6.parse6(out)
    assert out == p6.rewritten6(inp, saddr=NODE_IP, sport=p.sport, daddr=POD3, dport=5353)
    assert p6.checksum_errors6(out) == []


def test_hairpin_pod_to_its_own_service(maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, {11: (POD1, 8080)})
    inp = p6.frame6(pk.Flow(pk.TCP, POD1, CLUSTER_IP, 43000, 80), PAYLOAD)
    out = run(inp).data
    p = p6.parse6(out)
    hairpin = str(abi.HAIRPIN_ADDRESS6)
    assert (p.saddr, p.daddr, p.dport) == (hairpin, POD1, 8080)
    assert _nat_port_ok(p.sport)
    assert out == p6.rewritten6(inp, saddr=hairpin, sport=p.sport, daddr=POD1, dport=8080)
    assert gstat(maps6, abi.GlobalStat.HAIRPIN) == 1
    reply = p6.frame6(pk.Flow(pk.TCP, POD1, hairpin, 8080, p.sport), tcp_flags=pk.TCP_ACK)
    back = run(reply).data
    assert back == p6.rewritten6(reply, saddr=CLUSTER_IP, sport=80, daddr=POD1, dport=43000)


# --- affinity, source ranges, Maglev ---------------------------------------------------


def test_affinity_sends_a_clients_new_flows_to_one_backend(maps6: Maps6, run: RunFn) -> None:
    backends = {30 + i: (f"fd00:10:244::{0x20 + i:x}", 8080) for i in range(4)}
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, backends, affinity=600)
    chosen = {
        dest_of(run(p6.frame6(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 20000 + i, 80))).data)
        for i in range(30)
    }
    assert len(chosen) == 1
    assert gstat(maps6, abi.GlobalStat.AFFINITY_HIT) == 29
    ((key, value),) = maps6.aff6.items(abi.Aff6Key, abi.Aff4Value)
    assert (abi.unpack_addr6(key.client), key.svc_id) == (ipaddress.IPv6Address(CLIENT), 1)
    assert backends[value.backend_id] in chosen
    # another client is free to land elsewhere: over 30 clients, more than one backend
    others = {
        dest_of(
            run(p6.frame6(pk.Flow(pk.TCP, f"fd00:10:244:1::{i + 1:x}", CLUSTER_IP, 1, 80))).data
        )
        for i in range(30)
    }
    assert len(others) > 1


@pytest.mark.parametrize(
    "client,admitted",
    [("fd00:192:168:50::65", True), ("fd00:192:168:51::65", False), ("fd00:10:244:1::c8", False)],
)
def test_source_ranges(client: str, admitted: bool, maps6: Maps6, run: RunFn) -> None:
    flags = abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES
    maps6.add_service(7, "fd00:192:168:60::7", 80, pk.TCP, {41: (POD1, 8080)}, flags=flags)
    maps6.srcr6.update(
        abi.SrcRange6Key(32 + 64, 7, abi.addr6("fd00:192:168:50::")), ctypes.c_uint8(1)
    )
    inp = p6.frame6(pk.Flow(pk.TCP, client, "fd00:192:168:60::7", 40000, 80))
    res = run(inp)
    if admitted:
        assert res.retval == TC_ACT_OK
        assert res.data == p6.rewritten6(inp, daddr=POD1, dport=8080)
        assert maps6.v4.drop_counts() == {}
    else:
        assert res.retval == TC_ACT_SHOT
        assert maps6.v4.drop_counts() == {"source_range": 1}
        assert gstat(maps6, abi.GlobalStat.SOURCE_RANGE_DROP) == 1
        assert list(maps6.ct6.keys(abi.Ct6Key)) == []


def _mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def flow_hash6(flow: pk.Flow) -> int:
    """The IPv6 flow hash as the brief defines it: each address's four raw network-order
    words read as host-order integers, then the raw ports, then the protocol."""
    h = maglev.FLOW_HASH_SEED
    for addr in (flow.saddr, flow.daddr):
        packed = ipaddress.IPv6Address(addr).packed
        for i in range(4):
            h = _mix32(h ^ int.from_bytes(packed[4 * i : 4 * i + 4], sys.byteorder))

    def be16(port: int) -> int:
        return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)

    h = _mix32(h ^ ((be16(flow.sport) << 16) | be16(flow.dport)))
    return _mix32(h ^ flow.proto)


def test_flow_hash6_is_not_the_ipv4_words_alone() -> None:
    a = flow_hash6(pk.Flow(pk.TCP, "fd00::1", CLUSTER_IP, 1, 80))
    b = flow_hash6(pk.Flow(pk.TCP, "fd01::1", CLUSTER_IP, 1, 80))
    assert a != b  # the first word counts too


MAGLEV_SIZE = 251


def test_maglev_choice_is_the_table_python_computes(maps6: Maps6, run: RunFn) -> None:
    backends = {50 + i: (f"fd00:10:244::{0x30 + i:x}", 8080) for i in range(5)}
    names = [f"[{a}]:{p}" for a, p in backends.values()]
    table = maglev.table(names, MAGLEV_SIZE)
    ids = list(backends)
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, backends, flags=abi.SvcFlag.MAGLEV)
    inner = map_create(MapType.ARRAY, 4, 4, MAGLEV_SIZE, "test_mg6", flags=TABLE_FLAGS)
    with PinnedMap("", fd=inner) as tbl:  # closes inner; the outer map keeps the table
        for slot, index in enumerate(table):
            tbl.update(ctypes.c_uint32(slot), ctypes.c_uint32(ids[index]))
        maps6.v4.maglev.update(ctypes.c_uint32(1), ctypes.c_uint32(inner))
    maps6.v4.config.update(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32(MAGLEV_SIZE))
    chosen = set()
    for sport in range(20000, 20200):
        flow = pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, sport, 80)
        expected = backends[ids[table[flow_hash6(flow) % MAGLEV_SIZE]]]
        assert dest_of(run(p6.frame6(flow)).data) == expected, sport
        chosen.add(expected)
    assert len(chosen) == 5


# --- fragments, pass-through, drops ------------------------------------------------


def test_fragments_passed_and_counted(services: Maps6, run: RunFn) -> None:
    tcp = p6.l4_segment6(TCP_FLOW, PAYLOAD)
    frames = [
        # first fragment (offset 0, more follow): the ports are there, still passed
        p6.ipv6(CLIENT, CLUSTER_IP, pk.TCP, tcp, ext=[(p6.FRAGMENT, p6.fragment_header(0, True))]),
        p6.ipv6(
            CLIENT, CLUSTER_IP, pk.TCP, b"rest....", ext=[(p6.FRAGMENT, p6.fragment_header(24))]
        ),
        # an atomic fragment (offset 0, M=0) is treated as a fragment too
        p6.ipv6(CLIENT, CLUSTER_IP, pk.TCP, tcp, ext=[(p6.FRAGMENT, p6.fragment_header())]),
        # after a hop-by-hop header
        p6.ipv6(
            CLIENT,
            CLUSTER_IP,
            pk.TCP,
            tcp,
            ext=[(p6.HOPOPTS, p6.options_header()), (p6.FRAGMENT, p6.fragment_header(0, True))],
        ),
    ]
    for ip in frames:
        frame = pk.ethernet(ip, pk.ETH_P_IPV6)
        res = run(frame)
        assert (res.retval, res.data) == (TC_ACT_OK, frame)
    assert gstat(services, abi.GlobalStat.FRAGMENT) == len(frames)
    assert gstat(services, abi.GlobalStat.NEW_FLOW) == 0
    assert list(services.ct6.keys(abi.Ct6Key)) == []


def _esp() -> bytes:
    """ESP to the ClusterIP whose SPI's bytes look like ports 40000 -> 80."""
    body = struct.pack("!HHI", 40000, 80, 1) + bytes(16)
    return pk.ethernet(p6.ipv6(CLIENT, CLUSTER_IP, p6.ESP, body), pk.ETH_P_IPV6)


def _truncated_tcp() -> bytes:
    """The IPv6 payload length claims more than the frame holds."""
    return p6.frame6(TCP_FLOW, PAYLOAD)[: pk.ETH_HLEN + p6.IP6_HLEN + 20 + 4]


def _short_tcp() -> bytes:
    """A TCP header cut short, with a consistent payload length."""
    return pk.ethernet(p6.ipv6(CLIENT, CLUSTER_IP, pk.TCP, bytes(12)), pk.ETH_P_IPV6)


UNTOUCHED = [
    ("neighbour-solicitation-for-service", p6.neighbour_solicitation(CLIENT, CLUSTER_IP)),
    ("neighbour-advertisement", p6.icmp6(POD1, CLIENT, 136, 0, bytes(20))),
    ("router-solicitation", p6.icmp6(CLIENT, "ff02::2", 133, 0, bytes(4))),
    ("echo-request-to-service", p6.icmp6(CLIENT, CLUSTER_IP, 128, 0, b"\0\1\0\1ping")),
    ("unknown-service", p6.frame6(pk.Flow(pk.TCP, CLIENT, "fd00:10:96::99", 40000, 80))),
    ("service-ip-other-port", p6.frame6(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 81))),
    ("service-port-other-proto", p6.frame6(pk.Flow(pk.UDP, CLIENT, CLUSTER_IP, 40000, 80))),
    ("reply-without-conntrack", p6.frame6(pk.Flow(pk.TCP, POD1, CLIENT, 8080, 40000))),
    ("esp", _esp()),
    (
        "no-next-header",
        pk.ethernet(p6.ipv6(CLIENT, CLUSTER_IP, p6.NO_NEXT, bytes(8)), pk.ETH_P_IPV6),
    ),
    (
        "five-extension-headers",
        p6.frame6(TCP_FLOW, ext=[(p6.DSTOPTS, p6.options_header())] * 5),
    ),
    ("truncated-payload-length", _truncated_tcp()),
    ("short-tcp-header", _short_tcp()),
    ("ipv4-ethertype-with-ipv6-inside", pk.ethernet(p6.frame6(TCP_FLOW)[pk.ETH_HLEN :])),
]


@pytest.mark.parametrize("frame", [f for _, f in UNTOUCHED], ids=[i for i, _ in UNTOUCHED])
def test_untouched(frame: bytes, services: Maps6, run: RunFn, run_egress: RunFn) -> None:
    services.v4.config.update(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32(1))
    for prog in (run, run_egress):
        res = prog(frame)
        assert (res.retval, res.data) == (TC_ACT_OK, frame)
    assert list(services.ct6.keys(abi.Ct6Key)) == []
    assert services.v4.drop_counts() == {}


def test_local_policy_without_endpoints_drops(maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(8, CLUSTER_IP, 80, pk.TCP, {}, flags=abi.SvcFlag.DROP_EMPTY)
    assert run(p6.frame6(TCP_FLOW)).retval == TC_ACT_SHOT
    assert maps6.v4.drop_counts() == {"no_backend": 1}
    assert gstat(maps6, abi.GlobalStat.NO_BACKEND) == 1


def test_slot_naming_missing_backend_dropped(maps6: Maps6, run: RunFn) -> None:
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, {11: (POD1, 8080)})
    maps6.be6.delete(ctypes.c_uint32(11))
    assert run(p6.frame6(TCP_FLOW)).retval == TC_ACT_SHOT
    assert maps6.v4.drop_counts() == {"backend_missing": 1}


def test_ipv4_backend_id_is_not_an_ipv6_backend(maps6: Maps6, run: RunFn) -> None:
    """Ids are one space: a slot naming an IPv4 backend is missing for IPv6."""
    maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, {11: (POD1, 8080)})
    maps6.be6.delete(ctypes.c_uint32(11))
    maps6.v4.add_backend(1, 11, "10.244.0.11", 8080, pk.TCP)
    assert run(p6.frame6(TCP_FLOW)).retval == TC_ACT_SHOT


def test_flow_moves_when_its_backend_is_deleted(services: Maps6, run: RunFn) -> None:
    first = dest_of(run(p6.frame6(TCP_FLOW)).data)
    gone = next(i for i, b in TCP_BACKENDS.items() if b == first)
    kept = next(i for i in TCP_BACKENDS if i != gone)
    services.be6.delete(ctypes.c_uint32(gone))
    services.v4.set_slots(1, [kept])
    services.svc6.update(
        abi.Lb6Key(abi.addr6(CLUSTER_IP), abi.htons(80), pk.TCP),
        abi.Lb6Service(1, 1, abi.SvcFlag.CLUSTERIP, 0, abi.addr6("::")),
    )
    assert dest_of(run(p6.frame6(TCP_FLOW, tcp_flags=pk.TCP_ACK)).data) == TCP_BACKENDS[kept]
    assert gstat(services, abi.GlobalStat.RESELECT) == 1
    replies = {abi.unpack_addr6(k.saddr) for k, _ in services.ct_entries() if k.dir}
    assert replies == {ipaddress.IPv6Address(TCP_BACKENDS[kept][0])}


def test_ipv4_and_ipv6_side_by_side(services: Maps6, run: RunFn) -> None:
    """One program, both families: an IPv4 Service still translates beside IPv6 ones."""
    services.v4.add_service(3, "10.96.0.10", 80, pk.TCP, {61: ("10.244.0.11", 8080)})
    v4 = pk.frame(pk.Flow(pk.TCP, "10.244.1.200", "10.96.0.10", 40000, 80))
    assert run(v4).data == pk.rewritten(v4, daddr="10.244.0.11", dport=8080)
    v6 = p6.frame6(TCP_FLOW)
    assert_translated(v6, run(v6).data, TCP_BACKENDS)
    assert gstat(services, abi.GlobalStat.NEW_FLOW) == 2
