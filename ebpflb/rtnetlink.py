"""This network namespace's interfaces and their addresses, read over rtnetlink with a
plain ``socket`` (three dumps: links, addresses, routes), so that the agent can learn
its node's own addresses on the userspace data path too, where neither pyroute2 nor
bcc may be importable (STYLE: they stay inside ``dataplane/bpf`` and ``lab``).

Generic: what the interfaces are, never which of them a NodePort wants (``nodeaddrs``
decides that). The sockets answer for the namespace of the calling thread.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ebpflb.model import IPAddress

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 10, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_TABLE = 4, 15
RT_TABLE_MAIN, RTN_UNICAST = 254, 1
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope,
#                                       type, flags
RTATTR = struct.Struct("=HH")  # len, type
MAX_MESSAGES = 100_000  # a bound on one dump, far above any real namespace
RECV_SIZE = 1 << 16


@dataclass(frozen=True)
class Interface:
    """One interface of the namespace."""

    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND ("veth", "bridge", "vxlan"...); None: a physical NIC
    master: int | None  # the index of the bridge or bond it is enslaved to
    loopback: bool
    up: bool
    addresses: tuple[IPAddress, ...] = ()  # in the kernel's order
    default_route: bool = False  # the main table's default route leaves through it


def interfaces() -> tuple[Interface, ...]:
    """Every interface of the caller's network namespace, by index; raises ``OSError``."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        links = [
            _link(body)
            for body in _dump(
                sock, RTM_GETLINK, RTM_NEWLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            )
        ]
        addresses: dict[int, list[IPAddress]] = {}
        for body in _dump(
            sock, RTM_GETADDR, RTM_NEWADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        ):
            index, address = _address(body)
            if address is not None:
                addresses.setdefault(index, []).append(address)
        # Either family's default route names a primary interface (an IPv6-only node
        # has no IPv4 one).
        default = {
            oif
            for family in (socket.AF_INET, socket.AF_INET6)
            for body in _dump(
                sock, RTM_GETROUTE, RTM_NEWROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            )
            if (oif := _default_route_oif(body)) is not None
        }
    return tuple(
        Interface(
            index,
            name,
            kind,
            master,
            bool(flags & IFF_LOOPBACK),
            bool(flags & IFF_UP),
            tuple(addresses.get(index, ())),
            index in default,
        )
        for index, name, kind, master, flags in sorted(links)
    )


def _dump(sock: socket.socket, request: int, reply: int, payload: bytes) -> Iterator[bytes]:
    """The bodies of the ``reply`` messages of one dump request."""
    seq = int.from_bytes(os.urandom(4), "little")
    sock.send(
        NLMSGHDR.pack(NLMSGHDR.size + len(payload), request, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        + payload
    )
    for _ in range(MAX_MESSAGES):
        data = sock.recv(RECV_SIZE)
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size:
                raise OSError(f"rtnetlink: malformed message of {length} bytes")
            body = data[offset + NLMSGHDR.size : offset + length]
            offset += _align(length)
            if got_seq != seq:
                continue
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", body)
                if code:
                    raise OSError(-code, f"rtnetlink dump {request}: {os.strerror(-code)}")
                continue
            if kind == reply:
                yield body
    raise OSError(f"rtnetlink dump {request}: no end after {MAX_MESSAGES} reads")


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The route attributes from ``offset`` on, by type (the first of each type)."""
    found: dict[int, bytes] = {}
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        found.setdefault(kind & NLA_TYPE_MASK, data[offset + RTATTR.size : offset + length])
        offset += _align(length)
    return found


def _link(body: bytes) -> tuple[int, str, str | None, int | None, int]:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body)
    attrs = _attributes(body, IFINFOMSG.size)
    name = _string(attrs.get(IFLA_IFNAME, b"")) or f"if{index}"
    info = attrs.get(IFLA_LINKINFO)
    kind = _string(_attributes(info, 0).get(IFLA_INFO_KIND, b"")) if info else ""
    master = struct.unpack("=I", attrs[IFLA_MASTER][:4])[0] if IFLA_MASTER in attrs else 0
    return index, name, kind or None, master or None, flags


def _address(body: bytes) -> tuple[int, IPAddress | None]:
    family, _prefix, _flags, _scope, index = IFADDRMSG.unpack_from(body)
    attrs = _attributes(body, IFADDRMSG.size)
    # IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a
    # point-to-point link); IPv6 has IFA_ADDRESS only.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if raw is None or size is None or len(raw) != size:
        return index, None
    return index, ipaddress.ip_address(raw)


def _default_route_oif(body: bytes) -> int | None:
    _fam, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = RTMSG.unpack_from(body)
    attrs = _attributes(body, RTMSG.size)
    if RTA_TABLE in attrs:  # tables above 255 are only here
        table = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
    if dst_len or table != RT_TABLE_MAIN or kind != RTN_UNICAST or RTA_OIF not in attrs:
        return None
    return int(struct.unpack("=I", attrs[RTA_OIF][:4])[0])


def _string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _align(length: int) -> int:
    return (length + 3) & ~3
