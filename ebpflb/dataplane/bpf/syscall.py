"""The bpf(2) system call through ctypes: open pinned maps, read and write elements
(one at a time or in batches, or through an mmapable array's memory), read map info,
create, update and detach links, and BPF_PROG_TEST_RUN.

Kept free of bcc so that inspection (``ebpflb services`` ...) works on a machine
where bcc cannot compile, and while the agent is down.

glibc has no bpf() wrapper, so the call goes through syscall(2) with the system call
number, which differs per architecture (x86-64 321, arm64 280, ...). The number is
chosen from the machine on first use; on a machine not in the table every bpf call
raises a ``BpfUnavailableError`` naming it, rather than making some other system call.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import mmap
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from ebpflb import libc
from ebpflb.errors import BpfUnavailableError, DataplaneError

# __NR_bpf per platform.machine() (uname -m), from the kernel's syscall tables:
# arch/x86/entry/syscalls/syscall_{64,32}.tbl, arch/arm/tools/syscall.tbl,
# arch/powerpc/kernel/syscalls/syscall.tbl, arch/s390/kernel/syscalls/syscall.tbl, and
# include/uapi/asm-generic/unistd.h for the architectures that use the generic table
# (arm64, riscv, loongarch). mips (a different base per ABI) and sparc are left out.
BPF_SYSCALL_NUMBERS: dict[str, int] = {
    "x86_64": 321,
    "amd64": 321,
    "i386": 357,
    "i486": 357,
    "i586": 357,
    "i686": 357,
    "aarch64": 280,
    "arm64": 280,
    "aarch64_be": 280,
    "armv6l": 386,
    "armv7l": 386,
    "armv8l": 386,
    "ppc64le": 361,
    "ppc64": 361,
    "ppc": 361,
    "s390x": 351,
    "s390": 351,
    "riscv64": 280,
    "riscv32": 280,
    "loongarch64": 280,
}
# A 32-bit process on a 64-bit kernel still sees the kernel's machine in uname, but
# must use its own ABI's numbers (x86-64's compat table is i386's, arm64's is arm's).
_COMPAT_32BIT = {"x86_64": "i686", "amd64": "i686", "aarch64": "armv7l", "arm64": "armv7l"}


def bpf_syscall_number(machine: str | None = None, *, pointer_bits: int | None = None) -> int:
    """The bpf(2) system call number for `machine` (default: this one) and a process
    whose pointers are `pointer_bits` wide (default: this one's)."""
    machine = platform.machine() if machine is None else machine
    bits = ctypes.sizeof(ctypes.c_void_p) * 8 if pointer_bits is None else pointer_bits
    key = _COMPAT_32BIT.get(machine.lower(), machine) if bits == 32 else machine
    number = BPF_SYSCALL_NUMBERS.get(key.lower())
    if number is None:
        raise BpfUnavailableError(
            f"unknown bpf(2) system call number for machine {machine!r} ({bits}-bit): "
            f"known are {', '.join(sorted(BPF_SYSCALL_NUMBERS))}",
            fix="run the userspace data path (--dataplane userspace) on this architecture",
        )
    return number


_nr_bpf: int | None = None  # chosen on the first call

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34
BPF_F_REPLACE = 1 << 2  # BPF_LINK_UPDATE: only if the link still runs old_prog_fd
BPF_LINK_TYPE_CGROUP = 3

BPF_ANY = 0
_ENOTSUPP = 524  # kernel-internal 'not supported', returned for batch ops
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_ARRAY = 2
BPF_F_INNER_MAP = 1 << 12  # an inner map whose size may differ from the template's
BPF_F_MMAPABLE = 1 << 10  # an array whose values userspace may mmap() (map_mmap)
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}


class MapType(enum.IntEnum):
    """The map types ebpflb pins (uapi enum bpf_map_type)."""

    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def name_of(cls, value: int) -> str:
        """`lru-hash`; `type 27` for a type not listed here."""
        try:
            return cls(value).label
        except ValueError:
            return f"type {value}"


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _CreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    global _nr_bpf
    if _nr_bpf is None:
        _nr_bpf = bpf_syscall_number()
    return libc.syscall(_nr_bpf, cmd, attr, ctypes.sizeof(attr))


def _addr(obj: ctypes._CData | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


def _array(elem: type, items: list[Any]) -> ctypes.Array[Any]:
    """A C array of `items` (ctypes' `type * n` is opaque to mypy)."""
    array_type: Any = elem * len(items)  # type: ignore[operator]
    return array_type(*items)  # type: ignore[no-any-return]


def possible_cpus() -> int:
    """Number of possible CPUs: the stride count of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += (int(hi) if hi else int(lo)) - int(lo) + 1
    return total


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    name: str,
    *,
    flags: int = 0,
    inner_map_fd: int = 0,
) -> int:
    """A new map's fd (an inner map, which lives as long as an outer map holds it; or a
    map of maps shaped as `inner_map_fd`)."""
    return _bpf(
        BPF_MAP_CREATE,
        _CreateAttr(
            map_type=map_type,
            key_size=key_size,
            value_size=value_size,
            max_entries=max_entries,
            map_flags=flags,
            inner_map_fd=inner_map_fd,
            map_name=name.encode()[:15],
        ),
    )


class _GetIdAttr(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program (e.g. to a cgroup) through a link: it stays attached while an
    fd of the link or a pin of it (obj_pin) is held, and no longer."""
    return _bpf(
        BPF_LINK_CREATE,
        _LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type),
    )


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _LinkInfo(ctypes.Structure):
    """struct bpf_link_info, up to its cgroup member (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),  # the union that follows is 8-byte aligned
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class LinkInfo:
    type: int  # BPF_LINK_TYPE_*
    id: int
    prog_id: int  # the program the link runs now
    cgroup_id: int  # of a cgroup link (0 once its cgroup is gone)
    attach_type: int  # of a cgroup link


def link_info(fd: int) -> LinkInfo:
    """What the link behind `fd` is, and which program it runs."""
    info = _LinkInfo()
    _bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
    )
    return LinkInfo(info.type, info.id, info.prog_id, info.cgroup_id, info.attach_type)


def link_update(link_fd: int, new_prog_fd: int, *, old_prog_fd: int) -> None:
    """Swap the link's program for another, in one step: the hook never runs without
    one. Refused (EPERM) unless the link still runs old_prog_fd's program."""
    _bpf(
        BPF_LINK_UPDATE,
        _LinkUpdateAttr(
            link_fd=link_fd, new_prog_fd=new_prog_fd, flags=BPF_F_REPLACE, old_prog_fd=old_prog_fd
        ),
    )


def link_detach(link_fd: int) -> None:
    """Detach the link's program now, whoever else holds the link (a pin, an fd)."""
    _bpf(BPF_LINK_DETACH, _GetIdAttr(id=link_fd))


def link_fd_by_id(link_id: int) -> int:
    """A new fd for the link with this id; FileNotFoundError once it is gone."""
    return _bpf(BPF_LINK_GET_FD_BY_ID, _GetIdAttr(id=link_id))


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for the loaded program with this id."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id))


def map_fd_by_id(map_id: int) -> int:
    """A new fd for the map with this id (an inner map found in an outer one)."""
    return _bpf(BPF_MAP_GET_FD_BY_ID, _GetIdAttr(id=map_id))


def obj_pin(fd: int, path: str) -> None:
    """Pin a program or map fd at `path` (on a bpffs)."""
    buf = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(buf), bpf_fd=fd))


def obj_get(path: str) -> int:
    """A new fd for the object pinned at `path`."""
    buf = ctypes.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(buf)))


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    flags: int = 0  # BPF_F_* it was made with

    @property
    def percpu(self) -> bool:
        return self.type in _PERCPU_TYPES


def map_info(fd: int) -> MapInfo:
    """Type, id, key and value size, entries and name of the map behind `fd`."""
    info = _MapInfo()
    _bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
    )
    return MapInfo(
        info.type,
        info.id,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.name.decode(errors="replace"),
        info.map_flags,
    )


def array_stride(value_size: int) -> int:
    """Bytes from one element of an array map to the next, as mmap() shows them: the
    kernel rounds each value up to 8 bytes (a u32 value sits in the first 4)."""
    return (value_size + 7) & ~7


def map_mmap(fd: int, length: int) -> mmap.mmap:
    """The values of the BPF_F_MMAPABLE array behind `fd`, mapped shared and writable:
    element i at i * array_stride(value_size). A store is seen by the programs at
    once (no system call per element). `length` may not exceed the map's values
    rounded up to a page (EINVAL). Close it (or use it as a context manager): the
    mapping holds the map alive."""
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)


K = TypeVar("K", bound="ctypes._CData")
V = TypeVar("V", bound="ctypes._CData")


class PinnedMap:
    """A map opened from its pin; values are ctypes objects of the caller's types."""

    def __init__(self, path: str, *, fd: int | None = None) -> None:
        """The map pinned at `path`; or, with `fd`, that map (which this object then
        owns), `path` naming it in messages."""
        self.path = path
        if fd is None:
            buf = ctypes.create_string_buffer(path.encode())
            try:
                fd = _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(buf)))
            except OSError as exc:
                raise DataplaneError(f"cannot open pinned map {path}: {exc.strerror}") from exc
        self.fd = fd
        self.info = self._info()
        self._ncpu = possible_cpus() if self.info.percpu else 1

    def _info(self) -> MapInfo:
        return map_info(self.fd)

    def object_kind(self) -> str:
        """What the pin holds: "map", "program", "link" (BPF_OBJ_GET opens any of them,
        and GET_INFO_BY_FD on a program fills the map info with the program's)."""
        try:
            target = os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return "map"  # no /proc: the info above is all there is to go by
        kind = target.removeprefix("anon_inode:").replace("_", "-").removeprefix("bpf-")
        return {"prog": "program"}.get(kind, kind)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: ctypes._CData, value_type: type[V]) -> V | None:
        value = value_type()
        attr = _ElemAttr(map_fd=self.fd, key=_addr(key), value=_addr(value))
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return value

    def lookup_percpu(self, key: ctypes._CData, value_type: type[V]) -> list[V]:
        """All CPUs' values of a per-CPU map (value size is 8-byte aligned per CPU)."""
        stride = (ctypes.sizeof(value_type) + 7) & ~7
        buf = ctypes.create_string_buffer(stride * self._ncpu)
        attr = _ElemAttr(map_fd=self.fd, key=_addr(key), value=ctypes.addressof(buf))
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
        return [
            cast(V, cast(Any, value_type).from_buffer_copy(buf, i * stride))
            for i in range(self._ncpu)
        ]

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
        _bpf(
            BPF_MAP_UPDATE_ELEM,
            _ElemAttr(map_fd=self.fd, key=_addr(key), value=_addr(value), flags=flags),
        )

    def update_percpu(self, key: ctypes._CData, value: ctypes._CData) -> None:
        """Set every CPU's copy of a per-CPU map element to `value`."""
        size = ctypes.sizeof(value)
        stride = (size + 7) & ~7
        buf = ctypes.create_string_buffer(stride * self._ncpu)
        raw = bytes(value)
        for i in range(self._ncpu):
            ctypes.memmove(ctypes.addressof(buf) + i * stride, raw, size)
        _bpf(
            BPF_MAP_UPDATE_ELEM,
            _ElemAttr(map_fd=self.fd, key=_addr(key), value=ctypes.addressof(buf)),
        )

    def delete(self, key: ctypes._CData) -> bool:
        try:
            _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=self.fd, key=_addr(key)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self, key_type: type[K]) -> Iterator[K]:
        """Iterate keys with GET_NEXT_KEY (restarts safely if the current key vanishes)."""
        prev: K | None = None
        for _ in range(self.info.max_entries + 1):
            nxt = key_type()
            attr = _ElemAttr(map_fd=self.fd, key=_addr(prev), value=ctypes.addressof(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            yield nxt
            prev = nxt

    @property
    def capacity(self) -> int:
        """Entries the map holds (a map whose elements are not entries says otherwise)."""
        return int(self.info.max_entries)

    def count(self) -> int:
        """Entries in use."""
        return self.dump_raw()[2]

    def items(self, key_type: type[K], value_type: type[V]) -> list[tuple[K, V]]:
        out: list[tuple[K, V]] = []
        for key in self.keys(key_type):
            value = self.lookup(key, value_type)
            if value is not None:
                out.append((key, value))
        return out

    def update_batch_raw(
        self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY
    ) -> None:
        """BPF_MAP_UPDATE_BATCH from packed keys and values (the fast path of the map
        writer: struct.pack is far cheaper than a ctypes object per element)."""
        if count == 0:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        attr = _BatchAttr(
            keys=ctypes.addressof(kbuf),
            values=ctypes.addressof(vbuf),
            count=count,
            map_fd=self.fd,
            elem_flags=flags,
        )
        try:
            _bpf(BPF_MAP_UPDATE_BATCH, attr)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, _ENOTSUPP):
                raise
            ks, vs = self.info.key_size, len(values) // count
            for i in range(count):
                k = ctypes.create_string_buffer(keys[i * ks : (i + 1) * ks], ks)
                v = ctypes.create_string_buffer(values[i * vs : (i + 1) * vs], vs)
                _bpf(
                    BPF_MAP_UPDATE_ELEM,
                    _ElemAttr(
                        map_fd=self.fd,
                        key=ctypes.addressof(k),
                        value=ctypes.addressof(v),
                        flags=flags,
                    ),
                )

    def delete_batch_raw(self, keys: bytes, count: int) -> None:
        if count == 0:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        attr = _BatchAttr(keys=ctypes.addressof(kbuf), count=count, map_fd=self.fd)
        try:
            _bpf(BPF_MAP_DELETE_BATCH, attr)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT, _ENOTSUPP):
                raise
            ks = self.info.key_size
            for i in range(count):
                k = ctypes.create_string_buffer(keys[i * ks : (i + 1) * ks], ks)
                try:
                    _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k)))
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise

    def dump_raw(self, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """Every element as (packed keys, packed values, count), read with
        BPF_MAP_LOOKUP_BATCH (GET_NEXT_KEY + LOOKUP per element when unsupported).
        Per-CPU values come as ncpu 8-byte-aligned copies per element."""
        ks = self.info.key_size
        vs = (
            ((self.info.value_size + 7) & ~7) * self._ncpu
            if self.info.percpu
            else self.info.value_size
        )
        keys_out, values_out, total = bytearray(), bytearray(), 0
        kbuf = ctypes.create_string_buffer(ks * chunk)
        vbuf = ctypes.create_string_buffer(vs * chunk)
        token_in = ctypes.create_string_buffer(max(8, ks))
        token_out = ctypes.create_string_buffer(max(8, ks))
        first = True
        for _ in range(self.info.max_entries // chunk + 2):
            attr = _BatchAttr(
                in_batch=0 if first else ctypes.addressof(token_in),
                out_batch=ctypes.addressof(token_out),
                keys=ctypes.addressof(kbuf),
                values=ctypes.addressof(vbuf),
                count=chunk,
                map_fd=self.fd,
            )
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    done = True
                elif exc.errno in (errno.EINVAL, _ENOTSUPP) and first:
                    return self._dump_slow()
                else:
                    raise
            n = attr.count
            keys_out += kbuf.raw[: n * ks]
            values_out += vbuf.raw[: n * vs]
            total += n
            if done:
                break
            ctypes.memmove(token_in, token_out, len(token_out.raw))
            first = False
        return bytes(keys_out), bytes(values_out), total

    def _dump_slow(self) -> tuple[bytes, bytes, int]:
        ks, vs = self.info.key_size, self.info.value_size
        keys_out, values_out, total = bytearray(), bytearray(), 0
        for key in self.keys(ctypes.c_char * ks):
            value = self.lookup(key, ctypes.c_char * vs)
            if value is not None:
                keys_out += bytes(key)
                values_out += bytes(value)
                total += 1
        return bytes(keys_out), bytes(values_out), total

    def update_batch(self, keys: list[K], values: list[V], flags: int = BPF_ANY) -> None:
        """One BPF_MAP_UPDATE_BATCH for many ctypes elements (single updates on kernels
        or map types without batch support)."""
        self.update_batch_raw(
            b"".join(bytes(k) for k in keys), b"".join(bytes(v) for v in values), len(keys), flags
        )

    def delete_batch(self, keys: list[K]) -> None:
        self.delete_batch_raw(b"".join(bytes(k) for k in keys), len(keys))


@dataclass(frozen=True)
class TestRunResult:
    __test__ = False  # a result, not a test class pytest should try to collect

    retval: int
    data: bytes
    duration_ns: int


def prog_test_run(
    prog_fd: int, packet: bytes, *, repeat: int = 1, out_size: int | None = None
) -> TestRunResult:
    """Run a loaded program on ``packet`` (BPF_PROG_TEST_RUN); duration is the mean
    ns per run as the kernel measured it."""
    size = out_size if out_size is not None else len(packet) + 256
    inbuf = ctypes.create_string_buffer(packet, len(packet))
    outbuf = ctypes.create_string_buffer(size)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_size_out=size,
        data_in=ctypes.addressof(inbuf),
        data_out=ctypes.addressof(outbuf),
        repeat=repeat,
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    return TestRunResult(
        int(ctypes.c_int32(attr.retval).value), outbuf.raw[: attr.data_size_out], attr.duration
    )
