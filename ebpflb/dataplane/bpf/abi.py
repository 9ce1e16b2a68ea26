"""Python mirrors of bpf/lib/abi.h, consts.h and drop_reasons.h.

The one place that knows byte order and packing: addresses and ports are stored in
network byte order inside little-endian integers, so ``pack_ip4``/``htons`` convert.
tests/bpf/test_abi.py checks every struct here against the compiled C.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import struct
import sys

# Map names (<= 15 chars); each is pinned as PIN_DIR/<name>.
MAP_SERVICES = "ebpflb_svc4"
MAP_SLOTS = "ebpflb_slot4"
# _v2: arrays indexed by id, an all-zero entry for "none" (maps.IdArrayMap says why)
MAP_BACKENDS = "ebpflb_be4_v2"
MAP_REVNAT = "ebpflb_rnat4_v2"
MAP_CONNTRACK = "ebpflb_ct4_v3"  # _v3: buckets of cttable.h, not an LRU hash
MAP_SVC_STATS = "ebpflb_svcstat"
MAP_GLOBAL_STATS = "ebpflb_gstat_v3"
MAP_SVC_META = "ebpflb_svcmeta"
MAP_AFFINITY = "ebpflb_aff4"
MAP_SRC_RANGES = "ebpflb_srcr4"
MAP_CONFIG = "ebpflb_cfg"
MAP_MAGLEV = "ebpflb_mg4_v2"  # _v2: mmapable tables (maglevtables says why)
MAP_SOCK_NAT = "ebpflb_sknat4"
MAP_DROPS = "ebpflb_drops"
# IPv6 maps (bpf/lib/abi.h says why they are separate); ids are shared with IPv4's, so
# the slot, Maglev, stats and meta maps above serve both families.
MAP_SERVICES6 = "ebpflb_svc6"
MAP_BACKENDS6 = "ebpflb_be6_v2"
MAP_REVNAT6 = "ebpflb_rnat6_v2"
MAP_CONNTRACK6 = "ebpflb_ct6_v2"  # _v2: as MAP_CONNTRACK
MAP_AFFINITY6 = "ebpflb_aff6"
MAP_SRC_RANGES6 = "ebpflb_srcr6"
MAP_SOCK_NAT6 = "ebpflb_sknat6"
MAP_SOCK_NETNS = "ebpflb_sknetns"  # socket-LB for pods: netns cookie -> SkNetnsValue
MAP_XDP_DEVS = "ebpflb_xdpdev"  # ifindex -> 1: the interfaces XDP may redirect to
MAP_TAIL = "ebpflb_tail"  # TAIL_* -> the tc program's tail-called parts (ebpflb_tc6)
MAP_XDP_TAIL = "ebpflb_xtail"  # TAIL_* -> the XDP program's (ebpflb_xdp6)
ALL_MAPS = (
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_REVNAT,
    MAP_CONNTRACK,
    MAP_SVC_STATS,
    MAP_GLOBAL_STATS,
    MAP_SVC_META,
    MAP_AFFINITY,
    MAP_SRC_RANGES,
    MAP_CONFIG,
    MAP_MAGLEV,
    MAP_SOCK_NAT,
    MAP_DROPS,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_REVNAT6,
    MAP_CONNTRACK6,
    MAP_AFFINITY6,
    MAP_SRC_RANGES6,
    MAP_SOCK_NAT6,
    MAP_SOCK_NETNS,
    MAP_XDP_DEVS,
    MAP_TAIL,
    MAP_XDP_TAIL,
)
# Pins of older layouts (renamed when their layout changed): removed on cleanup and
# when the agent starts, so nothing reads or keeps them.
LEGACY_MAPS = (
    "ebpflb_ct4",
    "ebpflb_ct4_v2",
    "ebpflb_ct6",
    "ebpflb_gstat",
    "ebpflb_gstat_v2",
    "ebpflb_mg4",
    "ebpflb_be4",
    "ebpflb_rnat4",
    "ebpflb_be6",
    "ebpflb_rnat6",
)
# Conntrack LRU hashes whose entries are copied into the bucket tables that replaced them
# (cttable.migrate_conntrack), so established flows survive the upgrade.
CONNTRACK_MIGRATED = {"ebpflb_ct4_v2": MAP_CONNTRACK, "ebpflb_ct6": MAP_CONNTRACK6}
# Hash maps keyed by an id that became arrays indexed by it (same value layout): their
# entries are copied into the new map before the old pin goes (maps.migrate_legacy_pins),
# so live flows keep their backend ids across the upgrade.
ID_MAPS_MIGRATED = {
    "ebpflb_be4": MAP_BACKENDS,
    "ebpflb_rnat4": MAP_REVNAT,
    "ebpflb_be6": MAP_BACKENDS6,
    "ebpflb_rnat6": MAP_REVNAT6,
}
ID_ARRAY_MAPS = frozenset(ID_MAPS_MIGRATED.values())

# Socket-LB's BPF links are pinned beside the maps under this prefix (socklb.LINK_PINS).
LINK_PIN_PREFIX = "ebpflb_link_"

DEFAULT_PIN_DIR = "/sys/fs/bpf/ebpflb"
# 100,000 Services of 5 endpoints: 100,000 frontends, 500,000 backends and slots
DEFAULT_MAX_SERVICES = 131072
DEFAULT_MAX_BACKENDS = 524288
DEFAULT_MAX_CONNTRACK = 262144

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132


class SvcFlag(enum.IntFlag):
    """lb4_service.flags."""

    CLUSTERIP = 0x0001
    NODEPORT = 0x0002
    EXTERNAL = 0x0004
    LOADBALANCER = 0x0008
    SRC_RANGES = 0x0010
    DROP_EMPTY = 0x0020
    MAGLEV = 0x0040


class BackendFlag(enum.IntFlag):
    """lb4_backend.flags."""

    ACTIVE = 0x01
    TERMINATING = 0x02


class CtFlag(enum.IntFlag):
    """ct4_value.flags / ct6_value.flags."""

    CLOSING = 0x0001


class CtDir(enum.IntEnum):
    """ct4_key.dir."""

    SERVICE = 0
    REPLY = 1


class GlobalStat(enum.IntEnum):
    """Indexes of the ebpflb_gstat per-CPU array."""

    NEW_FLOW = 0
    CT_HIT = 1
    RESELECT = 2
    REPLY = 3
    NO_BACKEND = 4
    FRAGMENT = 5
    CT_FULL = 6
    BACKEND_MISSING = 7
    SOURCE_RANGE_DROP = 8
    SNAT = 9
    NAT_PORT_FULL = 10
    AFFINITY_HIT = 11
    HAIRPIN = 12
    ICMP_ERROR = 13
    REJECT = 14
    SOCK_LB = 15
    RESET = 16
    XDP_FORWARD = 17
    XDP_REPLY = 18
    XDP_FIB_PASS = 19


GSTAT_MAX = 32
NAT_PORT_MIN = 61000
NAT_PORT_COUNT = 4536
HAIRPIN_ADDRESS = ipaddress.IPv4Address("169.254.42.1")
HAIRPIN_ADDRESS6 = ipaddress.IPv6Address("fd65:6270:6c62::2a")  # consts.h HAIRPIN6_W*


class Config(enum.IntEnum):
    """Indexes of the ebpflb_cfg array (settings the agent writes)."""

    HOST_BACKENDS = 0
    MAGLEV_SIZE = 1
    NETNS_LO = 2
    NETNS_HI = 3


CFG_MAX = 4


class DropReason(enum.IntEnum):
    """drop_reasons.h: ebpflb_drops counts each at index -value; `ebpflb stats` names it
    by its name in lower case."""

    NO_BACKEND = -1
    BACKEND_MISSING = -2
    CT_FULL = -3
    WRITE = -4
    SOURCE_RANGE = -5
    NAT_PORT_FULL = -6


DROP_MAX = 16


class Lb4Key(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Lb4Service(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("affinity_timeout", ctypes.c_uint32),
        ("snat_address", ctypes.c_uint32),
    ]


class Lb4SlotKey(ctypes.Structure):
    _fields_ = [("svc_id", ctypes.c_uint32), ("slot", ctypes.c_uint32)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("svc_id", ctypes.c_uint32),
    ]


class Lb4Rnat(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Ct4Key(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class Ct4Value(ctypes.Structure):
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("backend_id", ctypes.c_uint32),
        ("svc_id", ctypes.c_uint32),
        ("nat_address", ctypes.c_uint32),
        ("nat_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("peer_address", ctypes.c_uint32),
        ("peer_port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


CT_WAYS = 8  # consts.h: entries per conntrack bucket
TAIL_IPV6 = 0  # consts.h: the IPv6 path's index in the entry programs' tail-call arrays
TAIL_MAX = 1


class CtHead(ctypes.Structure):
    _fields_ = [
        ("lock", ctypes.c_uint64),
        ("tags", ctypes.c_uint16 * CT_WAYS),
        ("seed", ctypes.c_uint32),
        ("pad", ctypes.c_uint32 * 9),
    ]


class Ct4Slot(ctypes.Structure):
    _fields_ = [("key", Ct4Key), ("value", Ct4Value)]


class Ct4Bucket(ctypes.Structure):
    _fields_ = [("head", CtHead), ("ways", Ct4Slot * CT_WAYS)]


class Aff4Key(ctypes.Structure):
    _fields_ = [("client", ctypes.c_uint32), ("svc_id", ctypes.c_uint32)]


class Aff4Value(ctypes.Structure):
    _fields_ = [
        ("last_ns", ctypes.c_uint64),
        ("backend_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class SkNat4Key(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class SkNat4Value(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class SrcRange4Key(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("svc_id", ctypes.c_uint32),
        ("address", ctypes.c_uint32),
    ]


class Addr6(ctypes.Structure):
    """An IPv6 address: 16 network-order bytes, seen as four words (abi.h addr6)."""

    _fields_ = [("w", ctypes.c_uint32 * 4)]


class Lb6Key(ctypes.Structure):
    _fields_ = [
        ("address", Addr6),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Lb6Service(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("affinity_timeout", ctypes.c_uint32),
        ("snat_address", Addr6),
    ]


class Lb6Backend(ctypes.Structure):
    _fields_ = [
        ("address", Addr6),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("svc_id", ctypes.c_uint32),
    ]


class Lb6Rnat(ctypes.Structure):
    _fields_ = [("address", Addr6), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Ct6Key(ctypes.Structure):
    _fields_ = [
        ("saddr", Addr6),
        ("daddr", Addr6),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class Ct6Value(ctypes.Structure):
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("backend_id", ctypes.c_uint32),
        ("svc_id", ctypes.c_uint32),
        ("nat_address", Addr6),
        ("nat_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("peer_address", Addr6),
        ("peer_port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Ct6Slot(ctypes.Structure):
    _fields_ = [("key", Ct6Key), ("value", Ct6Value)]


class Ct6Bucket(ctypes.Structure):
    _fields_ = [("head", CtHead), ("ways", Ct6Slot * CT_WAYS)]


class Aff6Key(ctypes.Structure):
    _fields_ = [("client", Addr6), ("svc_id", ctypes.c_uint32)]


class SrcRange6Key(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("svc_id", ctypes.c_uint32),
        ("address", Addr6),
    ]


class SkNat6Key(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", Addr6),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class SkNat6Value(ctypes.Structure):
    _fields_ = [("address", Addr6), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class SkNetnsValue(ctypes.Structure):
    """A pod network namespace socket-LB serves: the pod's addresses (0: none)."""

    _fields_ = [("addr4", ctypes.c_uint32), ("addr6", Addr6)]


class LbStats(ctypes.Structure):
    _fields_ = [
        ("rx_packets", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("tx_packets", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
    ]


class LbSvcMeta(ctypes.Structure):
    """Names of a frontend for the CLI (NUL-terminated); userspace writes, BPF never reads."""

    _fields_ = [
        ("ns", ctypes.c_char * 64),
        ("name", ctypes.c_char * 64),
        ("port", ctypes.c_char * 16),
    ]


# struct name in abi.h -> ctypes mirror, for the layout test.
C_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "lb4_key": Lb4Key,
    "lb4_service": Lb4Service,
    "lb4_slot_key": Lb4SlotKey,
    "lb4_backend": Lb4Backend,
    "lb4_rnat": Lb4Rnat,
    "ct4_key": Ct4Key,
    "ct4_value": Ct4Value,
    "ct_head": CtHead,
    "ct4_slot": Ct4Slot,
    "ct4_bucket": Ct4Bucket,
    "aff4_key": Aff4Key,
    "aff4_value": Aff4Value,
    "srcrange4_key": SrcRange4Key,
    "lb_stats": LbStats,
    "lb_svc_meta": LbSvcMeta,
    "sknat4_key": SkNat4Key,
    "sknat4_value": SkNat4Value,
    "addr6": Addr6,
    "lb6_key": Lb6Key,
    "lb6_service": Lb6Service,
    "lb6_backend": Lb6Backend,
    "lb6_rnat": Lb6Rnat,
    "ct6_key": Ct6Key,
    "ct6_value": Ct6Value,
    "ct6_slot": Ct6Slot,
    "ct6_bucket": Ct6Bucket,
    "aff6_key": Aff6Key,
    "srcrange6_key": SrcRange6Key,
    "sknat6_key": SkNat6Key,
    "sknat6_value": SkNat6Value,
    "sknetns_value": SkNetnsValue,
}


def pack_ip4(addr: ipaddress.IPv4Address | str) -> int:
    """An IPv4 address as the __be32 the kernel sees, read as a host-order integer."""
    if not isinstance(addr, ipaddress.IPv4Address):
        addr = ipaddress.IPv4Address(addr)
    return int.from_bytes(addr.packed, sys.byteorder)


def unpack_ip4(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value.to_bytes(4, sys.byteorder))


def pack_ip6(addr: ipaddress.IPv6Address | str) -> bytes:
    """An IPv6 address as the 16 network-order bytes of an addr6."""
    if not isinstance(addr, ipaddress.IPv6Address):
        addr = ipaddress.IPv6Address(addr)
    return addr.packed


def addr6(addr: ipaddress.IPv6Address | str) -> Addr6:
    return Addr6.from_buffer_copy(pack_ip6(addr))


def unpack_addr6(value: Addr6) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(bytes(value))


def htons(port: int) -> int:
    return socket.htons(port)


def ntohs(port: int) -> int:
    return socket.ntohs(port)


def proto_number(name: str) -> int:
    return {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}[name]


def proto_name(number: int) -> str:
    return {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}.get(number, str(number))


# Packed layouts of the same structs, for the map writer and bulk reads: one
# struct.pack per element is far cheaper than a ctypes object. Addresses are the 4
# network-order bytes (IPv4Address.packed); ports are htons() values packed little-endian,
# which lays them out in network order. tests/bpf/test_abi.py checks each against ctypes.
PACK_LB4_KEY = struct.Struct("<4sHBB")
PACK_LB4_SERVICE = struct.Struct("<IHHI4s")
PACK_LB4_SLOT_KEY = struct.Struct("<II")
PACK_LB4_BACKEND = struct.Struct("<4sHBBI")
PACK_LB4_RNAT = struct.Struct("<4sHH")
PACK_LB_SVC_META = struct.Struct("<64s64s16s")
PACK_U32 = struct.Struct("<I")
PACK_SRCRANGE4_KEY = struct.Struct("<II4s")
PACK_LB6_KEY = struct.Struct("<16sHBB")
PACK_LB6_SERVICE = struct.Struct("<IHHI16s")
PACK_LB6_BACKEND = struct.Struct("<16sHBBI")
PACK_LB6_RNAT = struct.Struct("<16sHH")
PACK_SRCRANGE6_KEY = struct.Struct("<II16s")

PACKED: dict[str, struct.Struct] = {
    "lb4_key": PACK_LB4_KEY,
    "lb4_service": PACK_LB4_SERVICE,
    "lb4_slot_key": PACK_LB4_SLOT_KEY,
    "lb4_backend": PACK_LB4_BACKEND,
    "lb4_rnat": PACK_LB4_RNAT,
    "lb_svc_meta": PACK_LB_SVC_META,
    "srcrange4_key": PACK_SRCRANGE4_KEY,
    "lb6_key": PACK_LB6_KEY,
    "lb6_service": PACK_LB6_SERVICE,
    "lb6_backend": PACK_LB6_BACKEND,
    "lb6_rnat": PACK_LB6_RNAT,
    "srcrange6_key": PACK_SRCRANGE6_KEY,
}
