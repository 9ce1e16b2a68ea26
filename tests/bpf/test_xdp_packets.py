"""Packet tables through the XDP program (BPF_PROG_TEST_RUN): input frame -> XDP
action -> output frame, on the tc program's pinned maps.

The FIB look-up the program makes runs in the caller's network namespace, so every run
happens in a thread that has entered a scratch namespace with an uplink (a veth whose
peer stays there), routes and permanent neighbours: the redirects are real look-ups,
and the expected MAC addresses are the neighbour's and the uplink's own."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import LoadedProgram
from ebpflb.dataplane.bpf.syscall import TestRunResult, prog_test_run
from ebpflb.dataplane.bpf.xdp import LoadedXdp, compile_xdp, write_targets
from ebpflb.lab import netns
from tests.bpf import packets as pk
from tests.bpf import packets6 as p6
from tests.bpf.conftest import MAX_BACKENDS, MAX_CONNTRACK, MAX_SERVICES, Maps
from tests.bpf.maps6 import Maps6

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4

NODE = "192.168.50.1"
CLIENT = "192.168.50.100"
ROUTER = "192.168.50.2"  # the next hop to node 2's pods
UNRESOLVED = "192.168.50.3"  # a next hop with no neighbour entry
POD_REMOTE = "10.244.1.11"  # on node 2, via ROUTER
POD_NO_NEIGH = "10.244.2.11"  # via UNRESOLVED
CLUSTER_IP = "10.96.0.10"
NODE_PORT = 30080
ROUTER_MAC = "02:00:00:00:00:02"
CLIENT_MAC = "02:00:00:00:00:64"

NODE6 = "fd00:192:168:50::1"
CLIENT6 = "fd00:192:168:50::65"
ROUTER6 = "fd00:192:168:50::2"
POD6_REMOTE = "fd00:10:244:1::b"


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def fib_ns() -> Iterator[str]:
    """A namespace with uplink up0 (node 192.168.50.1), node 2's pods behind ROUTER,
    permanent neighbours for ROUTER and CLIENT (none for UNRESOLVED), forwarding on."""
    ns = f"ebpflb-xdpt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ip(ns, "link", "set", "lo", "up")
        _ip(ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
        _ip(ns, "link", "set", "up0p", "up")
        _ip(ns, "link", "set", "up0", "address", "02:00:00:00:00:01", "up")
        _ip(ns, "addr", "add", f"{NODE}/24", "dev", "up0")
        _ip(ns, "-6", "addr", "add", f"{NODE6}/64", "dev", "up0", "nodad")
        _ip(ns, "route", "add", "10.244.1.0/24", "via", ROUTER)
        _ip(ns, "route", "add", "10.244.2.0/24", "via", UNRESOLVED)
        _ip(ns, "-6", "route", "add", "fd00:10:244:1::/64", "via", ROUTER6)
        for addr, mac in ((ROUTER, ROUTER_MAC), (CLIENT, CLIENT_MAC), (ROUTER6, ROUTER_MAC),
                          (CLIENT6, CLIENT_MAC)):  # fmt: skip
            _ip(ns, "neigh", "add", addr, "lladdr", mac, "dev", "up0", "nud", "permanent")
        for key in ("net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", key], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def xdp(program: LoadedProgram) -> Iterator[LoadedXdp]:
    """The XDP program on the tc program's pinned maps."""
    prog = compile_xdp(
        pin_dir=program.pin_dir,
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        max_conntrack=MAX_CONNTRACK,
    )
    try:
        yield prog
    finally:
        prog.close()


def _in_ns(ns: str, fn: Callable[..., object], *args: object) -> object:
    """fn(*args) in a thread that has entered ns (setns moves one thread only)."""
    out: list[object] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with netns.enter(ns):
                out.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def _read_ifindex(name: str) -> int:
    import socket

    return socket.if_nametoindex(name)


RunXdp = Callable[[bytes], TestRunResult]


@pytest.fixture
def listed(maps: Maps, fib_ns: str) -> int:
    """up0's ifindex, listed in ebpflb_xdpdev (the agent's job): redirects allowed."""
    index = int(str(_in_ns(fib_ns, _read_ifindex, "up0")))
    write_targets(maps.pin_dir, [index])
    return index


@pytest.fixture
def run_xdp(xdp: LoadedXdp, fib_ns: str, maps: Maps) -> RunXdp:
    write_targets(maps.pin_dir, [])
    for family in (4, 6):  # the kept look-ups of earlier tests, this tick
        xdp.bpf[f"ebpflb_fibc{family}".encode()].clear()

    def run(frame: bytes) -> TestRunResult:
        result = _in_ns(fib_ns, prog_test_run, xdp.fd, frame)
        assert isinstance(result, TestRunResult)
        return result

    return run


def add_nodeport(
    maps: Maps,
    backends: dict[int, tuple[str, int]],
    *,
    proto: int = pk.TCP,
    flags: int = abi.SvcFlag.NODEPORT,
    snat: str = NODE,
    svc_id: int = 1,
    addr: str = NODE,
    port: int = NODE_PORT,
) -> None:
    """A frontend (a NodePort by default, source-NATed to the node: policy Cluster)."""
    maps.add_service(svc_id, addr, port, proto, backends)
    maps.svc4.update(
        abi.Lb4Key(abi.pack_ip4(addr), abi.htons(port), proto),
        abi.Lb4Service(svc_id, len(backends), flags, 0, abi.pack_ip4(snat) if snat else 0),
    )


def ttl(frame: bytes) -> int:
    return frame[pk.ETH_HLEN + 8]


def macs(frame: bytes) -> tuple[str, str]:
    return frame[0:6].hex(":"), frame[6:12].hex(":")


CLIENT_FLOW = pk.Flow(pk.TCP, CLIENT, NODE, 40000, NODE_PORT)


def test_nodeport_new_flow_is_translated_and_redirected(
    maps: Maps, run_xdp: RunXdp, listed: int
) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})
    res = run_xdp(pk.frame(CLIENT_FLOW, b"hello"))
    assert res.retval == XDP_REDIRECT
    out = pk.parse(res.data)
    assert (out.saddr, out.daddr, out.dport) == (NODE, POD_REMOTE, 8080)
    assert abi.NAT_PORT_MIN <= out.sport < abi.NAT_PORT_MIN + abi.NAT_PORT_COUNT
    assert pk.checksum_errors(res.data) == []
    assert ttl(res.data) == 63
    assert macs(res.data) == (ROUTER_MAC, "02:00:00:00:00:01")
    # the same conntrack entries as the tc path writes
    keys = {(k.dir, str(ipaddress.IPv4Address(k.saddr.to_bytes(4, "little")))) for k in
            maps.ct4.keys(abi.Ct4Key)}  # fmt: skip
    assert keys == {(abi.CtDir.SERVICE, CLIENT), (abi.CtDir.REPLY, POD_REMOTE)}
    assert maps.gstat_value(abi.GlobalStat.NEW_FLOW) == 1
    assert maps.gstat_value(abi.GlobalStat.SNAT) == 1
    assert maps.gstat_value(abi.GlobalStat.XDP_FORWARD) == 1


def test_conntrack_hit_keeps_backend_and_nat_port(maps: Maps, run_xdp: RunXdp, listed: int) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 8080), 22: ("10.244.1.12", 8080)})
    first = pk.parse(run_xdp(pk.frame(CLIENT_FLOW)).data)
    for _ in range(5):
        res = run_xdp(pk.frame(CLIENT_FLOW, b"more", tcp_flags=pk.TCP_ACK))
        assert res.retval == XDP_REDIRECT
        again = pk.parse(res.data)
        assert (again.daddr, again.sport) == (first.daddr, first.sport)
        assert pk.checksum_errors(res.data) == []
    assert maps.gstat_value(abi.GlobalStat.CT_HIT) == 5
    assert maps.gstat_value(abi.GlobalStat.XDP_FORWARD) == 6


def test_remote_backend_reply_is_reverse_translated(
    maps: Maps, run_xdp: RunXdp, listed: int
) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})
    fwd = pk.parse(run_xdp(pk.frame(CLIENT_FLOW)).data)
    reply = pk.Flow(pk.TCP, POD_REMOTE, NODE, 8080, fwd.sport)
    res = run_xdp(pk.frame(reply, b"answer", tcp_flags=pk.TCP_SYN | pk.TCP_ACK))
    assert res.retval == XDP_REDIRECT
    out = pk.parse(res.data)
    assert out.flow == pk.Flow(pk.TCP, NODE, CLIENT, NODE_PORT, 40000)
    assert pk.checksum_errors(res.data) == []
    assert macs(res.data) == (CLIENT_MAC, "02:00:00:00:00:01")
    assert maps.gstat_value(abi.GlobalStat.XDP_REPLY) == 1


def test_udp_zero_checksum_stays_zero(maps: Maps, run_xdp: RunXdp, listed: int) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 5353)}, proto=pk.UDP)
    flow = pk.Flow(pk.UDP, CLIENT, NODE, 40000, NODE_PORT)
    res = run_xdp(pk.frame(flow, b"q", udp_zero_csum=True))
    assert res.retval == XDP_REDIRECT
    assert pk.parse(res.data).l4_csum == 0
    assert pk.checksum_errors(res.data, udp_zero_allowed=True) == []
    res = run_xdp(pk.frame(pk.Flow(pk.UDP, CLIENT, NODE, 40001, NODE_PORT), b"q"))
    assert pk.checksum_errors(res.data) == []


def test_unlisted_interface_goes_translated_to_the_stack(
    maps: Maps, run_xdp: RunXdp, xdp: LoadedXdp
) -> None:
    """No redirect target listed (a native veth): translated, TTL and MACs untouched,
    the next frame too, from the kept look-up."""
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})
    frame = pk.frame(CLIENT_FLOW)
    res = run_xdp(frame)
    assert res.retval == XDP_PASS
    out = pk.parse(res.data)
    assert (out.daddr, out.dport, out.saddr) == (POD_REMOTE, 8080, NODE)
    assert pk.checksum_errors(res.data) == [] and ttl(res.data) == 64
    assert res.data[:12] == frame[:12]
    assert maps.gstat_value(abi.GlobalStat.XDP_FIB_PASS) == 1
    assert [k.a.ifindex for k in kept_lookups(xdp)] == [0]
    res = run_xdp(pk.frame(CLIENT_FLOW, tcp_flags=pk.TCP_ACK))
    assert res.retval == XDP_PASS and ttl(res.data) == 64
    assert maps.gstat_value(abi.GlobalStat.XDP_FIB_PASS) == 2


def kept_lookups(xdp: LoadedXdp, family: int = 4) -> list[Any]:
    """The FIB look-ups the program keeps (ebpflb_fibc4 or 6), over every CPU."""
    table = xdp.bpf[f"ebpflb_fibc{family}".encode()]
    return [v for per_cpu in table.values() for v in per_cpu if v.jiffies]


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def test_fib_answer_is_kept_for_the_next_frames(
    maps: Maps, run_xdp: RunXdp, listed: int, xdp: LoadedXdp
) -> None:
    """The look-up's answer is kept per CPU for the tick it was made in: the flow's
    next frames (and its reply's, a look-up of their own) leave by the same hop."""
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})
    first = run_xdp(pk.frame(CLIENT_FLOW))
    kept = kept_lookups(xdp)
    assert [(k.a.ifindex, bytes(k.a.dmac), bytes(k.a.smac)) for k in kept] == [
        (listed, _mac(ROUTER_MAC), _mac("02:00:00:00:00:01"))
    ]
    assert kept[0].t.daddr == int.from_bytes(ipaddress.IPv4Address(POD_REMOTE).packed, "little")
    for _ in range(3):
        res = run_xdp(pk.frame(CLIENT_FLOW, tcp_flags=pk.TCP_ACK))
        assert res.retval == XDP_REDIRECT and res.data[:12] == first.data[:12]
        assert pk.checksum_errors(res.data) == [] and ttl(res.data) == 63
    reply = pk.Flow(pk.TCP, POD_REMOTE, NODE, 8080, pk.parse(first.data).sport)
    res = run_xdp(pk.frame(reply, tcp_flags=pk.TCP_ACK))
    assert res.retval == XDP_REDIRECT and macs(res.data)[0] == CLIENT_MAC


def test_frame_longer_than_the_kept_one_is_looked_up_again(
    maps: Maps, run_xdp: RunXdp, listed: int, fib_ns: str, xdp: LoadedXdp
) -> None:
    """A kept answer holds for frames up to the length it was looked up with: a longer
    one is looked up again, and one over the path's MTU is the stack's (ICMP)."""
    add_nodeport(maps, {21: (POD_REMOTE, 5353)}, proto=pk.UDP)
    flow = pk.Flow(pk.UDP, CLIENT, NODE, 40000, NODE_PORT)

    def both() -> list[TestRunResult]:  # back to back: the same tick
        return [prog_test_run(xdp.fd, pk.frame(flow, b"q" * n)) for n in (1, 1600)]

    runs = _in_ns(fib_ns, both)
    assert isinstance(runs, list)
    small, big = runs
    assert small.retval == XDP_REDIRECT
    assert big.retval == XDP_PASS and ttl(big.data) == 64
    assert pk.parse(big.data).daddr == POD_REMOTE
    assert maps.gstat_value(abi.GlobalStat.XDP_FIB_PASS) == 1


def test_neighbour_change_reaches_xdp_a_tick_later(
    maps: Maps, run_xdp: RunXdp, listed: int, fib_ns: str, xdp: LoadedXdp
) -> None:
    """On one CPU (the cache is per CPU), a kept answer is not used past its tick."""
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})

    def on_cpu0(frame: bytes) -> TestRunResult:
        os.sched_setaffinity(0, {0})  # this thread only
        return prog_test_run(xdp.fd, frame)

    first = _in_ns(fib_ns, on_cpu0, pk.frame(CLIENT_FLOW))
    assert isinstance(first, TestRunResult) and macs(first.data)[0] == ROUTER_MAC
    moved = "02:00:00:00:00:22"
    _ip(fib_ns, "neigh", "replace", ROUTER, "lladdr", moved, "dev", "up0", "nud", "permanent")
    try:
        time.sleep(0.05)  # 12 ticks at HZ=250, 50 at 1000
        res = _in_ns(fib_ns, on_cpu0, pk.frame(CLIENT_FLOW, tcp_flags=pk.TCP_ACK))
        assert isinstance(res, TestRunResult)
        assert res.retval == XDP_REDIRECT and macs(res.data)[0] == moved
    finally:
        _ip(fib_ns, "neigh", "replace", ROUTER, "lladdr", ROUTER_MAC, "dev", "up0", "nud",
            "permanent")  # fmt: skip


def test_no_neighbour_goes_translated_to_the_stack(
    maps: Maps, run_xdp: RunXdp, listed: int
) -> None:
    add_nodeport(maps, {21: (POD_NO_NEIGH, 8080)})
    res = run_xdp(pk.frame(CLIENT_FLOW))
    assert res.retval == XDP_PASS
    assert pk.parse(res.data).daddr == POD_NO_NEIGH
    assert pk.checksum_errors(res.data) == [] and ttl(res.data) == 64
    assert maps.gstat_value(abi.GlobalStat.XDP_FIB_PASS) == 1


def test_source_range_outsider_is_dropped(maps: Maps, run_xdp: RunXdp, listed: int) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 8080)},
                 flags=abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES)  # fmt: skip
    maps.src_ranges.update(
        abi.SrcRange4Key(32 + 24, 1, abi.pack_ip4("203.0.113.0")), ctypes.c_uint8(1)
    )
    assert run_xdp(pk.frame(CLIENT_FLOW)).retval == XDP_DROP
    assert maps.drop_count(abi.DropReason.SOURCE_RANGE) == 1
    inside = pk.Flow(pk.TCP, "203.0.113.7", NODE, 40000, NODE_PORT)
    assert run_xdp(pk.frame(inside)).retval in (XDP_REDIRECT, XDP_PASS)
    assert maps.gstat_value(abi.GlobalStat.NEW_FLOW) == 1


def _pass_cases() -> list[tuple[str, bytes]]:
    return [
        ("ip options", pk.frame(CLIENT_FLOW, options=b"\x01\x01\x01\x01")),
        ("fragment", pk.frame(CLIENT_FLOW, more_fragments=True)),
        ("arp", pk.arp_request()),
        ("clusterip", pk.frame(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80))),
        ("no service", pk.frame(pk.Flow(pk.TCP, CLIENT, NODE, 40000, 22))),
        ("ipv6 extension header", p6.frame6(pk.Flow(pk.TCP, CLIENT6, NODE6, 40000, NODE_PORT),
                                            ext=[(p6.DSTOPTS, p6.options_header(8))])),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "frame"), _pass_cases(), ids=[c[0] for c in _pass_cases()])
def test_what_xdp_leaves_to_tc_passes_untouched(
    maps: Maps, maps6: Maps6, run_xdp: RunXdp, listed: int, name: str, frame: bytes
) -> None:
    add_nodeport(maps, {21: (POD_REMOTE, 8080)})
    add_nodeport(maps, {23: (POD_REMOTE, 8080)}, flags=abi.SvcFlag.CLUSTERIP, snat="",
                 svc_id=2, addr=CLUSTER_IP, port=80)  # fmt: skip
    maps6.add_service(3, NODE6, NODE_PORT, pk.TCP, {24: (POD6_REMOTE, 8080)},
                      flags=abi.SvcFlag.NODEPORT, snat=NODE6)  # fmt: skip
    res = run_xdp(frame)
    assert res.retval == XDP_PASS
    assert res.data == frame
    assert list(maps.ct4.keys(abi.Ct4Key)) == [] and maps6.ct_entries() == []


def test_service_without_endpoints_is_left_to_tc(maps: Maps, run_xdp: RunXdp) -> None:
    add_nodeport(maps, {})
    frame = pk.frame(CLIENT_FLOW)
    res = run_xdp(frame)
    assert (res.retval, res.data) == (XDP_PASS, frame)


def test_ipv6_nodeport_new_flow_and_reply(
    maps: Maps, maps6: Maps6, run_xdp: RunXdp, listed: int, xdp: LoadedXdp
) -> None:
    maps6.add_service(3, NODE6, NODE_PORT, pk.TCP, {24: (POD6_REMOTE, 8080)},
                      flags=abi.SvcFlag.NODEPORT, snat=NODE6)  # fmt: skip
    flow = pk.Flow(pk.TCP, CLIENT6, NODE6, 40000, NODE_PORT)
    res = run_xdp(p6.frame6(flow, b"hello"))
    assert res.retval == XDP_REDIRECT
    out = p6.parse6(res.data)
    assert (out.saddr, out.daddr, out.dport) == (NODE6, POD6_REMOTE, 8080)
    assert p6.checksum_errors6(res.data) == []
    assert res.data[pk.ETH_HLEN + 7] == 63  # hop limit
    assert macs(res.data) == (ROUTER_MAC, "02:00:00:00:00:01")
    reply = pk.Flow(pk.TCP, POD6_REMOTE, NODE6, 8080, out.sport)
    res = run_xdp(p6.frame6(reply, b"answer", tcp_flags=pk.TCP_SYN | pk.TCP_ACK))
    assert res.retval == XDP_REDIRECT
    assert p6.parse6(res.data).flow == pk.Flow(pk.TCP, NODE6, CLIENT6, NODE_PORT, 40000)
    assert p6.checksum_errors6(res.data) == []
    assert maps.gstat_value(abi.GlobalStat.XDP_FORWARD) == 1
    assert maps.gstat_value(abi.GlobalStat.XDP_REPLY) == 1
    # both look-ups kept; the flow's next frame leaves by the kept hop
    assert sorted(bytes(k.a.dmac) for k in kept_lookups(xdp, 6)) == sorted(
        [_mac(ROUTER_MAC), _mac(CLIENT_MAC)]
    )
    res = run_xdp(p6.frame6(flow, b"more", tcp_flags=pk.TCP_ACK))
    assert res.retval == XDP_REDIRECT and macs(res.data)[0] == ROUTER_MAC
    assert p6.checksum_errors6(res.data) == []


def test_tc_carries_a_flow_xdp_started(
    maps: Maps, run_xdp: RunXdp, listed: int, program: LoadedProgram
) -> None:
    """Either program can carry any packet of a flow: tc's ingress finds XDP's entry."""
    add_nodeport(maps, {21: (POD_REMOTE, 8080), 22: ("10.244.1.12", 8080)})
    first = pk.parse(run_xdp(pk.frame(CLIENT_FLOW)).data)
    res = prog_test_run(program.fd, pk.frame(CLIENT_FLOW, tcp_flags=pk.TCP_ACK))
    out = pk.parse(res.data)
    assert (out.daddr, out.sport) == (first.daddr, first.sport)
    assert maps.gstat_value(abi.GlobalStat.CT_HIT) == 1
    assert struct.unpack("!H", res.data[12:14])[0] == pk.ETH_P_IP
