"""Packet tables for the Service features beyond plain ClusterIP: source NAT of external
traffic (NodePort under externalTrafficPolicy: Cluster) and of hairpin flows, ClientIP
session affinity, loadBalancerSourceRanges, ICMP errors about translated flows, the
egress hook, and Maglev."""

from __future__ import annotations

import ctypes
import functools
import ipaddress
from collections.abc import Iterator

import pytest

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import compile_program
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.dataplane.bpf.syscall import prog_test_run
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import IPAddress, Protocol
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf import packets as pk
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn
from tests.unit.test_plan import entry, state

pytestmark = pytest.mark.root

CLIENT = "10.244.0.200"
CLUSTER_IP = "10.96.0.10"
NODE_IP = "192.168.50.1"
NODE_PORT = 30080
OUTSIDE = "192.168.50.101"
LB_IP = "192.168.60.10"
BACKENDS = {1: ("10.244.1.11", 8080), 2: ("10.244.1.12", 8080), 3: ("10.244.0.13", 8080)}
HAIRPIN = str(abi.HAIRPIN_ADDRESS)


def add(
    maps: Maps,
    svc_id: int,
    addr: str,
    port: int,
    proto: int,
    backends: dict[int, tuple[str, int]],
    *,
    flags: int = abi.SvcFlag.CLUSTERIP,
    affinity: int = 0,
    snat: str | None = None,
) -> None:
    maps.add_service(svc_id, addr, port, proto, backends)
    maps.svc4.update(
        abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto),
        abi.Lb4Service(svc_id, len(backends), flags, affinity, abi.pack_ip4(snat) if snat else 0),
    )


def in_nat_range(port: int) -> bool:
    return abi.NAT_PORT_MIN <= port < abi.NAT_PORT_MIN + abi.NAT_PORT_COUNT


# --- source NAT: NodePort under externalTrafficPolicy: Cluster -------------------------


@pytest.mark.parametrize("proto", [pk.TCP, pk.UDP], ids=["tcp", "udp"])
def test_nodeport_is_source_natted_and_the_reply_goes_back(
    maps: Maps, run: RunFn, proto: int
) -> None:
    add(maps, 1, NODE_IP, NODE_PORT, proto, BACKENDS, flags=abi.SvcFlag.NODEPORT, snat=NODE_IP)
    flow = pk.Flow(proto, OUTSIDE, NODE_IP, 40000, NODE_PORT)
    inp = pk.frame(flow, b"hello")
    res = run(inp)
    assert res.retval == TC_ACT_OK
    out = pk.parse(res.data)
    assert (out.daddr, out.dport) in BACKENDS.values()
    assert out.saddr == NODE_IP and in_nat_range(out.sport)
    assert pk.checksum_errors(res.data) == []
    assert res.data == pk.rewritten(
        inp, saddr=NODE_IP, sport=out.sport, daddr=out.daddr, dport=out.dport
    )
    # the next packet of the flow keeps its backend and its NAT port
    again = pk.parse(run(pk.frame(flow, b"more", tcp_flags=pk.TCP_ACK)).data)
    assert (again.daddr, again.dport, again.sport) == (out.daddr, out.dport, out.sport)

    reply = pk.frame(out.flow.reversed(), b"answer", tcp_flags=pk.TCP_SYN | pk.TCP_ACK)
    back = run(reply)
    assert back.retval == TC_ACT_OK
    assert pk.parse(back.data).flow == flow.reversed()
    assert pk.checksum_errors(back.data) == []
    assert back.data == pk.rewritten(
        reply, saddr=NODE_IP, sport=NODE_PORT, daddr=OUTSIDE, dport=40000
    )
    assert maps.gstat_value(abi.GlobalStat.SNAT) == 1
    assert maps.gstat_value(abi.GlobalStat.REPLY) == 1


def test_without_snat_address_the_client_address_is_kept(maps: Maps, run: RunFn) -> None:
    """externalTrafficPolicy: Local: no source NAT."""
    add(maps, 1, NODE_IP, NODE_PORT, pk.TCP, {3: BACKENDS[3]}, flags=abi.SvcFlag.NODEPORT)
    flow = pk.Flow(pk.TCP, OUTSIDE, NODE_IP, 40000, NODE_PORT)
    out = pk.parse(run(pk.frame(flow)).data)
    assert (out.saddr, out.sport) == (OUTSIDE, 40000)
    assert (out.daddr, out.dport) == BACKENDS[3]
    back = pk.parse(run(pk.frame(out.flow.reversed())).data)
    assert back.flow == flow.reversed()
    assert maps.gstat_value(abi.GlobalStat.SNAT) == 0


def test_nat_ports_never_collide(roomy: tuple[Maps, RunFn]) -> None:
    """Many clients with the same source port to one backend: each flow gets its own
    NAT port (random starts collide often at this count, so the retry is exercised),
    and every reply finds its own client. In the roomy table: the session's holds
    600 entries in 256 buckets, and one run in six overfilled a bucket, whose
    least recently seen entry (a reply this test then asked for) gave way."""
    maps, run = roomy
    add(
        maps,
        1,
        NODE_IP,
        NODE_PORT,
        pk.UDP,
        {1: BACKENDS[1]},
        flags=abi.SvcFlag.NODEPORT,
        snat=NODE_IP,
    )
    ports: dict[int, str] = {}
    for i in range(300):
        client = f"192.168.{51 + i // 200}.{1 + i % 200}"
        res = run(pk.frame(pk.Flow(pk.UDP, client, NODE_IP, 5000, NODE_PORT)))
        assert res.retval == TC_ACT_OK
        port = pk.parse(res.data).sport
        assert port not in ports
        ports[port] = client
    for port, client in ports.items():
        reply = pk.frame(pk.Flow(pk.UDP, *BACKENDS[1][:1], NODE_IP, BACKENDS[1][1], port))
        assert pk.parse(run(reply).data).flow == pk.Flow(pk.UDP, NODE_IP, client, NODE_PORT, 5000)
    assert maps.gstat_value(abi.GlobalStat.NAT_PORT_FULL) == 0


@pytest.fixture
def roomy(bpffs: str) -> Iterator[tuple[Maps, RunFn]]:
    """The program with room for every NAT port's two entries: the session's 1,024
    conntrack entries would free ports by LRU eviction long before they ran out."""
    prog = compile_program(
        pin_dir=bpffs, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS,
        max_conntrack=4 * abi.NAT_PORT_COUNT,
    )  # fmt: skip
    maps = Maps.open(bpffs)
    try:
        yield maps, functools.partial(prog_test_run, prog.fd)
    finally:
        maps.close()
        prog.close()


def _fill_nat_ports(maps: Maps, run: RunFn, proto: int) -> None:
    """Every NAT port to one backend held: flows through the program until one finds
    none free among its tries, then the ports still free held by entries written as
    the program writes them (REPLY and SERVICE), so no new flow can find one."""
    add(maps, 1, NODE_IP, NODE_PORT, proto, {1: BACKENDS[1]}, flags=abi.SvcFlag.NODEPORT,
        snat=NODE_IP)  # fmt: skip
    for i in range(abi.NAT_PORT_COUNT):
        flow = pk.Flow(proto, f"172.16.{i // 250}.{1 + i % 250}", NODE_IP, 5000, NODE_PORT)
        if run(pk.frame(flow)).retval != TC_ACT_OK:
            break
    assert maps.gstat_value(abi.GlobalStat.NAT_PORT_FULL) > 0
    replies = [(k, v) for k, v in maps.ct4.items(abi.Ct4Key, abi.Ct4Value) if k.dir]
    held = {abi.ntohs(k.dport) for k, _ in replies}
    template = replies[0][1]
    for n, port in enumerate(sorted(set(range(abi.NAT_PORT_MIN, 65536)) - held)):
        client = abi.pack_ip4(f"172.17.{n // 250}.{1 + n % 250}")
        reply = abi.Ct4Value.from_buffer_copy(template)
        reply.peer_address = client
        key = abi.Ct4Key(replies[0][0].saddr, replies[0][0].daddr, replies[0][0].sport,
                         abi.htons(port), proto, abi.CtDir.REPLY)  # fmt: skip
        maps.ct4.update(key, reply)
        service = abi.Ct4Value.from_buffer_copy(template)
        service.peer_port = abi.htons(port)
        to_frontend = abi.Ct4Key(
            client, abi.pack_ip4(NODE_IP), abi.htons(5000), abi.htons(NODE_PORT), proto,
            abi.CtDir.SERVICE,
        )  # fmt: skip
        maps.ct4.update(to_frontend, service)


def _age_replies(maps: Maps, seconds: float, *, closing: bool) -> None:
    """Make every REPLY entry as if its last packet came ``seconds`` ago (and closed)."""
    for key, value in maps.ct4.items(abi.Ct4Key, abi.Ct4Value):
        if key.dir == abi.CtDir.REPLY:
            value.last_seen_ns -= int(seconds * 1e9)
            if closing:
                value.flags |= abi.CtFlag.CLOSING
            maps.ct4.update(key, value)


@pytest.mark.parametrize(
    ("proto", "closing", "seconds", "reused"),
    [
        (pk.UDP, False, 61, True),  # idle past UDP's 60 s
        (pk.UDP, False, 30, False),
        (pk.TCP, True, 61, True),  # closed longer than TIME_WAIT
        (pk.TCP, False, 61, False),  # an idle open TCP flow keeps its port (6 h)
    ],
    ids=["udp-idle", "udp-recent", "tcp-closed", "tcp-open-idle"],
)
def test_a_nat_port_is_taken_over_once_its_flow_is_over(
    roomy: tuple[Maps, RunFn], proto: int, closing: bool, seconds: float, reused: bool
) -> None:
    """REPLY entries are deleted by nothing but LRU eviction, so every NAT port to a
    backend once stayed held, and after 4,536 flows to it through one node each new flow
    was dropped (nat_port_full). A port is taken over once its flow is over."""
    maps, run = roomy
    _fill_nat_ports(maps, run, proto)
    _age_replies(maps, seconds, closing=closing)

    def services() -> int:
        return sum(k.dir == abi.CtDir.SERVICE for k, _ in maps.ct4.items(abi.Ct4Key, abi.Ct4Value))

    before = services()
    new = pk.Flow(proto, "10.9.9.9", NODE_IP, 6000, NODE_PORT)
    res = run(pk.frame(new))
    assert (res.retval == TC_ACT_OK) is reused
    if reused:
        port = pk.parse(res.data).sport
        # the port's old client lost its SERVICE entry (its next packet is a new flow
        # with a port of its own, never the new client's) and the new client has one
        assert services() == before
        reply = pk.frame(pk.Flow(proto, BACKENDS[1][0], NODE_IP, BACKENDS[1][1], port))
        assert pk.parse(run(reply).data).flow == new.reversed()


def test_fin_and_rst_mark_the_flow_closing_and_a_syn_reopens_it(maps: Maps, run: RunFn) -> None:
    add(maps, 1, NODE_IP, NODE_PORT, pk.TCP, {1: BACKENDS[1]}, flags=abi.SvcFlag.NODEPORT,
        snat=NODE_IP)  # fmt: skip
    flow = pk.Flow(pk.TCP, OUTSIDE, NODE_IP, 40000, NODE_PORT)
    out = pk.parse(run(pk.frame(flow)).data)

    def reply_flags() -> int:
        key = abi.Ct4Key(
            abi.pack_ip4(out.daddr),
            abi.pack_ip4(NODE_IP),
            abi.htons(out.dport),
            abi.htons(out.sport),
            pk.TCP,
            abi.CtDir.REPLY,
        )
        value = maps.ct4.lookup(key, abi.Ct4Value)
        assert value is not None
        return int(value.flags)

    assert not reply_flags() & abi.CtFlag.CLOSING
    run(pk.frame(flow, tcp_flags=pk.TCP_FIN | pk.TCP_ACK))  # the client's FIN
    assert reply_flags() & abi.CtFlag.CLOSING
    run(pk.frame(flow))  # a SYN opens the tuple again
    assert not reply_flags() & abi.CtFlag.CLOSING
    run(pk.frame(out.flow.reversed(), tcp_flags=pk.TCP_RST))  # the backend's RST
    assert reply_flags() & abi.CtFlag.CLOSING


# --- hairpin -------------------------------------------------------------------------------


def test_pod_reaching_itself_is_source_natted_to_the_hairpin_address(
    maps: Maps, run: RunFn
) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, {1: (CLIENT, 8080)})
    flow = pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80)
    res = run(pk.frame(flow))
    out = pk.parse(res.data)
    assert (out.daddr, out.dport) == (CLIENT, 8080)
    assert out.saddr == HAIRPIN and in_nat_range(out.sport)
    assert pk.checksum_errors(res.data) == []
    back = run(pk.frame(out.flow.reversed(), tcp_flags=pk.TCP_SYN | pk.TCP_ACK))
    assert pk.parse(back.data).flow == flow.reversed()
    assert pk.checksum_errors(back.data) == []
    assert maps.gstat_value(abi.GlobalStat.HAIRPIN) == 1


# --- session affinity ----------------------------------------------------------------------


def _backend(run: RunFn, client: str, sport: int) -> tuple[str, int]:
    out = pk.parse(run(pk.frame(pk.Flow(pk.TCP, client, CLUSTER_IP, sport, 80))).data)
    return out.daddr, out.dport


def test_affinity_keeps_a_client_on_one_backend(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, BACKENDS, affinity=10800)
    first = _backend(run, CLIENT, 20000)
    assert all(_backend(run, CLIENT, 20001 + i) == first for i in range(100))
    assert maps.gstat_value(abi.GlobalStat.AFFINITY_HIT) == 100
    # other clients are spread as usual
    others = {_backend(run, f"10.244.2.{i}", 20000) for i in range(1, 60)}
    assert others == set(BACKENDS.values())


def test_affinity_moves_after_the_timeout_or_when_the_backend_goes(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, BACKENDS, affinity=5)
    first = _backend(run, CLIENT, 20000)
    key = abi.Aff4Key(abi.pack_ip4(CLIENT), 1)
    entry = maps.affinity.lookup(key, abi.Aff4Value)
    assert entry is not None and BACKENDS[entry.backend_id] == first
    # last used long ago: expired, so new flows are spread again
    maps.affinity.update(key, abi.Aff4Value(1, entry.backend_id))
    seen = set()
    for i in range(60):
        maps.affinity.update(key, abi.Aff4Value(1, entry.backend_id))
        seen.add(_backend(run, CLIENT, 21000 + i))
    assert seen == set(BACKENDS.values())
    # the affinity backend leaves the slots (not ready): the client moves, and stays
    chosen = _backend(run, CLIENT, 22000)
    gone = next(i for i, b in BACKENDS.items() if b == chosen)
    live = [i for i in BACKENDS if i != gone]
    maps.add_backend(1, gone, *BACKENDS[gone], pk.TCP)  # still known, inactive
    maps.be4.update(
        ctypes.c_uint32(gone),
        abi.Lb4Backend(abi.pack_ip4(BACKENDS[gone][0]), abi.htons(BACKENDS[gone][1]), pk.TCP, 0, 1),
    )
    maps.set_slots(1, live)
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, {i: BACKENDS[i] for i in live}, affinity=5)
    moved = _backend(run, CLIENT, 22001)
    assert moved != chosen
    assert all(_backend(run, CLIENT, 22002 + i) == moved for i in range(20))


# --- loadBalancerSourceRanges --------------------------------------------------------------


def test_source_ranges_admit_only_their_clients(maps: Maps, run: RunFn) -> None:
    add(
        maps,
        1,
        LB_IP,
        80,
        pk.TCP,
        BACKENDS,
        flags=abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES,
        snat=NODE_IP,
    )
    maps.src_ranges.update(
        abi.SrcRange4Key(32 + 24, 1, abi.pack_ip4("192.168.50.0")), ctypes.c_uint8(1)
    )
    maps.src_ranges.update(
        abi.SrcRange4Key(32 + 32, 1, abi.pack_ip4("10.1.2.3")), ctypes.c_uint8(1)
    )
    for client in (OUTSIDE, "10.1.2.3"):
        res = run(pk.frame(pk.Flow(pk.TCP, client, LB_IP, 40000, 80)))
        assert res.retval == TC_ACT_OK and pk.parse(res.data).daddr != LB_IP
    for client in ("192.168.51.101", "10.1.2.4", CLIENT):
        assert run(pk.frame(pk.Flow(pk.TCP, client, LB_IP, 40000, 80))).retval == TC_ACT_SHOT
    assert maps.gstat_value(abi.GlobalStat.SOURCE_RANGE_DROP) == 3
    # another frontend's ranges do not count for this one
    add(
        maps,
        2,
        LB_IP,
        81,
        pk.TCP,
        BACKENDS,
        flags=abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES,
    )
    assert run(pk.frame(pk.Flow(pk.TCP, OUTSIDE, LB_IP, 40000, 81))).retval == TC_ACT_SHOT


# --- ICMP errors ---------------------------------------------------------------------------


def test_port_unreachable_from_a_backend_reaches_the_client_as_from_the_frontend(
    maps: Maps, run: RunFn
) -> None:
    add(maps, 1, CLUSTER_IP, 53, pk.UDP, BACKENDS)
    flow = pk.Flow(pk.UDP, CLIENT, CLUSTER_IP, 40000, 53)
    sent = run(pk.frame(flow, b"query")).data
    backend = pk.parse(sent).daddr
    err = run(pk.icmp_error(backend, CLIENT, sent))
    assert err.retval == TC_ACT_OK
    got = pk.parse_icmp_error(err.data)
    assert (got.saddr, got.daddr) == (CLUSTER_IP, CLIENT)
    assert got.quoted == flow
    assert pk.icmp_checksum_errors(err.data) == []
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 1


def test_icmp_error_of_a_source_natted_flow_goes_back_to_the_client(maps: Maps, run: RunFn) -> None:
    add(maps, 1, NODE_IP, NODE_PORT, pk.UDP, BACKENDS, flags=abi.SvcFlag.NODEPORT, snat=NODE_IP)
    flow = pk.Flow(pk.UDP, OUTSIDE, NODE_IP, 40000, NODE_PORT)
    sent = run(pk.frame(flow, b"query")).data
    # from a router between the node and the backend: its own address stays
    err = run(pk.icmp_error("10.9.9.1", NODE_IP, sent, icmp_type=11, code=0))
    got = pk.parse_icmp_error(err.data)
    assert (got.saddr, got.daddr) == ("10.9.9.1", OUTSIDE)
    assert got.quoted == flow
    assert pk.icmp_checksum_errors(err.data) == []


def test_icmp_error_of_an_unknown_flow_passes_untouched(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 53, pk.UDP, BACKENDS)
    quoted = pk.frame(pk.Flow(pk.UDP, CLIENT, "10.244.1.11", 40000, 8080))
    frame = pk.icmp_error("10.244.1.11", CLIENT, quoted)
    res = run(frame)
    assert res.retval == TC_ACT_OK and res.data == frame
    assert maps.gstat_value(abi.GlobalStat.ICMP_ERROR) == 0


# --- egress: replies of host-network backends -------------------------------------------


def test_egress_translates_replies_only_when_a_backend_is_a_node_address(
    maps: Maps, run: RunFn, run_egress: RunFn
) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, {1: (NODE_IP, 6443)})
    flow = pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80)
    run(pk.frame(flow))
    reply = pk.frame(
        pk.Flow(pk.TCP, NODE_IP, CLIENT, 6443, 40000), tcp_flags=pk.TCP_SYN | pk.TCP_ACK
    )
    assert run_egress(reply).data == reply  # switched off: one look-up, nothing else
    maps.config.update(ctypes.c_uint32(abi.Config.HOST_BACKENDS), ctypes.c_uint32(1))
    res = run_egress(reply)
    assert res.retval == TC_ACT_OK
    assert pk.parse(res.data).flow == flow.reversed()
    assert pk.checksum_errors(res.data) == []
    # a forward packet is never translated on egress
    fwd = pk.frame(flow)
    assert run_egress(fwd).data == fwd


def test_host_backends_switch_follows_the_plans(maps: Maps) -> None:
    from ebpflb.dataplane.bpf.hostbackends import HostBackends

    addresses = frozenset({ipaddress.IPv4Address(NODE_IP)})
    hb = HostBackends(maps.config, lambda: addresses)
    hb.housekeeping({})
    assert not hb.on
    pods = desired_frontends(state(entry(CLUSTER_IP, 80, [("10.244.1.11", 8080, True)])))
    host = desired_frontends(
        state(entry(CLUSTER_IP, 80, [(NODE_IP, 6443, True), ("10.244.1.11", 8080, True)]))
    )
    hb.applied(diff({}, pods))
    assert not hb.on
    hb.applied(diff(pods, host))
    assert hb.on and HostBackends(maps.config, lambda: addresses).on  # in the map
    hb.applied(diff(host, pods))
    assert hb.on  # off only once housekeeping has looked at everything held
    hb.housekeeping(pods)
    assert not hb.on


# --- Maglev ----------------------------------------------------------------------------------


def _maglev_writer(maps: Maps, backends: list[tuple[str, int, bool]]) -> tuple[BpfMaps, MapWriter]:
    bmaps = BpfMaps(maps.pin_dir)
    writer = MapWriter(
        bmaps, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, maglev_size=1021
    )
    writer.apply(diff(writer.frontends, desired_frontends(state(entry(CLUSTER_IP, 80, backends)))))
    maps.config.update(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32(1021))
    return bmaps, writer


def _maglev_pick(
    slots: tuple[tuple[IPAddress, int], ...], sport: int, frontend: str = CLUSTER_IP
) -> tuple[str, int]:
    table = maglev.table([f"{a}:{p}" for a, p in slots], 1021)
    h = maglev.flow_hash(
        ipaddress.IPv4Address(CLIENT), sport, ipaddress.IPv4Address(frontend), 80, Protocol.TCP
    )
    address, port = slots[table[h % 1021]]
    return str(address), port


def test_maglev_choice_is_the_table_python_computes(maps: Maps, run: RunFn) -> None:
    bmaps, writer = _maglev_writer(maps, [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)])
    try:
        (st,) = writer.frontends.values()
        chosen = set()
        for sport in range(20000, 20300):
            out = pk.parse(run(pk.frame(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, sport, 80))).data)
            assert (out.daddr, out.dport) == _maglev_pick(st.slots, sport)
            chosen.add(out.daddr)
        assert len(chosen) == 5
    finally:
        bmaps.close()


def test_maglev_moves_only_the_flows_of_a_backend_that_leaves(maps: Maps, run: RunFn) -> None:
    five = [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)]
    bmaps, writer = _maglev_writer(maps, five)
    try:
        flows = [pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, sport, 80) for sport in range(20000, 20400)]
        before = [pk.parse(run(pk.frame(f)).data).daddr for f in flows]
        four = five[:2] + five[3:]
        writer.apply(diff(writer.frontends, desired_frontends(state(entry(CLUSTER_IP, 80, four)))))
        for key in list(maps.ct4.keys(abi.Ct4Key)):  # as new flows, not tracked ones
            maps.ct4.delete(key)
        after = [pk.parse(run(pk.frame(f)).data).daddr for f in flows]
        stayed = [(b, a) for b, a in zip(before, after, strict=True) if b != "10.244.1.3"]
        assert sum(1 for b, a in stayed if a != b) <= len(stayed) * 0.05
        assert "10.244.1.3" not in after
    finally:
        bmaps.close()


def test_maglev_table_of_a_reused_frontend_id_is_rewritten(maps: Maps, run: RunFn) -> None:
    """A deleted frontend's table stays with its id (no RCU wait to remove it); the next
    frontend given that id gets its own table before its entry is written."""
    a = entry(CLUSTER_IP, 80, [("10.244.9.1", 8080, True)])
    b = entry("10.96.0.99", 80, [("10.244.9.2", 8080, True), ("10.244.9.3", 8080, True)])
    c = entry("10.96.0.50", 80, [(f"10.244.1.{i}", 8080, True) for i in range(4, 7)])
    bmaps, writer = _maglev_writer(maps, [("10.244.9.1", 8080, True)])
    try:
        writer.apply(diff(writer.frontends, desired_frontends(state(a, b))))
        writer.apply(diff(writer.frontends, desired_frontends(state(a))))  # b's id 2 freed
        restarted = MapWriter(
            bmaps, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, maglev_size=1021
        )
        restarted.apply(diff(restarted.frontends, desired_frontends(state(a, c))))
        assert restarted.svc_ids[c.frontend.key] == 2  # b's id, and its old table
        st = restarted.frontends[c.frontend.key]
        for sport in range(20000, 20100):
            out = pk.parse(run(pk.frame(pk.Flow(pk.TCP, CLIENT, "10.96.0.50", sport, 80))).data)
            assert (out.daddr, out.dport) == _maglev_pick(st.slots, sport, "10.96.0.50")
    finally:
        bmaps.close()
