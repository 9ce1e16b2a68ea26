"""The IPv6 half of packets.py: Ethernet/IPv6 frames with extension headers, TCP/UDP
segments with their pseudo-header checksums, and the parser and checker the IPv6
packet tables compare the program's output with.

Every byte is written here, as packets.py does for IPv4. IPv6 has no header checksum:
only the TCP/UDP one (over a pseudo-header of the two 16-byte addresses, the upper-layer
length and the next header) is checked.
"""

from __future__ import annotations

import ipaddress
import struct

from tests.bpf.packets import ETH_HLEN, ETH_P_IPV6, TCP, TCP_SYN, UDP, Flow, Parsed, ethernet
from tests.bpf.packets import inet_csum as inet_csum

HOPOPTS = 0
ROUTING = 43
FRAGMENT = 44
ESP = 50
ICMPV6 = 58
NO_NEXT = 59
DSTOPTS = 60
EXT_TYPES = (HOPOPTS, ROUTING, DSTOPTS)
IP6_HLEN = 40

ND_NEIGHBOR_SOLICIT = 135


def _a(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def pseudo6(saddr: bytes, daddr: bytes, proto: int, length: int) -> bytes:
    """The IPv6 pseudo-header (RFC 8200 8.1)."""
    return saddr + daddr + struct.pack("!IxxxB", length, proto)


def l4_segment6(
    flow: Flow,
    payload: bytes = b"",
    *,
    tcp_flags: int = TCP_SYN,
    udp_zero_csum: bool = False,
    seq: int = 1000,
) -> bytes:
    """A TCP (no options) or UDP header plus payload, with its checksum over IPv6."""
    src, dst = _a(flow.saddr), _a(flow.daddr)
    if flow.proto == TCP:
        seg = struct.pack(
            "!HHIIBBHHH", flow.sport, flow.dport, seq, 0, 5 << 4, tcp_flags, 65535, 0, 0
        )
        seg += payload
        csum = inet_csum(pseudo6(src, dst, TCP, len(seg)) + seg)
        return seg[:16] + struct.pack("!H", csum) + seg[18:]
    if flow.proto == UDP:
        length = 8 + len(payload)
        seg = struct.pack("!HHHH", flow.sport, flow.dport, length, 0) + payload
        csum = 0 if udp_zero_csum else inet_csum(pseudo6(src, dst, UDP, length) + seg) or 0xFFFF
        return seg[:6] + struct.pack("!H", csum) + seg[8:]
    return payload


def options_header(size: int = 8) -> bytes:
    """A hop-by-hop or destination options header of `size` bytes (a multiple of 8)
    after its next-header byte: its length, then one PadN option filling it."""
    return bytes([size // 8 - 1, 1, size - 4]) + b"\0" * (size - 4)


def fragment_header(offset: int = 0, more: bool = False, ident: int = 0x1234) -> bytes:
    """A fragment header's body after its next-header byte."""
    return struct.pack("!BHI", 0, (offset // 8) << 3 | int(more), ident)


def ipv6(
    saddr: str,
    daddr: str,
    proto: int,
    l4: bytes,
    *,
    ext: list[tuple[int, bytes]] | None = None,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 header, then the extension headers ext ((type, body after the
    next-header byte) each, in order), then l4 (of upper-layer protocol proto)."""
    ext = ext or []
    chain = b""
    for i, (_, body) in enumerate(ext):
        nxt = ext[i + 1][0] if i + 1 < len(ext) else proto
        chain += bytes([nxt]) + body
    first = ext[0][0] if ext else proto
    hdr = struct.pack("!IHBB", 6 << 28, len(chain) + len(l4), first, hop_limit)
    return hdr + _a(saddr) + _a(daddr) + chain + l4


def frame6(
    flow: Flow,
    payload: bytes = b"",
    *,
    ext: list[tuple[int, bytes]] | None = None,
    tcp_flags: int = TCP_SYN,
    udp_zero_csum: bool = False,
) -> bytes:
    """An Ethernet frame carrying flow's IPv6 packet."""
    l4 = l4_segment6(flow, payload, tcp_flags=tcp_flags, udp_zero_csum=udp_zero_csum)
    return ethernet(ipv6(flow.saddr, flow.daddr, flow.proto, l4, ext=ext), ETH_P_IPV6)


def icmp6(saddr: str, daddr: str, icmp_type: int, code: int, body: bytes) -> bytes:
    """An Ethernet frame with an ICMPv6 message (checksum over the pseudo-header)."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + body
    csum = inet_csum(pseudo6(_a(saddr), _a(daddr), ICMPV6, len(msg)) + msg)
    msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    return ethernet(ipv6(saddr, daddr, ICMPV6, msg, hop_limit=255), ETH_P_IPV6)


def neighbour_solicitation(saddr: str, target: str) -> bytes:
    """A neighbour solicitation for target, to its solicited-node multicast address."""
    t = ipaddress.IPv6Address(target).packed
    snm = str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + t[13:]))
    return icmp6(saddr, snm, ND_NEIGHBOR_SOLICIT, 0, b"\0\0\0\0" + t)


def _upper_layer(data: bytes) -> tuple[int, int]:
    """(upper-layer protocol, its offset in data) after the extension headers."""
    nxt, off = data[ETH_HLEN + 6], ETH_HLEN + IP6_HLEN
    while nxt in EXT_TYPES:
        nxt, off = data[off], off + (data[off + 1] + 1) * 8
    return nxt, off


def parse6(data: bytes) -> Parsed:
    """The rewritable fields of an Ethernet/IPv6(/extensions)/TCP/UDP frame."""
    proto, off = _upper_layer(data)
    sport, dport = struct.unpack("!HH", data[off : off + 4])
    csum_at = off + (16 if proto == TCP else 6)
    (l4_csum,) = struct.unpack("!H", data[csum_at : csum_at + 2])
    ip = data[ETH_HLEN:]
    return Parsed(
        proto,
        str(ipaddress.IPv6Address(ip[8:24])),
        str(ipaddress.IPv6Address(ip[24:40])),
        sport,
        dport,
        l4_csum,
    )


def checksum_errors6(data: bytes) -> list[str]:
    """What is wrong with the TCP/UDP checksum of an IPv6 frame (empty: valid)."""
    proto, off = _upper_layer(data)
    (payload_len,) = struct.unpack("!H", data[ETH_HLEN + 4 : ETH_HLEN + 6])
    seg = data[off : ETH_HLEN + IP6_HLEN + payload_len]
    ip = data[ETH_HLEN:]
    if proto == UDP and struct.unpack("!H", seg[6:8])[0] == 0:
        return ["UDP checksum 0 (not allowed over IPv6)"]
    if inet_csum(pseudo6(ip[8:24], ip[24:40], proto, len(seg)) + seg) != 0:
        return [f"{'TCP' if proto == TCP else 'UDP'} checksum"]
    return []


def rewritten6(
    data: bytes,
    *,
    saddr: str | None = None,
    daddr: str | None = None,
    sport: int | None = None,
    dport: int | None = None,
) -> bytes:
    """data with the given addresses/ports replaced and the L4 checksum recomputed from
    scratch: what a correct translation produces, byte for byte."""
    p = parse6(data)
    proto, off = _upper_layer(data)
    out = bytearray(data)
    new_s, new_d = _a(saddr or p.saddr), _a(daddr or p.daddr)
    out[ETH_HLEN + 8 : ETH_HLEN + 24] = new_s
    out[ETH_HLEN + 24 : ETH_HLEN + 40] = new_d
    out[off : off + 4] = struct.pack(
        "!HH", p.sport if sport is None else sport, p.dport if dport is None else dport
    )
    csum_at = off + (16 if proto == TCP else 6)
    out[csum_at : csum_at + 2] = b"\0\0"
    csum = inet_csum(pseudo6(new_s, new_d, proto, len(out) - off) + bytes(out[off:]))
    if proto == UDP and csum == 0:
        csum = 0xFFFF
    out[csum_at : csum_at + 2] = struct.pack("!H", csum)
    return bytes(out)
