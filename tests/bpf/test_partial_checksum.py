"""The rewrite of a packet whose checksum is CHECKSUM_PARTIAL (offloaded: a local
sender's packet on a veth, what every pod sends), which BPF_PROG_TEST_RUN cannot make:
its L4 checksum field must hold the pseudo-header sum of the new addresses and nothing
else, since the ports and payload are summed in when the checksum is completed. Within
one machine no one completes it (a PARTIAL packet is taken as verified), so real
traffic would pass with a wrong field; the field is read here instead.

The tc program is attached at egress of a veth in a namespace of the test's own, where
a UDP datagram and a TCP SYN are sent to a ClusterIP; a packet socket on the veth sees
each after the program (taps come after the egress hook) and before any completion."""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.bpf.attach import TcAttacher
from ebpflb.dataplane.bpf.loader import LoadedProgram
from ebpflb.lab import netns
from tests.bpf import packets as pk
from tests.bpf.conftest import Maps
from tests.bpf.maps6 import Maps6

pytestmark = pytest.mark.root

CLIENT = "10.99.0.1"
CLUSTER_IP = "10.96.0.10"
BACKEND = "10.99.0.2"
GATEWAY_MAC = "02:00:00:00:00:02"
CLIENT6 = "fd00:99::1"
CLUSTER_IP6 = "fd00:96::a"
BACKEND6 = "fd00:99::2"
ETH_P_ALL = 0x0003


@pytest.fixture
def veth_ns(program: LoadedProgram) -> Iterator[str]:
    """A namespace with veth0 (CLIENT, CLIENT6) and its peer, the frontends and the
    backends reachable through veth0, and the tc program at egress of veth0."""
    ns = f"ebpflb-pc-{secrets.token_hex(3)}"
    netns.create(ns)
    try:
        netns.ip_batch(
            ns,
            [
                "link add veth0 type veth peer name veth1",
                f"addr add {CLIENT}/24 dev veth0",
                "link set veth0 up",
                "link set veth1 up",
                "link set lo up",
                "route add 10.96.0.0/16 dev veth0",
                f"neigh replace {CLUSTER_IP} lladdr {GATEWAY_MAC} dev veth0 nud permanent",
                f"neigh replace {BACKEND} lladdr {GATEWAY_MAC} dev veth0 nud permanent",
                f"addr add {CLIENT6}/64 dev veth0 nodad",
                "route add fd00:96::/64 dev veth0",
                f"neigh replace {CLUSTER_IP6} lladdr {GATEWAY_MAC} dev veth0 nud permanent",
                f"neigh replace {BACKEND6} lladdr {GATEWAY_MAC} dev veth0 nud permanent",
            ],
        )
        attacher = TcAttacher(program.fd, netns=ns, egress_fd=program.fd)
        try:
            attacher.attach("veth0", egress=True)
        finally:
            attacher.close()
        yield ns
    finally:
        netns.delete(ns)  # the veths and their filters go with it


def _capture(ns: str) -> socket.socket:
    sock = netns.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("veth0", ETH_P_ALL))
    return sock


def _sent_to(sock: socket.socket, ethertype: bytes, l4_at: int, dport: int) -> bytes:
    """The first frame of ethertype on the capture socket sent to dport (within 5 s);
    l4_at: where its TCP/UDP header starts."""
    for _ in range(200):
        ready, _, _ = select.select([sock], [], [], 5.0)
        if not ready:
            break
        frame = sock.recv(65535)
        if len(frame) < 14 + l4_at + 4 or frame[12:14] != ethertype:
            continue
        if ethertype == b"\x08\x00":
            l4_at = (frame[14] & 0x0F) * 4
        if struct.unpack("!H", frame[14 + l4_at + 2 : 14 + l4_at + 4])[0] == dport:
            return frame
    raise AssertionError(f"no frame to port {dport} seen on veth0")


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total % 0xFFFF  # 0xffff and 0 are the same ones'-complement value


def _field_and_pseudo(frame: bytes) -> tuple[int, int]:
    """(the L4 checksum field, the pseudo-header sum of the frame's addresses), both
    folded to 16 bits."""
    ip = frame[14:]
    if ip[0] >> 4 == 6:
        hlen, proto, length = 40, ip[6], struct.unpack("!H", ip[4:6])[0]
        addrs = ip[8:40]
    else:
        hlen, proto = (ip[0] & 0x0F) * 4, ip[9]
        length = struct.unpack("!H", ip[2:4])[0] - hlen
        addrs = ip[12:20]
    at = hlen + (16 if proto == pk.TCP else 6)
    (field,) = struct.unpack("!H", ip[at : at + 2])
    words = addrs + struct.pack("!IHBB", length, 0, 0, proto)
    return _fold(field), _fold(sum(struct.unpack(f"!{len(words) // 2}H", words)))


def _send(ns: str, family: int, proto: int, addr: str) -> None:
    kind = socket.SOCK_STREAM if proto == pk.TCP else socket.SOCK_DGRAM
    with contextlib.closing(netns.socket_in(ns, family, kind)) as s:
        s.setblocking(False)
        if proto == pk.TCP:
            with contextlib.suppress(BlockingIOError):
                s.connect((addr, 80))
        else:
            s.sendto(b"query", (addr, 80))


@pytest.mark.parametrize("proto", [pk.TCP, pk.UDP], ids=["tcp", "udp"])
def test_partial_checksum_holds_the_new_pseudo_header(proto: int, maps: Maps, veth_ns: str) -> None:
    maps.add_service(1, CLUSTER_IP, 80, proto, {1: (BACKEND, 8080)})
    with contextlib.closing(_capture(veth_ns)) as cap:
        _send(veth_ns, socket.AF_INET, proto, CLUSTER_IP)
        frame = _sent_to(cap, b"\x08\x00", 20, 8080)
    parsed = pk.parse(frame)
    assert (parsed.daddr, parsed.dport) == (BACKEND, 8080)
    field, pseudo = _field_and_pseudo(frame)
    assert field == pseudo, f"L4 checksum field {field:#06x}, pseudo-header sum {pseudo:#06x}"


@pytest.mark.parametrize("proto", [pk.TCP, pk.UDP], ids=["tcp", "udp"])
def test_partial_checksum_holds_the_new_pseudo_header_ipv6(
    proto: int, maps6: Maps6, veth_ns: str
) -> None:
    maps6.add_service(1, CLUSTER_IP6, 80, proto, {1: (BACKEND6, 8080)})
    with contextlib.closing(_capture(veth_ns)) as cap:
        _send(veth_ns, socket.AF_INET6, proto, CLUSTER_IP6)
        frame = _sent_to(cap, b"\x86\xdd", 40, 8080)
    assert socket.inet_ntop(socket.AF_INET6, frame[14 + 24 : 14 + 40]) == BACKEND6
    field, pseudo = _field_and_pseudo(frame)
    assert field == pseudo, f"L4 checksum field {field:#06x}, pseudo-header sum {pseudo:#06x}"
