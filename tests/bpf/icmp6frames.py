"""IPv6 frames for the ICMPv6 error and reject packet tables: TCP/UDP segments, ICMPv6
errors quoting a packet, and checksum checks that recompute every sum from scratch
(the IPv6 pseudo-header of RFC 8200 8.1 included), plus a handle on the IPv6 maps the
tests fill directly. Built by hand, as packets.py is, so every byte is visible; beside
packets6.py (the lb6 tables') for what those lack: acknowledgment numbers, quotes."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import struct
from dataclasses import dataclass

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import open_map
from ebpflb.dataplane.bpf.syscall import PinnedMap
from tests.bpf import packets as pk
from tests.bpf.packets6 import pseudo6

ICMPV6 = 58
IP6_HLEN = 40
DSTOPTS = 60
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROB = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_PORT_UNREACH = 4
IPV6_MIN_MTU = 1280
CT_DIR_REPLY = 1  # consts.h


def a6(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def ipv6(
    saddr: str, daddr: str, nexthdr: int, payload: bytes, *, hop_limit: int = 64, ext: bytes = b""
) -> bytes:
    """An IPv6 header (and ext, a destination options header, when given) before payload."""
    first = DSTOPTS if ext else nexthdr
    hdr = struct.pack("!IHBB", 6 << 28, len(ext) + len(payload), first, hop_limit)
    return hdr + a6(saddr) + a6(daddr) + ext + payload


def dstopts(nexthdr: int) -> bytes:
    """An 8-byte destination options header holding one PadN option."""
    return struct.pack("!BB", nexthdr, 0) + bytes([1, 4, 0, 0, 0, 0])


def segment6(
    flow: pk.Flow,
    payload: bytes = b"",
    *,
    tcp_flags: int = pk.TCP_SYN,
    seq: int = 1000,
    ack: int = 0,
) -> bytes:
    """A TCP (no options) or UDP header plus payload, with its IPv6 checksum."""
    src, dst = a6(flow.saddr), a6(flow.daddr)
    if flow.proto == pk.TCP:
        hdr = struct.pack(
            "!HHIIBBHHH", flow.sport, flow.dport, seq, ack, 5 << 4, tcp_flags, 65535, 0, 0
        )
        seg = hdr + payload
        csum = pk.inet_csum(pseudo6(src, dst, pk.TCP, len(seg)) + seg)
        return seg[:16] + struct.pack("!H", csum) + seg[18:]
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", flow.sport, flow.dport, length, 0) + payload
    csum = pk.inet_csum(pseudo6(src, dst, pk.UDP, length) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def frame6(
    flow: pk.Flow,
    payload: bytes = b"",
    *,
    tcp_flags: int = pk.TCP_SYN,
    seq: int = 1000,
    ack: int = 0,
    ext: bool = False,
) -> bytes:
    """An Ethernet frame carrying flow's IPv6 packet (with a destination options
    header before TCP/UDP when ext)."""
    seg = segment6(flow, payload, tcp_flags=tcp_flags, seq=seq, ack=ack)
    opts = dstopts(flow.proto) if ext else b""
    return pk.ethernet(ipv6(flow.saddr, flow.daddr, flow.proto, seg, ext=opts), pk.ETH_P_IPV6)


def icmp6_message(
    saddr: str, daddr: str, icmp_type: int, code: int, rest: bytes, body: bytes
) -> bytes:
    """An ICMPv6 message (type, code, checksum, 4 bytes of `rest`, body) with its
    checksum over the pseudo-header."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    csum = pk.inet_csum(pseudo6(a6(saddr), a6(daddr), ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def icmp6_error(
    sender: str,
    receiver: str,
    quoted: bytes,
    *,
    icmp_type: int = ICMP6_DEST_UNREACH,
    code: int = ICMP6_PORT_UNREACH,
    rest: bytes = b"\0\0\0\0",
) -> bytes:
    """An Ethernet frame with an ICMPv6 error from sender to receiver quoting the IPv6
    packet of the frame `quoted`, as much of it as fits in the minimum MTU (as Linux
    quotes)."""
    quote = quoted[pk.ETH_HLEN :][: IPV6_MIN_MTU - IP6_HLEN - 8]
    msg = icmp6_message(sender, receiver, icmp_type, code, rest, quote)
    return pk.ethernet(ipv6(sender, receiver, ICMPV6, msg), pk.ETH_P_IPV6)


def requoted(frame: bytes, *, saddr: str, daddr: str, sport: int, dport: int) -> bytes:
    """frame's IPv6 packet (no extension headers) with its addresses and ports replaced
    and nothing else: its TCP/UDP checksum is the old one, as a quote keeps it."""
    pkt = bytearray(frame)
    ip = pk.ETH_HLEN
    pkt[ip + 8 : ip + 24] = a6(saddr)
    pkt[ip + 24 : ip + 40] = a6(daddr)
    pkt[ip + 40 : ip + 44] = struct.pack("!HH", sport, dport)
    return bytes(pkt)


@dataclass(frozen=True)
class Ip6:
    """The fixed IPv6 header of a frame and what follows it."""

    saddr: str
    daddr: str
    nexthdr: int
    hop_limit: int
    payload: bytes  # as long as payload_len says


def parse_ip6(data: bytes) -> Ip6:
    ip = data[pk.ETH_HLEN :]
    vtc, plen, nexthdr, hop_limit = struct.unpack("!IHBB", ip[:8])
    assert vtc >> 28 == 6
    assert len(ip) >= IP6_HLEN + plen, "payload length beyond the frame"
    return Ip6(
        str(ipaddress.IPv6Address(ip[8:24])),
        str(ipaddress.IPv6Address(ip[24:40])),
        nexthdr,
        hop_limit,
        ip[IP6_HLEN : IP6_HLEN + plen],
    )


def l4_checksum_ok(data: bytes) -> bool:
    """Is the TCP/UDP/ICMPv6 checksum of an IPv6 frame (no extension headers) right,
    recomputed over its pseudo-header and the whole upper-layer message?"""
    ip = parse_ip6(data)
    pseudo = pseudo6(a6(ip.saddr), a6(ip.daddr), ip.nexthdr, len(ip.payload))
    return pk.inet_csum(pseudo + ip.payload) == 0


@dataclass
class Maps6:
    """The IPv6 maps of the program under test, emptied before each test."""

    svc6: PinnedMap
    be6: PinnedMap
    rnat6: PinnedMap
    ct6: PinnedMap

    def clear(self) -> None:
        for m, key_type in (
            (self.svc6, abi.Lb6Key),
            (self.ct6, abi.Ct6Key),
            (self.be6, ctypes.c_uint32),
            (self.rnat6, ctypes.c_uint32),
        ):
            for key in list(m.keys(key_type)):
                m.delete(key)

    def close(self) -> None:
        for m in (self.svc6, self.be6, self.rnat6, self.ct6):
            m.close()

    def set_rnat(self, svc_id: int, addr: str, port: int) -> None:
        self.rnat6.update(ctypes.c_uint32(svc_id), abi.Lb6Rnat(abi.addr6(addr), abi.htons(port)))

    def set_service(
        self, svc_id: int, addr: str, port: int, proto: int, count: int, flags: int
    ) -> None:
        self.svc6.update(
            abi.Lb6Key(abi.addr6(addr), abi.htons(port), proto),
            abi.Lb6Service(svc_id, count, flags),
        )

    def track_reply(
        self,
        flow: pk.Flow,
        svc_id: int,
        *,
        frontend: tuple[str, int],
        peer: tuple[str, int] | None = None,
    ) -> None:
        """A REPLY conntrack entry for flow (backend -> client, or -> NAT address),
        naming the frontend and, for a source-NATed flow, the client as peer."""
        key = abi.Ct6Key(
            abi.addr6(flow.saddr),
            abi.addr6(flow.daddr),
            abi.htons(flow.sport),
            abi.htons(flow.dport),
            flow.proto,
            CT_DIR_REPLY,
        )
        value = abi.Ct6Value(
            backend_id=1,
            svc_id=svc_id,
            nat_address=abi.addr6(frontend[0]),
            nat_port=abi.htons(frontend[1]),
        )
        if peer:
            value.peer_address = abi.addr6(peer[0])
            value.peer_port = abi.htons(peer[1])
        self.ct6.update(key, value)


def open_maps6(pin_dir: str) -> Maps6:
    """The IPv6 maps pinned under pin_dir (close them after use)."""

    def m(name: str) -> PinnedMap:
        return open_map(os.path.join(pin_dir, name))

    return Maps6(
        m(abi.MAP_SERVICES6), m(abi.MAP_BACKENDS6), m(abi.MAP_REVNAT6), m(abi.MAP_CONNTRACK6)
    )
