"""The conntrack tables from userspace: bpf/lib/cttable.h's buckets, read and written
as the programs do.

A table is an array of CT_WAYS-way buckets; a key lives in the bucket its hash (seeded
per table, the seed in bucket 0's head) names, in a way whose tag is 16 bits of the
hash | 1. ``ConntrackTable`` gives it the interface of the hash map it replaced (look-up,
update, delete, keys, items, dump), so the CLI, the explainer, the telemetry and the
tests read flows as before. The agent never writes a table; a write from here (tests,
tools) reads a bucket and writes it back whole, so a program's write to the same bucket
in between would be lost: do not write a live node's table.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
from collections.abc import Iterator

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.syscall import (
    BPF_ANY,
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    BPF_NOEXIST,
    K,
    MapType,
    PinnedMap,
    V,
    array_stride,
    map_create,
    obj_pin,
)
from ebpflb.errors import DataplaneError

WAYS = abi.CT_WAYS
_HEAD = ctypes.sizeof(abi.CtHead)
_TAGS_AT = abi.CtHead.tags.offset
_TAG = ctypes.sizeof(ctypes.c_uint16)  # a way's tag
_SEED_AT = abi.CtHead.seed.offset
_M64 = (1 << 64) - 1
MULTIPLIERS = 11  # one plus one per 32-bit word of an IPv6 key


def ct_buckets(max_conntrack: int) -> int:
    """Buckets for --max-conntrack entries: twice that rounded up to a power of two, in
    ways (so a bucket is rarely full below max_conntrack entries)."""
    slots = 2 << max(0, max_conntrack - 1).bit_length()
    return max(1, slots // WAYS)


def tables_bytes(max_conntrack: int) -> int:
    """Kernel memory both families' tables take for --max-conntrack entries."""
    bucket_bytes = ctypes.sizeof(abi.Ct4Bucket) + ctypes.sizeof(abi.Ct6Bucket)
    return ct_buckets(max_conntrack) * bucket_bytes


def check_tables_fit(max_conntrack: int, memory_bytes: int | None) -> None:
    """Refuse a --max-conntrack whose tables would take more than half the node's
    memory (``memory_bytes``; None: unknown, nothing refused). The tables are allocated
    whole at load, so a stray digit would otherwise take the node's memory, not fail."""
    need = tables_bytes(max_conntrack)
    if memory_bytes is not None and need > memory_bytes // 2:
        gib = 1 << 30
        raise DataplaneError(
            f"--max-conntrack {max_conntrack}: the conntrack tables would take "
            f"{need / gib:.1f} GiB of kernel memory, more than half of this node's "
            f"{memory_bytes / gib:.1f} GiB",
            fix="give a smaller --max-conntrack (the default is "
            f"{abi.DEFAULT_MAX_CONNTRACK}: {tables_bytes(abi.DEFAULT_MAX_CONNTRACK) >> 20} MiB)",
        )


def memory_total(meminfo: str = "/proc/meminfo") -> int | None:
    """The node's memory in bytes (MemTotal), or None where it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def max_conntrack_of(buckets: int) -> int:
    """The --max-conntrack a table of ``buckets`` buckets was made for (rounded up to a
    power of two, as ct_buckets rounds it)."""
    return buckets * WAYS // 2


def ct_multipliers(seed: int) -> list[int]:
    """The hash's multipliers for a table seed: splitmix64's outputs 1..MULTIPLIERS from
    it, the loader's CT_M0..CT_M10 (cttable.h)."""
    out = []
    for i in range(MULTIPLIERS):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


def _hash(words: list[int], m: list[int]) -> int:
    """cttable.h's hash of a key's 32-bit words with multipliers m: the top 32 bits of
    m0 + m1 w0 + m2 w1 + ... mod 2^64."""
    total = m[0]
    for i, w in enumerate(words):
        total += w * m[i + 1]
    return (total & _M64) >> 32


class ConntrackTable(PinnedMap):
    """One family's conntrack table, read and written by key as a hash map is."""

    def __init__(
        self, path: str, key_type: type[ctypes.Structure], *, fd: int | None = None
    ) -> None:
        super().__init__(path, fd=fd)
        self.key_type = key_type
        self.key_size = ctypes.sizeof(key_type)
        self.slot_size = (self.info.value_size - _HEAD) // WAYS
        self.stride = array_stride(self.info.value_size)
        self._multipliers: list[int] | None = None  # the seed's, read at the first key

    def __enter__(self) -> ConntrackTable:
        return self

    @property
    def capacity(self) -> int:
        """Entries the table holds before a full bucket evicts one."""
        return int(self.info.max_entries) * WAYS

    def seed(self) -> int:
        return int.from_bytes(self._bucket(0)[_SEED_AT : _SEED_AT + 4], "little")

    def set_seed(self, seed: int) -> None:
        """Keep the seed the programs hash with in bucket 0 (before they run: the keys
        already in the table stay where the old seed put them)."""
        bucket = self._bucket(0)
        if int.from_bytes(bucket[_SEED_AT : _SEED_AT + 4], "little") != seed:
            bucket[_SEED_AT : _SEED_AT + 4] = seed.to_bytes(4, "little")
            self._write_bucket(0, bucket)
        self._multipliers = ct_multipliers(seed)

    def place(self, key: ctypes._CData) -> tuple[int, int]:
        """The bucket and the tag of ``key``, as the programs hash it."""
        if self._multipliers is None:  # the seed is fixed once the programs run
            self._multipliers = ct_multipliers(self.seed())
        raw = bytes(key)[: self.key_size]
        h = _hash(
            [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)],
            self._multipliers,
        )
        return h & (self.info.max_entries - 1), (h >> 16) | 1

    def _bucket(self, index: int) -> bytearray:
        raw = super().lookup(ctypes.c_uint32(index), ctypes.c_char * self.info.value_size)
        if raw is None:
            raise DataplaneError(f"{self.path}: bucket {index} cannot be read")
        return bytearray(bytes(raw))

    def _write_bucket(self, index: int, bucket: bytearray) -> None:
        """Write a bucket back whole, its lock free: see the module's note on writes."""
        bucket[:_TAGS_AT] = bytes(_TAGS_AT)
        super().update(ctypes.c_uint32(index), (ctypes.c_char * len(bucket)).from_buffer(bucket))

    def _tag(self, bucket: bytearray | bytes | memoryview, way: int) -> int:
        at = _TAGS_AT + _TAG * way
        return int.from_bytes(bucket[at : at + _TAG], "little")

    @staticmethod
    def _set_tag(bucket: bytearray, way: int, tag: int) -> None:
        at = _TAGS_AT + _TAG * way
        bucket[at : at + _TAG] = tag.to_bytes(_TAG, "little")

    def _slot_at(self, way: int) -> int:
        return _HEAD + way * self.slot_size

    def _way_of(self, bucket: bytearray, key: bytes, tag: int) -> int:
        for way in range(WAYS):
            at = self._slot_at(way)
            if self._tag(bucket, way) == tag and bucket[at : at + self.key_size] == key:
                return way
        return -1

    def lookup(self, key: ctypes._CData, value_type: type[V]) -> V | None:
        index, tag = self.place(key)
        bucket = self._bucket(index)
        way = self._way_of(bucket, bytes(key)[: self.key_size], tag)
        if way < 0:
            return None
        at = self._slot_at(way) + self.key_size
        return _from_bytes(value_type, bytes(bucket[at : at + ctypes.sizeof(value_type)]))

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
        """Write key's entry (BPF_NOEXIST: only where there is none, else FileExistsError)
        into an empty way, or the least recently seen one's, as the programs do."""
        index, tag = self.place(key)
        raw_key = bytes(key)[: self.key_size]
        bucket = self._bucket(index)
        way = self._way_of(bucket, raw_key, tag)
        if way >= 0 and flags == BPF_NOEXIST:
            raise FileExistsError(f"{self.path}: the key has an entry")
        if way < 0:
            same = [w for w in range(WAYS) if self._tag(bucket, w) == tag]
            # the programs compare two ways of a tag: never a third (cttable.h)
            way = same[0] if len(same) >= 2 else self._free_way(bucket)
        at = self._slot_at(way)
        bucket[at : at + self.slot_size] = (raw_key + bytes(value)).ljust(self.slot_size, b"\0")
        self._set_tag(bucket, way, tag)
        self._write_bucket(index, bucket)

    def delete(self, key: ctypes._CData) -> bool:
        index, tag = self.place(key)
        bucket = self._bucket(index)
        way = self._way_of(bucket, bytes(key)[: self.key_size], tag)
        if way >= 0:
            self._set_tag(bucket, way, 0)
            self._write_bucket(index, bucket)
        return way >= 0

    def delete_batch_raw(self, keys: bytes, count: int) -> None:
        for i in range(count):
            self.delete(
                self.key_type.from_buffer_copy(keys[i * self.key_size : (i + 1) * self.key_size])
            )

    def clear(self) -> None:
        """Empty every way (the seed stays)."""
        for index in range(self.info.max_entries):
            bucket = self._bucket(index)
            if any(bucket[_TAGS_AT : _TAGS_AT + _TAG * WAYS]):
                bucket[_TAGS_AT : _TAGS_AT + _TAG * WAYS] = bytes(_TAG * WAYS)
                self._write_bucket(index, bucket)

    def _free_way(self, bucket: bytearray) -> int:
        for way in range(WAYS):
            if not self._tag(bucket, way):
                return way
        seen_at = self.key_size + abi.Ct4Value.last_seen_ns.offset  # same in Ct6Value

        def last_seen(way: int) -> int:
            at = self._slot_at(way) + seen_at
            return int.from_bytes(bucket[at : at + 8], "little")

        return min(range(WAYS), key=last_seen)

    def _all_buckets(self) -> bytes:
        """Every bucket, stride apart: through mmap() in one copy, or, from a table not
        made mmapable (not the loader's), a batch look-up."""
        size = self.info.max_entries * self.stride
        try:
            with mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mem:
                return mem[:size]
        except OSError:
            _keys, values, count = PinnedMap.dump_raw(self)
            return values[: count * self.info.value_size]

    def _tag_columns(self, buckets: bytes) -> list[memoryview]:
        """Way w's tags of every bucket, column w."""
        tags = memoryview(buckets).cast("H")
        words = self.stride // _TAG
        return [tags[_TAGS_AT // _TAG + way :: words] for way in range(WAYS)]

    def dump_raw(self, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """Every entry's key and value, packed as a hash map's dump gives them."""
        buckets = self._all_buckets()
        keys, values = bytearray(), bytearray()
        count = 0
        value_size = self.slot_size - self.key_size
        for way, column in enumerate(self._tag_columns(buckets)):
            slot = _HEAD + way * self.slot_size
            for index, tag in enumerate(column):
                if tag:
                    at = index * self.stride + slot
                    keys += buckets[at : at + self.key_size]
                    values += buckets[at + self.key_size : at + self.key_size + value_size]
                    count += 1
        return bytes(keys), bytes(values), count

    def count(self) -> int:
        """Entries in use (the tags only, not every entry's key and value)."""
        buckets = self._all_buckets()
        return sum(len(c) - c.tolist().count(0) for c in self._tag_columns(buckets))

    def keys(self, key_type: type[K]) -> Iterator[K]:
        keys, _values, count = self.dump_raw()
        size = ctypes.sizeof(key_type)
        for i in range(count):
            yield _from_bytes(key_type, keys[i * self.key_size : i * self.key_size + size])

    def items(self, key_type: type[K], value_type: type[V]) -> list[tuple[K, V]]:
        keys, values, count = self.dump_raw()
        value_size = self.slot_size - self.key_size
        ksize, vsize = ctypes.sizeof(key_type), ctypes.sizeof(value_type)
        return [
            (
                _from_bytes(key_type, keys[i * self.key_size : i * self.key_size + ksize]),
                _from_bytes(value_type, values[i * value_size : i * value_size + vsize]),
            )
            for i in range(count)
        ]


def _from_bytes(kind: type[V], raw: bytes) -> V:
    out = kind()
    ctypes.memmove(ctypes.addressof(out), raw, len(raw))
    return out


def new_seed() -> int:
    """A random non-zero table seed."""
    return secrets.randbits(32) or 1


def table_seed(pin_dir: str) -> int:
    """The seed to compile the programs with: the pinned IPv4 table's, else a new one
    (stamp_seed writes it once the programs' load has made the tables)."""
    path = os.path.join(pin_dir, abi.MAP_CONNTRACK)
    if os.path.exists(path):
        try:
            with ConntrackTable(path, abi.Ct4Key) as table:
                if table.object_kind() == "map" and table.info.type == MapType.ARRAY:
                    return table.seed()
        except (OSError, DataplaneError):
            pass
    return new_seed()


def stamp_seed(pin_dir: str, seed: int) -> None:
    """Write the seed into bucket 0 of each table (where it is not there yet), so the
    next load and the CLI hash keys with it."""
    for name, key_type in ((abi.MAP_CONNTRACK, abi.Ct4Key), (abi.MAP_CONNTRACK6, abi.Ct6Key)):
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        with ConntrackTable(path, key_type) as table:
            table.set_seed(seed)


def migrate_conntrack(pin_dir: str) -> None:
    """Copy what an older version's conntrack LRU hashes hold into the bucket tables that
    replaced them (made here, pinned, with a new seed), before the old pins go, so
    established flows keep their backends and replies across the upgrade. Nothing is
    done where the new table exists already."""
    pairs = (
        (abi.Ct4Key, abi.Ct4Bucket),
        (abi.Ct6Key, abi.Ct6Bucket),
    )
    seed = None
    for (old, new), (key_type, bucket_type) in zip(
        abi.CONNTRACK_MIGRATED.items(), pairs, strict=True
    ):
        old_path, new_path = os.path.join(pin_dir, old), os.path.join(pin_dir, new)
        if not os.path.exists(old_path) or os.path.exists(new_path):
            continue
        with PinnedMap(old_path) as src:
            info = src.info
            entry = ctypes.sizeof(key_type)
            if info.type != MapType.LRU_HASH or info.key_size != entry:
                continue
            keys, values, count = src.dump_raw()
            value_size = info.value_size
        if seed is None:
            seed = table_seed(pin_dir)
        fd = map_create(
            BPF_MAP_TYPE_ARRAY,
            4,
            ctypes.sizeof(bucket_type),
            ct_buckets(info.max_entries),
            new,
            flags=BPF_F_MMAPABLE,
        )
        with ConntrackTable(new_path, key_type, fd=fd) as table:
            table.set_seed(seed)
            for i in range(count):
                key = key_type.from_buffer_copy(keys[i * entry : (i + 1) * entry])
                value = values[i * value_size : (i + 1) * value_size]
                table.update(key, ctypes.create_string_buffer(value, value_size))
            obj_pin(table.fd, new_path)
