"""A tiny Ethernet/IPv4/TCP/UDP packet builder and checker for the prog-test-run tables.

Written here rather than taken from scapy: the tests need a handful of header layouts,
correct checksums, and a few deliberate defects (IP options, fragments, truncation, a
UDP checksum of zero), and a reader should see every byte that goes in.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_HLEN = 14

ICMP = 1
TCP = 6
UDP = 17

IP_MF = 0x2000
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

DST_MAC = bytes.fromhex("020000000001")
SRC_MAC = bytes.fromhex("020000000002")


def inet_csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(payload: bytes, ethertype: int = ETH_P_IP) -> bytes:
    return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + payload


def _pseudo(saddr: bytes, daddr: bytes, proto: int, length: int) -> bytes:
    return saddr + daddr + struct.pack("!BBH", 0, proto, length)


@dataclass(frozen=True)
class Flow:
    """One direction of a TCP/UDP flow."""

    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int

    def reversed(self) -> Flow:
        return Flow(self.proto, self.daddr, self.saddr, self.dport, self.sport)


def l4_segment(
    flow: Flow,
    payload: bytes = b"",
    *,
    tcp_flags: int = TCP_SYN,
    udp_zero_csum: bool = False,
    seq: int = 1000,
    ack: int = 0,
) -> bytes:
    """A TCP (no options) or UDP header plus payload, with its checksum."""
    src = ipaddress.IPv4Address(flow.saddr).packed
    dst = ipaddress.IPv4Address(flow.daddr).packed
    if flow.proto == TCP:
        hdr = struct.pack(
            "!HHIIBBHHH", flow.sport, flow.dport, seq, ack, 5 << 4, tcp_flags, 65535, 0, 0
        )
        seg = hdr + payload
        csum = inet_csum(_pseudo(src, dst, TCP, len(seg)) + seg)
        return seg[:16] + struct.pack("!H", csum) + seg[18:]
    if flow.proto == UDP:
        length = 8 + len(payload)
        seg = struct.pack("!HHHH", flow.sport, flow.dport, length, 0) + payload
        csum = 0 if udp_zero_csum else inet_csum(_pseudo(src, dst, UDP, length) + seg) or 0xFFFF
        return seg[:6] + struct.pack("!H", csum) + seg[8:]
    return payload  # another protocol: the payload is the whole L4 part


def ipv4(
    flow: Flow,
    l4: bytes,
    *,
    options: bytes = b"",
    frag_offset: int = 0,
    more_fragments: bool = False,
    ident: int = 0x1234,
    ttl: int = 64,
) -> bytes:
    """An IPv4 header (options padded to 4 bytes) in front of l4, with its checksum."""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    frag = (IP_MF if more_fragments else 0) | (frag_offset // 8)
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(l4),
            ident,
            frag,
            ttl,
            flow.proto,
            0,
            ipaddress.IPv4Address(flow.saddr).packed,
            ipaddress.IPv4Address(flow.daddr).packed,
        )
        + options
    )
    csum = inet_csum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + l4


def frame(
    flow: Flow,
    payload: bytes = b"",
    *,
    options: bytes = b"",
    frag_offset: int = 0,
    more_fragments: bool = False,
    udp_zero_csum: bool = False,
    tcp_flags: int = TCP_SYN,
    seq: int = 1000,
    ack: int = 0,
) -> bytes:
    """An Ethernet frame carrying flow's packet."""
    l4 = l4_segment(
        flow, payload, tcp_flags=tcp_flags, udp_zero_csum=udp_zero_csum, seq=seq, ack=ack
    )
    return ethernet(
        ipv4(flow, l4, options=options, frag_offset=frag_offset, more_fragments=more_fragments)
    )


def arp_request() -> bytes:
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + SRC_MAC + bytes([10, 0, 0, 5])
    body += b"\0" * 6 + bytes([10, 96, 0, 10])
    return ethernet(body, ETH_P_ARP)


def ipv6_udp(sport: int = 40000, dport: int = 80) -> bytes:
    """An IPv6/UDP frame whose ports match a service: it must still pass untouched."""
    udp = struct.pack("!HHHH", sport, dport, 12, 0) + b"abcd"
    hdr = struct.pack("!IHBB", 6 << 28, len(udp), UDP, 64)
    hdr += ipaddress.IPv6Address("fd00::5").packed + ipaddress.IPv6Address("fd00::10").packed
    return ethernet(hdr + udp, ETH_P_IPV6)


@dataclass(frozen=True)
class Parsed:
    """The fields of an Ethernet/IPv4/TCP/UDP frame that the data path may rewrite."""

    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    l4_csum: int

    @property
    def flow(self) -> Flow:
        return Flow(self.proto, self.saddr, self.daddr, self.sport, self.dport)


def _ip_header_len(data: bytes) -> int:
    return (data[ETH_HLEN] & 0x0F) * 4


def parse(data: bytes) -> Parsed:
    ip = data[ETH_HLEN:]
    ihl = _ip_header_len(data)
    proto = ip[9]
    sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
    csum_at = ihl + (16 if proto == TCP else 6)
    (l4_csum,) = struct.unpack("!H", ip[csum_at : csum_at + 2])
    return Parsed(
        proto,
        str(ipaddress.IPv4Address(ip[12:16])),
        str(ipaddress.IPv4Address(ip[16:20])),
        sport,
        dport,
        l4_csum,
    )


def _ip_checked(data: bytes) -> tuple[bytes, int, bytes, list[str]]:
    """The IPv4 packet of a frame, its header length, its payload (as long as the
    header says), and ["IPv4 header checksum"] when that checksum is wrong."""
    ip = data[ETH_HLEN:]
    ihl = _ip_header_len(data)
    errors = [] if inet_csum(ip[:ihl]) == 0 else ["IPv4 header checksum"]
    total_len = struct.unpack("!H", ip[2:4])[0]
    return ip, ihl, ip[ihl:total_len], errors


def checksum_errors(data: bytes, *, udp_zero_allowed: bool = False) -> list[str]:
    """What is wrong with the IPv4 and TCP/UDP checksums of data (empty: all valid).
    A UDP checksum of 0 ("none") is accepted only when udp_zero_allowed."""
    ip, _, seg, errors = _ip_checked(data)
    proto = ip[9]
    pseudo = _pseudo(ip[12:16], ip[16:20], proto, len(seg))
    if proto == UDP and struct.unpack("!H", seg[6:8])[0] == 0:
        if not udp_zero_allowed:
            errors.append("UDP checksum 0 where the input had one")
    elif proto in (TCP, UDP) and inet_csum(pseudo + seg) != 0:
        errors.append(f"{'TCP' if proto == TCP else 'UDP'} checksum")
    return errors


def rewritten(
    data: bytes,
    *,
    saddr: str | None = None,
    daddr: str | None = None,
    sport: int | None = None,
    dport: int | None = None,
) -> bytes:
    """data with the given addresses/ports replaced and both checksums recomputed from
    scratch: what a correct translation must produce, byte for byte (a UDP checksum of
    0 stays 0)."""
    p = parse(data)
    flow = Flow(
        p.proto,
        saddr or p.saddr,
        daddr or p.daddr,
        p.sport if sport is None else sport,
        p.dport if dport is None else dport,
    )
    ihl = _ip_header_len(data)
    ip = data[ETH_HLEN:]
    seg = bytearray(ip[ihl:])
    seg[0:4] = struct.pack("!HH", flow.sport, flow.dport)
    csum_at = 16 if p.proto == TCP else 6
    keep_zero = p.proto == UDP and p.l4_csum == 0
    seg[csum_at : csum_at + 2] = b"\0\0"
    if not keep_zero:
        csum = inet_csum(
            _pseudo(
                ipaddress.IPv4Address(flow.saddr).packed,
                ipaddress.IPv4Address(flow.daddr).packed,
                p.proto,
                len(seg),
            )
            + bytes(seg)
        )
        if p.proto == UDP and csum == 0:
            csum = 0xFFFF
        seg[csum_at : csum_at + 2] = struct.pack("!H", csum)
    hdr = bytearray(ip[:ihl])
    hdr[12:16] = ipaddress.IPv4Address(flow.saddr).packed
    hdr[16:20] = ipaddress.IPv4Address(flow.daddr).packed
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", inet_csum(bytes(hdr)))
    return data[:ETH_HLEN] + bytes(hdr) + bytes(seg)


ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3


def icmp_error(
    sender: str,
    receiver: str,
    quoted: bytes,
    *,
    icmp_type: int = ICMP_DEST_UNREACH,
    code: int = ICMP_PORT_UNREACH,
) -> bytes:
    """An Ethernet frame with an ICMP error from sender to receiver quoting the IPv4
    packet `quoted` (an Ethernet frame; its IP header and first 8 L4 bytes are quoted,
    as a kernel does)."""
    quote = quoted[ETH_HLEN : ETH_HLEN + _ip_header_len(quoted) + 8]
    body = struct.pack("!BBHI", icmp_type, code, 0, 0) + quote
    body = body[:2] + struct.pack("!H", inet_csum(body)) + body[4:]
    return ethernet(ipv4(Flow(ICMP, sender, receiver, 0, 0), body))


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error frame: outer addresses, and the quoted packet's flow."""

    saddr: str
    daddr: str
    quoted: Flow


def parse_icmp_error(data: bytes) -> IcmpError:
    ip = data[ETH_HLEN:]
    ihl = _ip_header_len(data)
    inner = ip[ihl + 8 :]
    iihl = (inner[0] & 0x0F) * 4
    sport, dport = struct.unpack("!HH", inner[iihl : iihl + 4])
    quoted = Flow(
        inner[9],
        str(ipaddress.IPv4Address(inner[12:16])),
        str(ipaddress.IPv4Address(inner[16:20])),
        sport,
        dport,
    )
    return IcmpError(
        str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])), quoted
    )


def icmp_checksum_errors(data: bytes) -> list[str]:
    """What is wrong with an ICMP error frame's IP, ICMP and quoted IP checksums."""
    ip, ihl, seg, errors = _ip_checked(data)
    if inet_csum(seg) != 0:
        errors.append("ICMP checksum")
    inner = ip[ihl + 8 :]
    if inet_csum(inner[: (inner[0] & 0x0F) * 4]) != 0:
        errors.append("quoted IPv4 header checksum")
    return errors
