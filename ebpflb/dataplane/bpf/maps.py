"""The pinned maps of one pin directory, and reading them back into the data-path
neutral FrontendState (what the agent adopts on start, and what the CLI shows).

Both families are read: IPv4 frontends from ebpflb_svc4 and their backends from
ebpflb_be4_v2, IPv6 ones from ebpflb_svc6 and ebpflb_be6_v2; their ids are one space, so a
backend's owner id and the slots, names and source ranges find either family's."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from itertools import chain, compress, repeat
from operator import and_, eq, is_, itemgetter, mul, ne
from typing import Any, TypeVar, cast

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.cttable import ConntrackTable, ct_buckets, max_conntrack_of
from ebpflb.dataplane.bpf.ids import (
    BackendKey,
    IdTable,
    backend_key,
    pack_ids,
    pack_tables,
    table_ids,
    unpack_ids,
)
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    K,
    MapType,
    PinnedMap,
    V,
    array_stride,
    map_create,
    obj_pin,
)
from ebpflb.errors import DataplaneError, MapGeometryError, MapMismatchError
from ebpflb.gcpause import no_collections
from ebpflb.model import (
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    IPNetwork,
    Protocol,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import BackendState, FrontendState, backend_order, compact_store

log = logging.getLogger(__name__)

_ACTIVE = int(abi.BackendFlag.ACTIVE)
_TERMINATING = int(abi.BackendFlag.TERMINATING)

KIND_FLAGS: dict[FrontendKind, abi.SvcFlag] = {
    FrontendKind.CLUSTER_IP: abi.SvcFlag.CLUSTERIP,
    FrontendKind.NODE_PORT: abi.SvcFlag.NODEPORT,
    FrontendKind.EXTERNAL: abi.SvcFlag.EXTERNAL,
    FrontendKind.LOAD_BALANCER: abi.SvcFlag.LOADBALANCER,
}


# The same as plain ints: `int & IntFlag` builds an IntFlag (~0.5 us a test, ~10x this).
_KIND_BITS = tuple((kind, int(flag)) for kind, flag in KIND_FLAGS.items())


def kind_from_flags(flags: int) -> FrontendKind:
    for kind, bit in _KIND_BITS:
        if flags & bit:
            return kind
    return FrontendKind.CLUSTER_IP


def pins_present(pin_dir: str) -> bool:
    return all(os.path.exists(os.path.join(pin_dir, name)) for name in abi.ALL_MAPS)


class IdArrayMap(PinnedMap):
    """An array indexed by an id whose all-zero element means "none": the backend and
    reverse-NAT maps (_v2). They were hashes keyed by the id; as arrays the verifier
    inlines their look-up (bench.testrun: a conntrack hit and a reply 20-40 ns less; a
    new flow, which makes one of them, too, within its noise). An array element cannot
    be deleted, so this class keeps the hash's behaviour for everything above it (the
    map writer, the CLI, the tests): a delete writes zeros, and look-ups, keys and
    dumps leave all-zero elements out. The data path reads zero as absent too
    (lb4_lookup_backend: svc_id 0 is no service's; lb4_lookup_rnat: a frontend's port
    is never 0). Ids are < max_entries: the allocators hand out [1, size - 1]."""

    BLOCK = 1024  # elements compared with zero at once: most of an array is zero

    def lookup(self, key: ctypes._CData, value_type: type[V]) -> V | None:
        value = super().lookup(key, value_type)
        if value is None or not any(memoryview(value).cast("B")):
            return None
        return value

    def delete(self, key: ctypes._CData) -> bool:
        found = self.lookup(key, ctypes.c_char * self.info.value_size) is not None
        if found:
            self.update(key, ctypes.create_string_buffer(self.info.value_size))
        return found

    def delete_batch_raw(self, keys: bytes, count: int) -> None:
        self.update_batch_raw(keys, bytes(self.info.value_size * count), count)

    def keys(self, key_type: type[K]) -> Iterator[K]:
        ids, _values, count = self.dump_raw()
        for i in range(count):
            key = key_type()  # a u32 id, or a structure of one (the tests' keys)
            ctypes.memmove(ctypes.addressof(key), ids[i * 4 : i * 4 + 4], 4)
            yield key

    def dump_raw(self, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """The elements that are not all zero, as PinnedMap.dump_raw gives a hash's:
        read through mmap() in one copy (a batch look-up walks every element of the
        array: 114 ms at 524,288 backends, the mapping 4 ms)."""
        size, n = self.info.value_size, self.info.max_entries
        stride = array_stride(size)
        try:
            mapped = mmap.mmap(self.fd, n * stride, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except OSError:  # not mmapable (made elsewhere): the batch look-up, filtered
            keys, values, count = super().dump_raw(chunk)
            at, live = _nonzero(values[: count * size], size, size)
            every = _u32s(keys[: count * 4])
            ids = array("I", [every[i] for i in at])
        else:
            with mapped:
                ids, live = _nonzero(mapped, size, stride)
        return ids.tobytes(), live, len(ids)


def _nonzero(buf: bytes | mmap.mmap, size: int, stride: int) -> tuple[array[int], bytes]:
    """The indexes and the packed values of the elements of buf (size bytes each,
    stride apart) that are not all zero: in C, outside the GIL (ebpflb._readback), or
    in Python (_nonzero_py)."""
    if _native_nonzero is None:
        return _nonzero_py(buf, size, stride)
    packed, values = _native_nonzero(buf, size, stride)
    indexes: array[int] = array("I")
    indexes.frombytes(packed)
    return indexes, values


def _nonzero_py(buf: bytes | mmap.mmap, size: int, stride: int) -> tuple[array[int], bytes]:
    """_nonzero in Python. Blocks of zeros are skipped, and blocks with no zero element
    taken whole, at C speed; no object per element outlives its block (at 500,000
    backends a bytes object each would have added ~30 MB to the peak)."""
    block_len = stride * IdArrayMap.BLOCK
    element = struct.Struct(f"{size}s{stride - size}x")
    zero, zeros = bytes(size), bytes(block_len)
    indexes: array[int] = array("I")
    parts: list[bytes] = []
    for offset in range(0, len(buf), block_len):
        block = buf[offset : offset + block_len]
        if block == zeros[: len(block)]:
            continue
        values = [v for (v,) in element.iter_unpack(block)]
        first = offset // stride
        if zero not in values:
            indexes.extend(range(first, first + len(values)))
            parts.append(b"".join(values))
        else:
            keep = [i for i, v in enumerate(values) if v != zero]
            indexes.extend([first + i for i in keep])
            parts.append(b"".join([values[i] for i in keep]))
    return indexes, b"".join(parts)


def open_map(path: str) -> PinnedMap:
    """The map pinned at path, as IdArrayMap where its name is one of those arrays and
    as ConntrackTable where it is a conntrack table."""
    name = os.path.basename(path)
    if name in abi.ID_ARRAY_MAPS:
        return IdArrayMap(path)
    if name in _CT_KEYS:
        return ConntrackTable(path, _CT_KEYS[name])
    return PinnedMap(path)


_CT_KEYS: dict[str, type[ctypes.Structure]] = {
    abi.MAP_CONNTRACK: abi.Ct4Key,
    abi.MAP_CONNTRACK6: abi.Ct6Key,
}


def migrate_legacy_pins(pin_dir: str) -> None:
    """Copy what an older version's id-keyed hash maps (ebpflb_be4 ...) hold into the
    arrays that replaced them, before remove_legacy_pins unlinks the old pins:
    conntrack entries name backend and frontend ids, and the writer adopts its ids
    from these maps, so established flows keep their backends across the upgrade.
    Each array is made as the loader makes it (bcc reuses a pin of its name), with
    the old map's size; an id that does not fit (none of this agent's allocators) is
    left out and counted. Nothing is done where the new pin exists already."""
    for old, new in abi.ID_MAPS_MIGRATED.items():
        old_path, new_path = os.path.join(pin_dir, old), os.path.join(pin_dir, new)
        if not os.path.exists(old_path) or os.path.exists(new_path):
            continue
        value_size = ctypes.sizeof(_GEOMETRY[new][1])
        try:
            with PinnedMap(old_path) as src:
                info = src.info
                if (info.type, info.key_size, info.value_size) != (MapType.HASH, 4, value_size):
                    log.warning("%s is not the hash this version upgrades: not copied", old_path)
                    continue
                keys, values, count = src.dump_raw()
            fd = map_create(
                BPF_MAP_TYPE_ARRAY, 4, value_size, info.max_entries, new, flags=BPF_F_MMAPABLE
            )
            with IdArrayMap(new_path, fd=fd) as dst:
                ids = _u32s(keys[: count * 4])
                fit = [i for i, ident in enumerate(ids) if ident < info.max_entries]
                dst.update_batch_raw(
                    b"".join(keys[i * 4 : i * 4 + 4] for i in fit),
                    b"".join(values[i * value_size : (i + 1) * value_size] for i in fit),
                    len(fit),
                )
                obj_pin(dst.fd, new_path)
        except (OSError, DataplaneError) as exc:
            log.warning("could not copy %s into %s: %s", old_path, new_path, exc)
            continue
        log.info(
            "upgraded %s to %s: %d entries copied%s",
            old,
            new,
            len(fit),
            f", {count - len(fit)} with ids out of range left out" if len(fit) < count else "",
        )


class BpfMaps:
    """Every map of a pin directory, opened from its pin."""

    def __init__(self, pin_dir: str) -> None:
        if not pins_present(pin_dir):
            missing = [n for n in abi.ALL_MAPS if not os.path.exists(os.path.join(pin_dir, n))]
            detail = "" if len(missing) == len(abi.ALL_MAPS) else f" (missing {', '.join(missing)})"
            raise DataplaneError(
                f"no ebpflb maps pinned under {pin_dir}{detail}; "
                "is the agent running with this --pin-dir?"
            )
        self.pin_dir = pin_dir
        self.svc = PinnedMap(os.path.join(pin_dir, abi.MAP_SERVICES))
        self.slots = PinnedMap(os.path.join(pin_dir, abi.MAP_SLOTS))
        self.backends = IdArrayMap(os.path.join(pin_dir, abi.MAP_BACKENDS))
        self.rnat = IdArrayMap(os.path.join(pin_dir, abi.MAP_REVNAT))
        self.ct = ConntrackTable(os.path.join(pin_dir, abi.MAP_CONNTRACK), abi.Ct4Key)
        self.svc_stats = PinnedMap(os.path.join(pin_dir, abi.MAP_SVC_STATS))
        self.global_stats = PinnedMap(os.path.join(pin_dir, abi.MAP_GLOBAL_STATS))
        self.meta = PinnedMap(os.path.join(pin_dir, abi.MAP_SVC_META))
        self.affinity = PinnedMap(os.path.join(pin_dir, abi.MAP_AFFINITY))
        self.src_ranges = PinnedMap(os.path.join(pin_dir, abi.MAP_SRC_RANGES))
        self.config = PinnedMap(os.path.join(pin_dir, abi.MAP_CONFIG))
        self.maglev = PinnedMap(os.path.join(pin_dir, abi.MAP_MAGLEV))
        self.sock_nat = PinnedMap(os.path.join(pin_dir, abi.MAP_SOCK_NAT))
        self.drops = PinnedMap(os.path.join(pin_dir, abi.MAP_DROPS))
        self.svc6 = PinnedMap(os.path.join(pin_dir, abi.MAP_SERVICES6))
        self.backends6 = IdArrayMap(os.path.join(pin_dir, abi.MAP_BACKENDS6))
        self.rnat6 = IdArrayMap(os.path.join(pin_dir, abi.MAP_REVNAT6))
        self.ct6 = ConntrackTable(os.path.join(pin_dir, abi.MAP_CONNTRACK6), abi.Ct6Key)
        self.affinity6 = PinnedMap(os.path.join(pin_dir, abi.MAP_AFFINITY6))
        self.src_ranges6 = PinnedMap(os.path.join(pin_dir, abi.MAP_SRC_RANGES6))
        self.sock_nat6 = PinnedMap(os.path.join(pin_dir, abi.MAP_SOCK_NAT6))
        try:
            check_pinned_maps(self.all())
        except MapMismatchError:
            self.close()
            raise

    def all(self) -> tuple[PinnedMap, ...]:
        return (
            self.svc,
            self.slots,
            self.backends,
            self.rnat,
            self.ct,
            self.svc_stats,
            self.global_stats,
            self.meta,
            self.affinity,
            self.src_ranges,
            self.config,
            self.maglev,
            self.sock_nat,
            self.drops,
            self.svc6,
            self.backends6,
            self.rnat6,
            self.ct6,
            self.affinity6,
            self.src_ranges6,
            self.sock_nat6,
        )

    def close(self) -> None:
        for m in self.all():
            m.close()

    def __enter__(self) -> BpfMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# map -> (key type, value type, the agent option that sizes it)
_GEOMETRY: dict[str, tuple[type, type, str | None]] = {
    abi.MAP_SERVICES: (abi.Lb4Key, abi.Lb4Service, "max_services"),
    abi.MAP_SLOTS: (abi.Lb4SlotKey, ctypes.c_uint32, "max_backends"),
    abi.MAP_BACKENDS: (ctypes.c_uint32, abi.Lb4Backend, "max_backends"),
    abi.MAP_REVNAT: (ctypes.c_uint32, abi.Lb4Rnat, "max_services"),
    abi.MAP_CONNTRACK: (ctypes.c_uint32, abi.Ct4Bucket, "max_conntrack"),
    abi.MAP_SVC_STATS: (ctypes.c_uint32, abi.LbStats, "max_services"),
    abi.MAP_GLOBAL_STATS: (ctypes.c_uint32, ctypes.c_uint64, None),
    abi.MAP_SVC_META: (ctypes.c_uint32, abi.LbSvcMeta, "max_services"),
    abi.MAP_AFFINITY: (abi.Aff4Key, abi.Aff4Value, None),
    abi.MAP_SRC_RANGES: (abi.SrcRange4Key, ctypes.c_uint8, None),
    abi.MAP_CONFIG: (ctypes.c_uint32, ctypes.c_uint32, None),
    abi.MAP_MAGLEV: (ctypes.c_uint32, ctypes.c_uint32, "max_services"),
    abi.MAP_SOCK_NAT: (abi.SkNat4Key, abi.SkNat4Value, None),
    abi.MAP_DROPS: (ctypes.c_uint32, ctypes.c_uint64, None),
    abi.MAP_SERVICES6: (abi.Lb6Key, abi.Lb6Service, "max_services"),
    abi.MAP_BACKENDS6: (ctypes.c_uint32, abi.Lb6Backend, "max_backends"),
    abi.MAP_REVNAT6: (ctypes.c_uint32, abi.Lb6Rnat, "max_services"),
    abi.MAP_CONNTRACK6: (ctypes.c_uint32, abi.Ct6Bucket, "max_conntrack"),
    abi.MAP_AFFINITY6: (abi.Aff6Key, abi.Aff4Value, None),
    abi.MAP_SRC_RANGES6: (abi.SrcRange6Key, ctypes.c_uint8, None),
    abi.MAP_SOCK_NAT6: (abi.SkNat6Key, abi.SkNat6Value, None),
    abi.MAP_SOCK_NETNS: (ctypes.c_uint64, abi.SkNetnsValue, None),
    abi.MAP_XDP_DEVS: (ctypes.c_uint32, ctypes.c_uint32, None),
    abi.MAP_TAIL: (ctypes.c_uint32, ctypes.c_uint32, None),
    abi.MAP_XDP_TAIL: (ctypes.c_uint32, ctypes.c_uint32, None),
}


# map -> (bpf map type, the smallest max_entries a reader relies on: arrays indexed by
# an enum are read at every index, so a shorter one would read as silent zeros)
_MAP_TYPES: dict[str, tuple[int, int]] = {
    abi.MAP_SERVICES: (MapType.HASH, 1),
    abi.MAP_SLOTS: (MapType.HASH, 1),
    abi.MAP_BACKENDS: (MapType.ARRAY, 1),
    abi.MAP_REVNAT: (MapType.ARRAY, 1),
    abi.MAP_CONNTRACK: (MapType.ARRAY, 1),
    abi.MAP_SVC_STATS: (MapType.PERCPU_ARRAY, 1),
    abi.MAP_GLOBAL_STATS: (MapType.PERCPU_ARRAY, max(abi.GlobalStat) + 1),
    abi.MAP_SVC_META: (MapType.HASH, 1),
    abi.MAP_AFFINITY: (MapType.LRU_HASH, 1),
    abi.MAP_SRC_RANGES: (MapType.LPM_TRIE, 1),
    abi.MAP_CONFIG: (MapType.ARRAY, abi.CFG_MAX),
    abi.MAP_MAGLEV: (MapType.ARRAY_OF_MAPS, 1),
    abi.MAP_SOCK_NAT: (MapType.LRU_HASH, 1),
    abi.MAP_DROPS: (MapType.PERCPU_ARRAY, abi.DROP_MAX),
    abi.MAP_SERVICES6: (MapType.HASH, 1),
    abi.MAP_BACKENDS6: (MapType.ARRAY, 1),
    abi.MAP_REVNAT6: (MapType.ARRAY, 1),
    abi.MAP_CONNTRACK6: (MapType.ARRAY, 1),
    abi.MAP_AFFINITY6: (MapType.LRU_HASH, 1),
    abi.MAP_SRC_RANGES6: (MapType.LPM_TRIE, 1),
    abi.MAP_SOCK_NAT6: (MapType.LRU_HASH, 1),
    abi.MAP_SOCK_NETNS: (MapType.HASH, 1),
    abi.MAP_XDP_DEVS: (MapType.HASH, 1),
    abi.MAP_TAIL: (MapType.PROG_ARRAY, abi.TAIL_MAX),
    abi.MAP_XDP_TAIL: (MapType.PROG_ARRAY, abi.TAIL_MAX),
}


def _shape(kind: str, key_size: int, value_size: int) -> str:
    return f"a {kind} with {key_size}-byte keys and {value_size}-byte values"


def map_mismatch(m: PinnedMap) -> str | None:
    """How the map pinned under one of ebpflb's names differs from ebpflb's (object
    kind, map type, key and value size, too few entries), or None. Reading a foreign
    map with ebpflb's structs gives empty tables, tracebacks, or, where the kernel
    copies a larger value than the caller's buffer, memory corruption."""
    name = os.path.basename(m.path)
    if name not in _GEOMETRY or name not in _MAP_TYPES:
        return None
    key_t, value_t, _option = _GEOMETRY[name]
    map_type, min_entries = _MAP_TYPES[name]
    expected = _shape(
        f"{MapType(map_type).label} map", ctypes.sizeof(key_t), ctypes.sizeof(value_t)
    )
    kind = m.object_kind()
    if kind != "map":
        return f"pinned map {m.path} is not ebpflb's: expected {expected}, found a BPF {kind}"
    found = _shape(f"{MapType.name_of(m.info.type)} map", m.info.key_size, m.info.value_size)
    if found != expected:
        return f"pinned map {m.path} is not ebpflb's: expected {expected}, found {found}"
    if m.info.max_entries < min_entries:
        return (
            f"pinned map {m.path} is not ebpflb's: expected at least {min_entries} "
            f"entries, found {m.info.max_entries}"
        )
    return None


def check_pinned_maps(maps: Iterable[PinnedMap]) -> None:
    """Raise MapMismatchError (one line, every mismatch) before any map is read."""
    problems = [p for p in map(map_mismatch, maps) if p is not None]
    if problems:
        raise MapMismatchError("; ".join(problems))


# option -> the map whose size tells it (the first map of _GEOMETRY that it sizes)
_SIZED_BY = {
    "max_services": abi.MAP_SERVICES,
    "max_backends": abi.MAP_BACKENDS,
    "max_conntrack": abi.MAP_CONNTRACK,
}


def resolve_sizes(
    pin_dir: str, *, max_services: int | None, max_backends: int | None, max_conntrack: int | None
) -> tuple[int, int, int]:
    """The map sizes to run with: each size given, else the one the pinned maps were
    made with (an agent upgraded across a change of the defaults keeps its maps, its
    ids and its tracked connections), else the default. A pin that cannot be read
    counts as absent: check_pinned_maps then reports it."""
    given = {
        "max_services": max_services,
        "max_backends": max_backends,
        "max_conntrack": max_conntrack,
    }
    defaults = {
        "max_services": abi.DEFAULT_MAX_SERVICES,
        "max_backends": abi.DEFAULT_MAX_BACKENDS,
        "max_conntrack": abi.DEFAULT_MAX_CONNTRACK,
    }
    out: dict[str, int] = {}
    for option, size in given.items():
        if size is None:
            size = _pinned_entries(os.path.join(pin_dir, _SIZED_BY[option]))
            if size is not None and option == "max_conntrack":
                size = max_conntrack_of(size)  # the table's buckets
            if size is not None and size != defaults[option]:
                flag = "--" + option.replace("_", "-")
                log.info(
                    "%s not given: keeping the pinned maps' %d (default %d)",
                    flag,
                    size,
                    defaults[option],
                )
        out[option] = defaults[option] if size is None else size
    return out["max_services"], out["max_backends"], out["max_conntrack"]


def _pinned_entries(path: str) -> int | None:
    if not os.path.exists(path):
        return None
    try:
        with PinnedMap(path) as m:
            return int(m.info.max_entries) if m.object_kind() == "map" else None
    except (OSError, DataplaneError):
        return None


def check_geometry(
    maps: BpfMaps, *, max_services: int, max_backends: int, max_conntrack: int
) -> None:
    """Refuse pinned maps whose layout or size differs from what this agent asked for.

    bcc silently reuses a pinned map of the same name whatever its size, so without
    this check a changed --max-* flag (or a struct layout change) would be ignored."""
    sizes = {
        "max_services": max_services,
        "max_backends": max_backends,
        "max_conntrack": max_conntrack,
    }
    problems = []
    for m in maps.all():
        key_t, value_t, option = _GEOMETRY[os.path.basename(m.path)]
        if m.info.key_size != ctypes.sizeof(key_t) or m.info.value_size != ctypes.sizeof(value_t):
            problems.append(
                f"{m.path}: key/value size {m.info.key_size}/{m.info.value_size}, "
                f"this version expects {ctypes.sizeof(key_t)}/{ctypes.sizeof(value_t)}"
            )
        elif option is not None and m.info.max_entries != _entries(option, sizes[option]):
            flag = "--" + option.replace("_", "-")
            problems.append(
                f"{m.path} holds {m.info.max_entries} {_UNIT.get(option, 'entries')} but "
                f"{flag} is {sizes[option]} ({_entries(option, sizes[option])})"
            )
    if problems:
        raise MapGeometryError("the pinned maps do not match this agent: " + "; ".join(problems))


# what a conntrack table's max_entries counts: buckets of cttable.WAYS entries
_UNIT = {"max_conntrack": "buckets"}


def _entries(option: str, size: int) -> int:
    """max_entries of a map sized by ``option`` = size."""
    return ct_buckets(size) if option == "max_conntrack" else size


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def meta_to_port_name(meta: abi.LbSvcMeta | None, proto: Protocol) -> ServicePortName | None:
    if meta is None or not meta.ns:
        return None
    return ServicePortName(ServiceRef(_cstr(meta.ns), _cstr(meta.name)), _cstr(meta.port), proto)


@dataclass
class MapState:
    """The pinned maps read back: frontends plus the ids that encode them."""

    frontends: dict[FrontendKey, FrontendState] = field(default_factory=dict)
    svc_ids: dict[FrontendKey, int] = field(default_factory=dict)
    slot_counts: dict[int, int] = field(default_factory=dict)
    orphan_backends: list[int] = field(default_factory=list)  # owner svc id not in svc map
    orphan_backends6: list[int] = field(default_factory=list)  # the same, in ebpflb_be6_v2
    orphan_svc_ids: list[int] = field(default_factory=list)  # names/rnat left without a svc
    src_ranges: dict[int, tuple[IPNetwork, ...]] = field(default_factory=dict)  # by svc id
    # svc id -> its backends' ids, packed as the writer keeps them (ids.pack_ids): read
    # in bulk, a slice of one buffer per frontend, where a dict per frontend (and the
    # writer packing it) cost ~0.2 s at 100,000 Services; tables6: the IPv6 ones
    tables: dict[int, IdTable] = field(default_factory=dict)
    tables6: set[int] = field(default_factory=set)
    _backend_ids: dict[int, dict[BackendKey, int]] | None = field(
        default=None, init=False, repr=False
    )

    @property
    def backend_ids(self) -> dict[int, dict[BackendKey, int]]:
        """svc id -> ids.backend_key of each backend -> its id: the id tables as
        mappings, made at the first use and kept (a change to them is this state's)."""
        if self._backend_ids is None:
            six = self.tables6
            self._backend_ids = {
                sid: unpack_ids(table, v6=sid in six) for sid, table in self.tables.items()
            }
        return self._backend_ids

    def id_tables(self) -> dict[int, IdTable]:
        """The writer's id tables: as read, or packed from ``backend_ids`` once those
        were asked for (and may have been changed)."""
        if self._backend_ids is None:
            return self.tables
        return pack_tables(self._backend_ids)

    def backend_id(self, sid: int, address: IPAddress, port: int) -> int:
        return self.backend_ids[sid][backend_key(address.packed, port)]

    def all_backend_ids(self) -> Iterator[int]:
        if self._backend_ids is None:  # the tables of a family, as one: one unpack each
            six, tables = self.tables6, self.tables
            four = [t for sid, t in tables.items() if sid not in six] if six else tables.values()
            yield from table_ids(b"".join(four), v6=False)
            yield from table_ids(b"".join([tables[sid] for sid in six]), v6=True)
            return
        for ids in self._backend_ids.values():
            yield from ids.values()


_PROTOCOLS = {6: Protocol.TCP, 17: Protocol.UDP, 132: Protocol.SCTP}
_NO_ADDRESS = bytes(4)
_NO_ADDRESS6 = bytes(16)
_SRC_RANGES = int(abi.SvcFlag.SRC_RANGES)
_DROP_EMPTY = int(abi.SvcFlag.DROP_EMPTY)
SVC_ID_BITS = 32  # an LPM key's svc_id part, always matched whole
_U16 = struct.Struct("<H").pack  # ids.backend_key's port part
# where an lb4_slot_key's svc id and slot land in the u64 of its bytes
_SID_SHIFT, _SLOT_SHIFT = (0, 32) if sys.byteorder == "little" else (32, 0)


def read_src_ranges(maps: BpfMaps) -> dict[int, tuple[IPNetwork, ...]]:
    """Service id -> its source ranges, sorted (an LPM trie has no batch dump, but it
    holds only the few frontends that restrict their clients). A frontend's ranges are
    all of its family, in that family's map."""
    found4: dict[int, list[IPv4Network]] = {}
    for key in maps.src_ranges.keys(abi.SrcRange4Key):
        prefix = key.prefixlen - SVC_ID_BITS
        net = IPv4Network((abi.unpack_ip4(key.address), prefix), strict=False)
        found4.setdefault(key.svc_id, []).append(net)
    found6: dict[int, list[IPv6Network]] = {}
    for key6 in maps.src_ranges6.keys(abi.SrcRange6Key):
        prefix = key6.prefixlen - SVC_ID_BITS
        net6 = IPv6Network((abi.unpack_addr6(key6.address), prefix), strict=False)
        found6.setdefault(key6.svc_id, []).append(net6)
    out: dict[int, tuple[IPNetwork, ...]] = {sid: tuple(sorted(n)) for sid, n in found4.items()}
    for sid, nets in found6.items():
        out[sid] = out.get(sid, ()) + tuple(sorted(nets))
    return out


def _u32s(raw: bytes) -> list[int]:
    """Packed host-order u32s (a map's ids, as the kernel holds them) as ints."""
    return memoryview(raw).cast("I").tolist()


_Address = type[IPv4Address] | type[IPv6Address]
# family -> (address type, backend, key and service layouts, "no address")
_FAMILIES: dict[int, tuple[_Address, struct.Struct, struct.Struct, struct.Struct, bytes]] = {
    4: (IPv4Address, abi.PACK_LB4_BACKEND, abi.PACK_LB4_KEY, abi.PACK_LB4_SERVICE, _NO_ADDRESS),
    6: (IPv6Address, abi.PACK_LB6_BACKEND, abi.PACK_LB6_KEY, abi.PACK_LB6_SERVICE, _NO_ADDRESS6),
}

# (packed address, port in host order, flags, backend id): sorted, a frontend's
# backends are in BackendState order (within one family the packed address orders as
# the address), unless one address and port occur twice (see _backend_states).
_Row = tuple[bytes, int, int, int]

_from_big = partial(int.from_bytes, byteorder="big")  # a packed address's int
# an address' int -> its address object, made once per read (see _BackendColumns)
_Addresses = dict[int, IPAddress]


def _address(addresses: _Addresses, make: _Address, packed: bytes) -> IPAddress:
    value = _from_big(packed)
    found = addresses.get(value)
    if found is None:  # from its int: from the bytes, ipaddress checks them in Python
        found = addresses[value] = make(value)
    return found


def _backend_states(
    rows: list[_Row], make: _Address, addresses: _Addresses, ids: dict[BackendKey, int]
) -> tuple[tuple[BackendState, ...], dict[int, tuple[IPAddress, int]]]:
    """One frontend's backends in order, and its backend ids: id -> backend key (for
    the slots) and, into ``ids``, ids.backend_key -> id (the writer's id table). Row by
    row: what a frontend that holds one address and port under two ids takes (rare:
    a backend that changed its flags under an older writer); see _BackendColumns."""
    rows.sort()
    states = []
    key_by_id: dict[int, tuple[IPAddress, int]] = {}
    last = None
    twice = False
    for addr, port, flags, bid in rows:
        address = _address(addresses, make, addr)
        states.append(BackendState(address, port, flags & _ACTIVE != 0, flags & _TERMINATING != 0))
        key_by_id[bid] = (address, port)
        key = addr + _U16(port)
        twice = twice or key == last
        ids[key] = bid
        last = key
    if twice:  # one key under two ids: the flags order them as BackendState does
        states.sort(key=backend_order)
    return tuple(states), key_by_id


_first = itemgetter(0)
_third = itemgetter(2)
_backend_key = itemgetter(0, 1)  # BackendState.key, in C
_make_tuple = tuple.__new__  # BackendState(*row), in C: a named tuple is a tuple
_BE32 = struct.Struct(">I").pack
_IS_ACTIVE = tuple(bool(f & _ACTIVE) for f in range(256))
_IS_TERMINATING = tuple(bool(f & _TERMINATING) for f in range(256))


def _column(layout: struct.Struct, buf: bytes) -> list[Any]:
    """The one field that ``layout`` picks out of each element of buf."""
    return list(map(_first, layout.iter_unpack(buf)))


@dataclass(frozen=True)
class _Layouts:
    """The fields of a backend element (abi.PACK_LB4_BACKEND / _LB6_: address, port
    in network order, protocol, flags, owner svc id), each as a column of a buffer of
    elements: the bytes ones with a one-field layout (address; order: the packed
    address and the port in network order, which as bytes sort as (address, port)
    do; element: the whole), the int ones by slicing the buffer, with no object per
    element but the int (a one-field iter_unpack makes a tuple each)."""

    address_size: int
    element: struct.Struct
    address: struct.Struct
    order: struct.Struct

    @classmethod
    def of(cls, address_size: int) -> _Layouts:
        n = address_size
        return cls(
            n,
            struct.Struct(f"<{n + 8}s"),
            struct.Struct(f"<{n}s8x"),
            struct.Struct(f"<{n + 2}s6x"),
        )

    def owners(self, values: bytes) -> list[int]:
        """Host-order u32s, last in an element whose size is a multiple of 4."""
        words = self.element.size // 4
        return memoryview(values).cast("I")[words - 1 :: words].tolist()

    def ports(self, values: bytes) -> list[int]:
        n, size = self.address_size, self.element.size
        pairs = bytearray(2 * (len(values) // size))
        pairs[0::2] = values[n + 1 :: size]  # little-endian u16s
        pairs[1::2] = values[n::size]
        ports = array("H", pairs)
        if sys.byteorder == "big":
            ports.byteswap()
        return ports.tolist()

    def flags(self, values: bytes) -> list[int]:
        return list(values[self.address_size + 3 :: self.element.size])


_LAYOUTS = {4: _Layouts.of(4), 6: _Layouts.of(16)}


def _id_records(values: bytes, ids: list[int], family: int) -> bytes:
    """The id table records (ids.pack_ids: packed address, port little-endian, id
    little-endian) of the backend elements in ``values`` and their ``ids``, made with
    one strided copy per byte of a record, not a Python step per backend."""
    n = _LAYOUTS[family].address_size
    size, record = n + 8, n + 6
    count = len(ids)
    id_bytes = array("I", ids)
    if sys.byteorder == "big":
        id_bytes.byteswap()
    raw = id_bytes.tobytes()
    out = bytearray(count * record)
    for i in range(n):
        out[i::record] = values[i::size]
    out[n::record] = values[n + 1 :: size]  # the port: network order in the element
    out[n + 1 :: record] = values[n::size]
    for i in range(4):
        out[n + 2 + i :: record] = raw[i::4]
    return bytes(out)


_Slots = tuple[tuple[IPAddress, int], ...]


def _slot_keys(slot_ids: list[int | None], key_by_id: dict[int, tuple[IPAddress, int]]) -> _Slots:
    """The backend keys of a frontend's slots (an id that none of its backends has,
    or a missing slot, is left out)."""
    return tuple([key_by_id[b] for b in slot_ids if b in key_by_id])


# read_state's bulk steps in C (ebpflb/_readback.c, built by `pip install` beside
# ebpflb._maglevfill, see setup.py): the scan of the backend arrays, the sorts of the
# backend and service maps, the check of the usual frontends' slots (these outside
# the GIL: a restarted agent reads while its Kubernetes lists run), the backend
# columns, the address objects and the other objects made field by field. Without
# it, the same steps in Python: _nonzero_py, _order_py, _records_py, _SlotMap.runs,
# _backends, _addresses_py, _objects, take_all's slicing, _names_of_py (the tests run
# both ways and compare them).
NATIVE_STEPS = (  # the hooks below, by name (tests switch them off to run the Python)
    "_native_objects",
    "_native_addresses",
    "_native_backends",
    "_native_order",
    "_native_runs",
    "_native_records",
    "_native_nonzero",
    "_native_cut",
    "_native_names",
)
_native_objects: Callable[..., list[Any]] | None
_native_addresses: Callable[..., list[Any]] | None
_native_backends: Callable[..., tuple[tuple[Any, ...], dict[int, tuple[int, int]], set[int]]] | None
_native_order: Callable[[bytes, bytes, int], tuple[bytes, bytes, set[int]]] | None
_native_runs: Callable[..., bytes] | None
_native_records: Callable[[bytes, int, bytes, int], tuple[bytes, bytes]] | None
_native_nonzero: Callable[[bytes | mmap.mmap, int, int], tuple[bytes, bytes]] | None
_native_cut: Callable[..., tuple[list[tuple[Any, ...]], list[bytes]]] | None
_native_names: Callable[[bytes, bytes, int, int, int], dict[int, Any]] | None
try:
    from ebpflb import _readback
except ImportError:
    _native_objects = _native_addresses = _native_backends = None
    _native_order = _native_runs = _native_records = _native_nonzero = _native_cut = None
    _native_names = None
else:
    _native_objects, _native_addresses, _native_backends = (
        _readback.objects,
        _readback.addresses,
        _readback.backends,
    )
    _native_order, _native_runs, _native_records, _native_nonzero, _native_cut = (
        _readback.order,
        _readback.runs,
        _readback.records,
        _readback.nonzero,
        _readback.cut,
    )
    _native_names = _readback.names

_T = TypeVar("_T")
# the fields that _objects sets, in the order of each class's dataclass fields (a test
# holds them to dataclasses.fields): every field, as the constructors set them
_FRONTEND_FIELDS = ("address", "port", "protocol", "kind", "key")
_STATE_FIELDS = (
    "frontend",
    "port_name",
    "_backends",
    "_slots",
    "affinity_timeout",
    "snat_address",
    "source_ranges",
    "drop_when_empty",
)
_REF_FIELDS = ("namespace", "name")
_PORT_NAME_FIELDS = ("service", "port", "protocol")
# what IPv4Address(int) / IPv6Address(int) set (ipaddress: an int is taken as it is):
# None where this Python's ipaddress has other slots (the constructor then makes them)
_ADDRESS_FIELDS: dict[int, tuple[str, ...] | None] = {
    4: ("_ip",) if IPv4Address.__slots__ == ("_ip", "__weakref__") else None,
    6: ("_ip", "_scope_id")
    if IPv6Address.__slots__ == ("_ip", "_scope_id", "__weakref__")
    else None,
}


def _objects(cls: type[_T], fields: tuple[str, ...], *columns: Sequence[Any]) -> list[_T]:
    """cls objects made by object.__new__, each field set from its column as
    object.__setattr__ sets it (no __init__ runs: the caller gives every field, as
    the constructor would set it). In C one object costs less than a Python call."""
    if _native_objects is not None:
        return _native_objects(cls, fields, *columns)
    new, setter = object.__new__, object.__setattr__
    out = []
    for values in zip(*columns, strict=True):
        obj = new(cls)
        for name, value in zip(fields, values, strict=True):
            setter(obj, name, value)
        out.append(obj)
    return out


def _addresses_of(
    addresses: _Addresses, family: int, buf: bytes, stride: int, offset: int
) -> list[IPAddress]:
    """The address object of the address at ``offset`` of each ``stride``-byte element
    of buf, from ``addresses`` (those not there made and added: one object per
    distinct address in a read)."""
    size, fields = (4 if family == 4 else 16), _ADDRESS_FIELDS[family]
    make = _FAMILIES[family][0]
    if _native_addresses is not None and fields is not None:
        return _native_addresses(make, fields, buf, stride, offset, size, addresses)
    layout = struct.Struct(f"{offset}x{size}s{stride - offset - size}x")
    return _addresses_py(addresses, make, _column(layout, buf))


def _addresses_py(addresses: _Addresses, make: _Address, packed: list[bytes]) -> list[IPAddress]:
    ints = list(map(_from_big, packed))
    distinct = dict.fromkeys(ints)
    new = [v for v in distinct if v not in addresses] if addresses else list(distinct)
    addresses.update(zip(new, map(make, new), strict=True))
    return list(map(addresses.__getitem__, ints))


def _backends(
    values: bytes, family: int, addresses: _Addresses, shared_ports: dict[int, int]
) -> tuple[tuple[Any, ...], dict[int, tuple[int, int]], set[int]]:
    """Of backend elements in owner order: the flat store (address, port, address,
    port, ...: the address objects from ``addresses``, each port int from
    ``shared_ports``, those not there added), each owner's [start, end), and the
    owners with a backend that is not active, or terminating."""
    fields = _ADDRESS_FIELDS[family]
    if _native_backends is not None and fields is not None:
        return _native_backends(
            values,
            _LAYOUTS[family].address_size,
            _FAMILIES[family][0],
            fields,
            addresses,
            shared_ports,
            _ACTIVE,
        )
    layouts = _LAYOUTS[family]
    count = len(values) // layouts.element.size
    owners = layouts.owners(values)
    ports = layouts.ports(values)
    # one int object per distinct port in the read, not one per backend: the flat
    # stores hold them for as long as the state lives (8080 at 500,000 backends:
    # 14 MB)
    for port in set(ports).difference(shared_ports):
        shared_ports[port] = port
    flags = layouts.flags(values)
    flat: list[Any] = [None] * (2 * count)
    flat[0::2] = _addresses_py(addresses, _FAMILIES[family][0], _column(layouts.address, values))
    flat[1::2] = map(shared_ports.__getitem__, ports)
    starts = [0, *compress(range(1, count), map(ne, owners, owners[1:]))] if count else []
    ends = [*starts[1:], count] if count else []
    return (
        tuple(flat),
        dict(zip(map(owners.__getitem__, starts), zip(starts, ends, strict=True), strict=True)),
        set(compress(owners, map(ne, flags, repeat(_ACTIVE)))),
    )


_FAMILY_OF_SIZE = {4: 4, 16: 6}
_ID = struct.Struct("4s")


def _order(values: bytes, ids: bytes, address_size: int) -> tuple[bytes, bytes, set[int]]:
    """Backend elements (packed, one after another) and their ids (packed u32s) in
    (owner, address, port) order, ties in their order (a stable sort), and the owners
    that hold one address and port under two ids (twins). In C (outside the GIL) or
    in Python (_order_py)."""
    if _native_order is not None:
        return _native_order(bytes(values), bytes(ids), address_size)
    return _order_py(values, ids, address_size)


def _order_py(values: bytes, ids: bytes, address_size: int) -> tuple[bytes, bytes, set[int]]:
    layouts = _LAYOUTS[_FAMILY_OF_SIZE[address_size]]
    count = len(ids) // 4
    owners = layouts.owners(values)
    # a key per element as bytes, which compare in C: the owner in network order, the
    # packed address and the port in network order; a frontend's backends are usually
    # one run of ids already in that order (the writer allocates them so), which the
    # sort only checks
    order_keys = list(map(bytes.__add__, map(_BE32, owners), _column(layouts.order, values)))
    order = sorted(range(count), key=order_keys.__getitem__)
    if order != list(range(count)):  # else in order already (as a first sync writes)
        values = b"".join(map(_column(layouts.element, values).__getitem__, order))
        ids = b"".join(map(_column(_ID, ids).__getitem__, order))
        order_keys = list(map(order_keys.__getitem__, order))
        owners = list(map(owners.__getitem__, order))
    twins = {owners[i] for i in compress(range(1, count), map(eq, order_keys, order_keys[1:]))}
    return values, ids, twins


class _SlotMap:
    """The slot map dumped: (svc id, slot) -> backend id, each key an lb4_slot_key's two
    host-order u32s. Looked up as a dict keyed by those bytes read as one u64 (an int
    key hashes and compares in C, a tuple not), made at its first use: with the native
    module, the usual frontends' slots are checked in bulk (``runs``) without it."""

    def __init__(self, keys: bytes, values: bytes) -> None:
        self.keys, self.values = keys, values
        self._of: dict[int, int] | None = None

    @classmethod
    def read(cls, m: PinnedMap) -> _SlotMap:
        keys, values, count = m.dump_raw()
        return cls(keys[: count * 8], values[: count * 4])

    def of(self) -> dict[int, int]:
        if self._of is None:
            self._of = dict(
                zip(memoryview(self.keys).cast("Q").tolist(), _u32s(self.values), strict=True)
            )
        return self._of

    def ids(self, sid: int, count: int) -> list[int | None]:
        """The backend ids in frontend ``sid``'s slots 0 .. count - 1 (None: missing):
        the keys range(sid << _SID_SHIFT, ..., 1 << _SLOT_SHIFT), looked up in C."""
        base = sid << _SID_SHIFT
        return list(map(self.of().get, range(base, base + count * _SLOT_STEP, _SLOT_STEP)))

    def runs(
        self, sids: list[int], counts: list[int], starts: list[int], ends: list[int], ids: bytes
    ) -> bytes:
        """Per frontend (svc id, slot count), 1 where its slots hold exactly the ids
        (packed u32s) [start, end), in order (start -1: none), else 0."""
        if _native_runs is not None:
            return _native_runs(
                self.keys,
                self.values,
                array("I", sids),
                array("I", counts),
                array("q", starts),
                array("q", ends),
                ids,
            )
        every = _u32s(ids)
        return bytes(
            start >= 0 and self.ids(sid, count) == every[start:end]
            for sid, count, start, end in zip(sids, counts, starts, ends, strict=True)
        )


@dataclass
class _BackendColumns:
    """One family's backend map put in (owner, address, port) order by one sort
    (_order) and decoded in one pass (_backends; without the native module, column by
    column, each at C speed): a frontend's backends are then one slice of ``flat``
    (``spans``), in BackendState order, and its id table one slice of ``records``. No
    Python code runs per backend, only per frontend (and for the usual one not even
    that: ``take_all``): at 100,000 Services of 5 backends the row-by-row
    decoding (a tuple, a sort, an address, a state and two dict entries per backend,
    in Python) was about half of the read. Address objects are made once per distinct
    address (from its int: IPv4Address(bytes) runs a Python check more), into the
    read's ``addresses``: a pod backing several frontends (ports, NodePort beside
    ClusterIP) is one object, and comparing two states that share them stops at
    identity. BackendStates are made only for the frontends that need them: the usual
    one (every backend active, none terminating, each in the slots in order) takes a
    slice of ``flat``, which is FrontendState's own compact store."""

    family: int
    addresses: _Addresses
    # in (owner, address, port) order
    flat: tuple[Any, ...]  # address, port, address, port, ...
    ids: list[int]
    id_bytes: bytes  # the same, packed u32s
    records: bytes  # each one's record of an id table (ids.pack_ids), one after another
    values: bytes  # the elements
    spans: dict[int, tuple[int, int]]  # owner -> its backends' [start, end)
    twins: set[int]  # owners holding one address and port under two ids
    mixed: set[int]  # owners with a backend that is not active, or terminating
    # in the map's (id) order: the elements and their ids (for ``orphans``)
    map_values: bytes
    map_ids: bytes

    @classmethod
    def read(
        cls, m: PinnedMap, family: int, addresses: _Addresses, shared_ports: dict[int, int]
    ) -> _BackendColumns:
        element = _FAMILIES[family][1]
        keys, map_values, count = m.dump_raw()
        map_values = map_values[: count * element.size]
        map_ids = keys[: count * 4]
        values, id_bytes, twins = _order(map_values, map_ids, _LAYOUTS[family].address_size)
        ids = _u32s(id_bytes)
        flat, spans, mixed = _backends(values, family, addresses, shared_ports)
        return cls(
            family,
            addresses,
            flat,
            ids,
            id_bytes,
            _id_records(values, ids, family),
            values,
            spans,
            twins,
            mixed,
            map_values,
            map_ids,
        )

    def take_all(
        self, sids: list[int], counts: list[int], slots: _SlotMap
    ) -> tuple[list[tuple[Any, ...]], list[_Slots | None], list[bool], list[IdTable]]:
        """``take`` for frontends ``sids`` (with their slot ``counts``), as columns in
        their order. The usual frontends (one run of backends, none a twin, all active
        and not terminating, in the slots in order: every one, after a first sync) are
        found together (_SlotMap.runs) and their stores and id tables cut as slices
        with no Python step each; only the others take one."""
        spans, n = self.spans, len(sids)
        if not n:
            return [], [], [], []
        starts, ends = zip(*map(spans.get, sids, repeat((-1, -1))), strict=True)
        usual: Sequence[int]
        if len(set(sids)) < n:  # one id under two frontends (a damaged map): one by one
            usual = bytes(n)
        else:
            usual = slots.runs(sids, counts, list(starts), list(ends), self.id_bytes)
            odd = self.twins | self.mixed
            if odd:
                usual = [r and s not in odd for r, s in zip(usual, sids, strict=True)]
        record = len(self.records) // len(self.ids) if self.ids else 0
        if _native_cut is not None:
            stored, tables = _native_cut(self.flat, self.records, record, spans, sids, bytes(usual))
        else:
            first, last = list(compress(starts, usual)), list(compress(ends, usual))
            stored = list(
                map(
                    self.flat.__getitem__,
                    map(slice, map(mul, first, repeat(2)), map(mul, last, repeat(2))),
                )
            )
            tables = list(
                map(
                    self.records.__getitem__,
                    map(slice, map(mul, first, repeat(record)), map(mul, last, repeat(record))),
                )
            )
            for sid in compress(sids, usual):
                del spans[sid]
        if len(stored) == n:
            return stored, [None] * n, [True] * n, tables
        backends: list[tuple[Any, ...]] = []
        slot_keys: list[_Slots | None] = []
        flat: list[bool] = []
        id_tables: list[IdTable] = []
        made = zip(stored, tables, strict=True)
        for sid, count, is_usual in zip(sids, counts, usual, strict=True):
            if is_usual:
                store, table = next(made)
                backends.append(store)
                slot_keys.append(None)
                flat.append(True)
                id_tables.append(table)
            else:
                store, keys, compact, table = self.take(sid, slots.ids(sid, count))
                backends.append(store)
                slot_keys.append(keys)
                flat.append(compact)
                id_tables.append(table)
        return backends, slot_keys, flat, id_tables

    def take(
        self, sid: int, slot_ids: list[int | None]
    ) -> tuple[tuple[Any, ...], _Slots | None, bool, IdTable]:
        """The backends of frontend ``sid`` (taken out of ``spans``), given the backend
        ids of its slots: (backends, slots, flat, its id table). ``flat``: the usual
        frontend, whose backends come as FrontendState's flat store and slots as None;
        else they are BackendStates and the slots their keys (None: the backends')."""
        span = self.spans.pop(sid, None)
        if span is None:
            return (), (), False, b""
        start, end = span
        if sid in self.twins:
            table: dict[BackendKey, int] = {}
            make = _FAMILIES[self.family][0]
            states, key_by_id = _backend_states(self.rows(start, end), make, self.addresses, table)
            return (
                states,
                _slot_keys(slot_ids, key_by_id),
                False,
                pack_ids(table, v6=self.family == 6),
            )
        ids = self.ids[start:end]
        record = len(self.records) // len(self.ids)
        id_table = self.records[start * record : end * record]
        if slot_ids == ids:  # every backend, in order: the usual
            if sid not in self.mixed:
                return self.flat[2 * start : 2 * end], None, True, id_table
            return self.states(start, end), None, False, id_table
        states = self.states(start, end)
        key_by_id = dict(zip(ids, map(_backend_key, states), strict=True))
        return states, _slot_keys(slot_ids, key_by_id), False, id_table

    def states(self, start: int, end: int) -> tuple[BackendState, ...]:
        """The BackendStates of the backends [start, end)."""
        flat, size = self.flat, _LAYOUTS[self.family].element.size
        flags = _LAYOUTS[self.family].flags(self.values[start * size : end * size])
        return tuple(
            map(
                _make_tuple,
                repeat(BackendState),
                zip(
                    flat[2 * start : 2 * end : 2],
                    flat[2 * start + 1 : 2 * end : 2],
                    map(_IS_ACTIVE.__getitem__, flags),
                    map(_IS_TERMINATING.__getitem__, flags),
                    strict=True,
                ),
            )
        )

    def rows(self, start: int, end: int) -> list[_Row]:
        layouts = _LAYOUTS[self.family]
        values = self.values[start * layouts.element.size : end * layouts.element.size]
        return list(
            zip(
                _column(layouts.address, values),
                layouts.ports(values),
                layouts.flags(values),
                self.ids[start:end],
                strict=True,
            )
        )

    def orphans(self) -> list[int]:
        """The ids of the backends of the owners left in ``spans``: grouped by owner
        in the order each owner first occurs in the map, each owner's in id order."""
        left = self.spans.keys()
        if not left:
            return []
        by_owner: dict[int, list[int]] = {}
        owners, ids = _LAYOUTS[self.family].owners(self.map_values), _u32s(self.map_ids)
        for i in compress(range(len(ids)), map(left.__contains__, owners)):
            by_owner.setdefault(owners[i], []).append(ids[i])
        return list(chain.from_iterable(by_owner.values()))


def read_state(maps: BpfMaps) -> MapState:
    """Everything the maps hold, read with batch dumps (four syscalls per few thousand
    elements) and decoded from the dumped buffers whole, column by column, so a
    restarted agent adopts 100,000 services in about 0.7 s of CPU with
    ebpflb._readback (some 0.15 s of it outside the GIL), 1.5 s without (2.0 s when
    it took a Python step per frontend). No collection runs meanwhile (see gcpause):
    every object built survives the read, and at 100,000 services the collections cost
    more than the read itself (the CLI's reads: 5.4 s, not 1.8 s)."""
    with no_collections():
        return _read_state(maps)


def _read_state(maps: BpfMaps) -> MapState:
    out = MapState()
    slots = _SlotMap.read(maps.slots)
    names = _PortNames(maps.meta)
    shared_ports: dict[int, int] = {}  # see _BackendColumns.read
    out.src_ranges = read_src_ranges(maps)
    for family, svc_map, be_map, orphans in (
        (4, maps.svc, maps.backends, out.orphan_backends),
        (6, maps.svc6, maps.backends6, out.orphan_backends6),
    ):
        backends = _BackendColumns.read(be_map, family, {}, shared_ports)
        _read_frontends(out, svc_map, backends, slots, names)
        orphans.extend(backends.orphans())
    out.orphan_svc_ids.extend(names.left())
    return out


_SLOT_STEP = 1 << _SLOT_SHIFT


def _read_frontends(
    out: MapState,
    svc_map: PinnedMap,
    be: _BackendColumns,
    slots: _SlotMap,
    names: _PortNames,
) -> None:
    """Every frontend of one family's service map into ``out``, each with its
    backends (taken out of ``be``): field by field, as columns in the frontends'
    order, so that the usual frontend takes no Python step of its own (at 100,000
    Services, one step per frontend was ~0.9 s of the read)."""
    family, addresses = be.family, be.addresses
    make, no_address = _FAMILIES[family][0], _FAMILIES[family][4]
    key_buf, fronts, entries = _services(svc_map, family)
    if not fronts:
        return
    _packed, dports, proto_nos, _pads = zip(*fronts, strict=True)
    sids, counts, flags, affinity, snat = (list(c) for c in zip(*entries, strict=True))
    protos = list(map(_PROTOCOLS.__getitem__, proto_nos))
    kind_of = {f: kind_from_flags(f) for f in set(flags)}
    front_addresses = _addresses_of(addresses, family, key_buf, _SVC_KEYS[family].size, 0)
    keys = list(zip(front_addresses, dports, protos, strict=True))
    frontends = _objects(
        Frontend,
        _FRONTEND_FIELDS,
        front_addresses,
        dports,
        protos,
        list(map(kind_of.__getitem__, flags)),
        keys,
    )
    port_names = names.take_all(sids, protos, proto_nos)
    backends, slot_keys, flat, tables = be.take_all(sids, counts, slots)
    stores = list(map(compact_store, backends))  # the flat ones packed, as plan stores them
    n = len(sids)
    snat_addresses: list[IPAddress | None] = [None] * n
    for i in compress(range(n), map(ne, snat, repeat(no_address))):
        snat_addresses[i] = _address(addresses, make, snat[i])
    ranges: list[tuple[IPNetwork, ...]] = [()] * n
    for i in compress(range(n), map(and_, flags, repeat(_SRC_RANGES))):
        ranges[i] = out.src_ranges.get(sids[i], ())
    drops = list(map(bool, map(and_, flags, repeat(_DROP_EMPTY))))
    columns = (frontends, port_names, stores, slot_keys, affinity, snat_addresses, ranges, drops)
    # the usual ones with their compact store as it is (as FrontendState.from_entry
    # makes it), the others through the constructor
    states: list[FrontendState] = _objects(
        FrontendState, _STATE_FIELDS, *(list(compress(c, flat)) for c in columns)
    )
    if len(states) < n:
        made = iter(states)
        states = [
            next(made) if is_flat else FrontendState(*fields)
            for is_flat, *fields in zip(flat, *columns, strict=True)
        ]
    out.svc_ids.update(zip(keys, sids, strict=True))
    out.slot_counts.update(zip(sids, counts, strict=True))
    out.frontends.update(zip(keys, states, strict=True))
    # as the writer keeps them: a table per frontend with backends
    out.tables.update(compress(zip(sids, tables, strict=True), tables))
    if family == 6:
        out.tables6.update(compress(sids, tables))


# a service key (abi.PACK_LB4_KEY / _LB6_) with its port read in network order, and
# whole, as bytes
_SVC_KEYS = {4: struct.Struct(">4sHBB"), 6: struct.Struct(">16sHBB")}
_SVC_KEY_BYTES = {family: struct.Struct(f"{s.size}s") for family, s in _SVC_KEYS.items()}


def _records(keys: bytes, key_size: int, values: bytes, value_size: int) -> tuple[bytes, bytes]:
    """Elements (a key and a value each, packed in two buffers) sorted by their keys'
    bytes, ties in their order: in C, outside the GIL, or in Python (_records_py)."""
    if _native_records is not None:
        return _native_records(keys, key_size, values, value_size)
    return _records_py(keys, key_size, values, value_size)


def _records_py(keys: bytes, key_size: int, values: bytes, value_size: int) -> tuple[bytes, bytes]:
    key_bytes = _column(struct.Struct(f"{key_size}s"), keys)
    order = sorted(range(len(key_bytes)), key=key_bytes.__getitem__)
    value_bytes = _column(struct.Struct(f"{value_size}s"), values)
    return (
        b"".join(map(key_bytes.__getitem__, order)),
        b"".join(map(value_bytes.__getitem__, order)),
    )


def _services(
    m: PinnedMap, family: int
) -> tuple[bytes, list[tuple[bytes, int, int, int]], list[tuple[int, int, int, int, bytes]]]:
    """A service map's elements in (address, port, protocol) order, as translation
    builds its frontends, and those of a known protocol only: their keys packed, one
    after another, and decoded (the port in host order), and their values decoded.
    The states are made in the order the first sync's diff then walks them, which
    touches memory in order (in the map's own order, desired state + diff took 0.9 s
    at 100,000 Services, not 0.7 s). Sorted as the keys' bytes (address and port in
    network order), which compare in C, not as tuples."""
    keys, values, n = m.dump_raw()
    key_layout, value_layout = _SVC_KEYS[family], _FAMILIES[family][3]
    keys, values = keys[: n * key_layout.size], values[: n * value_layout.size]
    keys, values = _records(keys, key_layout.size, values, value_layout.size)
    fronts = list(key_layout.iter_unpack(keys))
    entries = list(value_layout.iter_unpack(values))
    known = list(map(_PROTOCOLS.__contains__, map(_third, fronts)))
    if not all(known):
        keys = b"".join(compress(_column(_SVC_KEY_BYTES[family], keys), known))
        return keys, list(compress(fronts, known)), list(compress(entries, known))
    return keys, fronts, entries


# a service's names: namespace (None: the element names no Service), name, port name
_Names = tuple[str | None, str, str]
_META_FIELDS = (
    struct.Struct("<64s80x"),
    struct.Struct("<64x64s16x"),
    struct.Struct("<128x16s"),
)
_META_SIZES = (64, 64, 16)  # the sizes of those fields, as abi.LbSvcMeta has them


def _names_of(keys: bytes, values: bytes) -> dict[int, _Names | None]:
    """The service meta map's elements (svc ids as native u32s, packed values): svc id
    -> (namespace, name, port name), or None where the namespace is all NULs (the
    element names no Service). A namespace or port name string is made once per
    distinct value. In C (ebpflb._readback.names) or in Python (_names_of_py)."""
    if _native_names is not None:
        return _native_names(keys, values, *_META_SIZES)
    return _names_of_py(keys, values)


def _names_of_py(keys: bytes, values: bytes) -> dict[int, _Names | None]:
    ns_raw, name_raw, port_raw = (_column(layout, values) for layout in _META_FIELDS)
    namespaces = {r: _cstr(r) if r.strip(b"\0") else None for r in dict.fromkeys(ns_raw)}
    ports = {raw: _cstr(raw) for raw in dict.fromkeys(port_raw)}
    service_names = map(
        bytes.decode,
        map(_first, map(bytes.split, name_raw, repeat(b"\0"), repeat(1))),
        repeat("utf-8"),
        repeat("replace"),
    )
    names: dict[int, _Names | None] = dict(
        zip(
            _u32s(keys),
            zip(
                map(namespaces.__getitem__, ns_raw),
                service_names,
                map(ports.__getitem__, port_raw),
                strict=True,
            ),
            strict=True,
        )
    )
    if None in namespaces.values():
        unnamed = [sid for sid, found in names.items() if found and found[0] is None]
        names.update(zip(unnamed, repeat(None)))
    return names


class _PortNames:
    """The service meta map read (decoded by column: a namespace or port name string
    is made once per distinct value), and each frontend's ServicePortName made from it
    once per distinct (names, protocol): the frontends of one Service port (ClusterIP,
    NodePort on each node address, load-balancer IPs) share one."""

    def __init__(self, m: PinnedMap) -> None:
        keys, values, count = m.dump_raw()
        # svc id -> its names; None: the element names no Service (no namespace)
        self._names: dict[int, _Names | None] = _names_of(
            keys[: count * 4], values[: count * abi.PACK_LB_SVC_META.size]
        )
        # protocol number -> names -> the ServicePortName made of them (None: none),
        # and those made but not yet put there (a later take_all needs them, if any)
        self._made: dict[int, dict[_Names | None, ServicePortName]] = {}
        self._pending: dict[int, list[tuple[list[_Names | None], list[ServicePortName]]]] = {}

    def _made_for(self, number: int) -> dict[_Names | None, ServicePortName]:
        made = self._made.setdefault(number, {})
        for names, port_names in self._pending.pop(number, ()):
            made.update(zip(names, port_names, strict=True))
        return made

    def take_all(
        self, sids: list[int], protos: list[Protocol], proto_nos: Sequence[int]
    ) -> list[ServicePortName]:
        """Frontends ``sids``' (their names are taken: see ``left``), the new ones
        made together, protocol by protocol; a frontend without names gets
        ``svc-<id>`` in namespace ""."""
        every: list[_Names | None] = list(map(self._names.pop, sids, repeat(None)))
        numbers = set(proto_nos)
        out: list[ServicePortName | None] = [None] * len(sids) if len(numbers) > 1 else []
        for number in numbers:
            mine = list(map(eq, proto_nos, repeat(number))) if len(numbers) > 1 else None
            names = every if mine is None else list(compress(every, mine))
            made = self._made_for(number)
            new = dict.fromkeys(names)
            new.pop(None, None)
            fresh = [n for n in new if n not in made] if made else list(new)
            port_names: list[ServicePortName] = []
            if fresh:
                namespaces, service_names, ports = zip(*fresh, strict=True)
                refs = _objects(ServiceRef, _REF_FIELDS, namespaces, service_names)
                port_names = _objects(
                    ServicePortName,
                    _PORT_NAME_FIELDS,
                    refs,
                    ports,
                    [_PROTOCOLS[number]] * len(fresh),
                )
            found: list[ServicePortName | None]
            if len(fresh) == len(names):  # each frontend's names its own, and new: in order
                found = list(port_names)
                self._pending.setdefault(number, []).append((fresh, port_names))
            else:
                made.update(zip(fresh, port_names, strict=True))
                found = list(map(made.get, names))
            if mine is None:
                out = found
            else:
                at = iter(found)
                out = [next(at) if is_mine else o for o, is_mine in zip(out, mine, strict=True)]
        for i in compress(range(len(out)), map(is_, out, repeat(None))):
            out[i] = ServicePortName(ServiceRef("", f"svc-{sids[i]}"), "", protos[i])
        return cast(list[ServicePortName], out)  # each None replaced

    def left(self) -> list[int]:
        """The svc ids of the names that no frontend took."""
        return list(self._names)
