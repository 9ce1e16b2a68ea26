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

pytestmark = pytest.mark.root

CLIENT = "10.99.0.1"
CLUSTER_IP = "10.96.0.10"
BACKEND = "10.99.0.2"
GATEWAY_MAC = "02:00:00:00:00:02"
ETH_P_ALL = 0x0003


@pytest.fixture
def veth_ns(program: LoadedProgram) -> Iterator[str]:
    """A namespace with veth0 (CLIENT) and its peer, the frontend and the backend
    reachable through veth0, and the tc program at egress of veth0."""
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


def _sent_to(sock: socket.socket, dport: int) -> bytes:
    """The first IPv4 frame on the capture socket sent to dport (within 5 s)."""
    for _ in range(200):
        ready, _, _ = select.select([sock], [], [], 5.0)
        if not ready:
            break
        frame = sock.recv(65535)
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        if struct.unpack("!H", frame[14 + ihl + 2 : 14 + ihl + 4])[0] == dport:
            return frame
    raise AssertionError(f"no frame to port {dport} seen on veth0")


def _pseudo_sum(frame: bytes) -> tuple[int, int]:
    """(the L4 checksum field, the pseudo-header sum of the frame's addresses), both
    as ones'-complement values folded to 16 bits (0xffff taken as 0)."""
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    length = struct.unpack("!H", ip[2:4])[0] - ihl
    at = ihl + (16 if proto == pk.TCP else 6)
    (field,) = struct.unpack("!H", ip[at : at + 2])
    pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, length)
    total = sum(struct.unpack("!6H", pseudo))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return field % 0xFFFF, total % 0xFFFF


@pytest.mark.parametrize("proto", [pk.TCP, pk.UDP], ids=["tcp", "udp"])
def test_partial_checksum_holds_the_new_pseudo_header(proto: int, maps: Maps, veth_ns: str) -> None:
    maps.add_service(1, CLUSTER_IP, 80, proto, {1: (BACKEND, 8080)})
    with contextlib.closing(_capture(veth_ns)) as cap:
        kind = socket.SOCK_STREAM if proto == pk.TCP else socket.SOCK_DGRAM
        with contextlib.closing(netns.socket_in(veth_ns, socket.AF_INET, kind)) as s:
            s.setblocking(False)
            if proto == pk.TCP:
                with contextlib.suppress(BlockingIOError):
                    s.connect((CLUSTER_IP, 80))
            else:
                s.sendto(b"query", (CLUSTER_IP, 80))
            frame = _sent_to(cap, 8080)
    parsed = pk.parse(frame)
    assert (parsed.daddr, parsed.dport) == (BACKEND, 8080)
    field, pseudo = _pseudo_sum(frame)
    assert field == pseudo, f"L4 checksum field {field:#06x}, pseudo-header sum {pseudo:#06x}"
