"""Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
Network Load Balancer", NSDI 2016), the optional backend choice of both data paths.

Each frontend gets a lookup table of M slots (M prime) filled with its active
backends: every backend walks its own permutation of the slots (an offset and a skip
from two hashes of its name) and the backends take turns claiming their next free
slot, so each gets M/N slots, give or take one. A new flow goes to the backend in
slot hash(5-tuple) mod M. Unlike a random choice, every node picks the same backend
for the same flow, and adding or removing one backend moves about 1/N of the flows.

The table is computed here, once per set of backends, and written into the kernel's
per-frontend table map; the kernel only looks it up. `flow_hash` is the kernel's
`lb4_flow_hash` (`lb6_flow_hash` for IPv6), bit for bit (on the same network-order
words), so the userspace path and anyone explaining a choice get the kernel's answer.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable, Sequence

from ebpflb.model import IPAddress, Protocol

# Primes, as Cilium offers them: M should be well above 100 x the backend count for
# the share of each backend to stay within about 1% of 1/N.
TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521)
DEFAULT_TABLE_SIZE = 1021
FLOW_HASH_SEED = 0x6562706C  # bpf/lib/consts.h
_MASK = 0xFFFFFFFF


# Each backend's walk comes from two blake2b hashes of its name; hashing from copies
# of these salted hashers costs half as much as making a hasher per name.
_OFFSET_HASH = hashlib.blake2b(digest_size=8, salt=b"offset")
_SKIP_HASH = hashlib.blake2b(digest_size=8, salt=b"skip")
_SALTED = {b"offset": _OFFSET_HASH, b"skip": _SKIP_HASH}


def _name_hash(name: str, salt: bytes) -> int:
    h = _SALTED[salt].copy()
    h.update(name.encode())
    return int.from_bytes(h.digest(), "little")


def walks(names: Sequence[str], size: int) -> tuple[list[int], list[int]]:
    """Each backend's permutation of the slots: offset, offset+skip, offset+2*skip...
    (mod size; size is prime, so every skip in [1, size) visits every slot). The
    offsets and skips that `_fill` and ebpflb/_maglevfill.c's fills take."""
    _check_size(size)
    if _native_walks is not None:
        return _native_walks(names, size)
    return _walks(names, size)


def _walks(names: Sequence[str], size: int) -> tuple[list[int], list[int]]:
    """The walks in Python: the reference for ebpflb/_maglevfill.c's (whose BLAKE2b
    hashes each name in C, about twice as fast), and the walks when that extension is
    not built."""
    offsets = [_name_hash(name, b"offset") % size for name in names]
    skips = [_name_hash(name, b"skip") % (size - 1) + 1 for name in names]
    return offsets, skips


def _check_size(size: int) -> None:
    if size not in TABLE_SIZES:
        raise ValueError(f"Maglev table size {size} is not one of {TABLE_SIZES}")


def table(names: Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """The Maglev table: slot -> index into `names` (the active backends, each named
    by "address:port" so that every node computes the same table). [] for none."""
    _check_size(size)
    if not names:
        return []
    offsets, skips = walks(names, size)
    if _native_fill is not None:
        return _native_fill(offsets, skips, size)
    return _fill(offsets, skips, size)


def table_ids(names: Sequence[str], ids: Sequence[int], size: int = DEFAULT_TABLE_SIZE) -> bytes:
    """`table(names, size)` with each backend index replaced by its id (`ids[i]` for
    `names[i]`, a u32): a Maglev inner map's values, native u32s, as
    array("I", ...).tobytes(). b"" for no backend."""
    _check_size(size)
    if len(ids) != len(names):
        raise ValueError(f"{len(ids)} Maglev ids for {len(names)} backends")
    if not names:
        return b""
    offsets, skips = walks(names, size)
    if _native_fill_ids is not None:
        return _native_fill_ids(offsets, skips, size, ids)
    return array("I", map(ids.__getitem__, _fill(offsets, skips, size))).tobytes()


def _fill(offsets: list[int], skips: list[int], size: int) -> list[int]:
    """The fill in Python: the reference for ebpflb/_maglevfill.c's, and the fill
    when that extension is not built. `cursor` is where each backend's walk stands.
    The backends take turns: size // n whole rounds, then the first size % n
    backends once more fill the last slots, so no per-claim count or test of "full"
    is needed (with more backends than slots, the first `size` take one each)."""
    cursor = list(offsets)
    walkers = list(enumerate(skips))
    entry = [-1] * size
    rounds, rest = divmod(size, len(walkers))
    for turns in [walkers] * rounds + [walkers[:rest]]:
        for i, skip in turns:
            slot = cursor[i]
            while entry[slot] >= 0:
                slot = (slot + skip) % size
            entry[slot] = i
            cursor[i] = (slot + skip) % size
    return entry


# The same fill in C (ebpflb/_maglevfill.c, built by `pip install`): about 30x
# faster, which a full sync of thousands of Maglev frontends needs; and the same
# walks, about 2x. Without a compiler at install time, the Python fill and walks
# above do the same work.
_native_fill: Callable[[list[int], list[int], int], list[int]] | None
_native_fill_ids: Callable[[list[int], list[int], int, Sequence[int]], bytes] | None
_native_walks: Callable[[Sequence[str], int], tuple[list[int], list[int]]] | None
try:
    from ebpflb import _maglevfill
except ImportError:
    _native_fill = _native_fill_ids = _native_walks = None
else:
    _native_fill, _native_fill_ids = _maglevfill.fill, _maglevfill.fill_ids
    _native_walks = _maglevfill.walks


def _mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    x ^= x >> 16
    return x


def _words(address: IPAddress) -> tuple[int, ...]:
    """An address as the kernel reads it: each network-order 4-byte word as a
    host-order integer (one for IPv4's __be32, four for an IPv6 addr6)."""
    packed = address.packed
    return tuple(int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4))


def _be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def flow_hash(
    client: IPAddress, client_port: int, frontend: IPAddress, frontend_port: int, protocol: Protocol
) -> int:
    """The kernel's lb4_flow_hash (IPv4) or lb6_flow_hash (IPv6: each address's four
    words mixed in turn, client's first) of a flow's first packet (client -> frontend)."""
    h = FLOW_HASH_SEED
    for w in _words(client):
        h = _mix32(h ^ w)
    for w in _words(frontend):
        h = _mix32(h ^ w)
    h = _mix32(h ^ ((_be16(client_port) << 16) | _be16(frontend_port)))
    return _mix32(h ^ protocol.number)
