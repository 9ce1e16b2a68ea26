"""Maglev tables and the flow hash (ebpflb/maglev.py): an even share per backend, few
flows moved when one backend comes or goes, the same table on every node."""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections import Counter

import pytest

from ebpflb import maglev
from ebpflb.model import Protocol

NAMES = [f"10.244.{i // 250}.{i % 250 + 1}:8080" for i in range(10)]


@pytest.mark.parametrize("size", [251, 1021, 16381])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_every_slot_is_filled_and_shares_differ_by_at_most_one(size: int, n: int) -> None:
    t = maglev.table(NAMES[:n], size)
    assert len(t) == size and set(t) == set(range(n))
    counts = Counter(t).values()
    assert max(counts) - min(counts) <= 1


def test_the_table_depends_only_on_the_names() -> None:
    assert maglev.table(NAMES, 1021) == maglev.table(list(NAMES), 1021)
    assert maglev.table(NAMES, 1021) != maglev.table(NAMES[::-1], 1021)  # order names it


def _owners(names: list[str], size: int) -> list[str]:
    return [names[i] for i in maglev.table(names, size)]


def test_removing_one_backend_moves_little_else() -> None:
    before = _owners(NAMES, 16381)
    after = _owners(NAMES[:4] + NAMES[5:], 16381)
    kept = [i for i, owner in enumerate(before) if owner != NAMES[4]]
    moved = sum(1 for i in kept if after[i] != before[i])
    # Only the removed backend's slots must move; Maglev moves a few more, not many.
    assert moved / len(kept) < 0.03
    assert all(after[i] != NAMES[4] for i in range(16381))


def test_adding_one_backend_takes_about_its_share() -> None:
    before = _owners(NAMES[:9], 16381)
    after = _owners(NAMES, 16381)
    changed = sum(1 for a, b in zip(before, after, strict=True) if a != b)
    share = 16381 / 10
    assert changed >= share * 0.99 and changed < share * 1.3


def test_sizes_outside_the_list_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        maglev.table(NAMES, 1000)


def test_no_backend_no_table() -> None:
    assert maglev.table([], 1021) == []


def test_the_flow_hash_spreads_flows_evenly() -> None:
    client = ipaddress.IPv4Address("10.244.0.200")
    vip = ipaddress.IPv4Address("10.96.0.10")
    t = maglev.table(NAMES[:4], 1021)
    picks = Counter(
        t[maglev.flow_hash(client, port, vip, 80, Protocol.TCP) % 1021]
        for port in range(30000, 34000)
    )
    assert set(picks) == {0, 1, 2, 3}
    assert min(picks.values()) > 4000 / 4 * 0.85
    # every field counts
    base = maglev.flow_hash(client, 40000, vip, 80, Protocol.TCP)
    assert (
        len(
            {
                base,
                maglev.flow_hash(client, 40000, vip, 80, Protocol.UDP),
                maglev.flow_hash(client, 40001, vip, 80, Protocol.TCP),
                maglev.flow_hash(client, 40000, vip, 81, Protocol.TCP),
                maglev.flow_hash(vip, 40000, client, 80, Protocol.TCP),
            }
        )
        == 5
    )


def _reference_hash(words: list[int], sport: int, dport: int, proto: int) -> int:
    """The preamble's formula written out again: seed, each 32-bit word (as the kernel
    reads network-order bytes on this host), the raw ports, the protocol."""
    h = maglev.FLOW_HASH_SEED
    for w in [*words, (_raw16(sport) << 16) | _raw16(dport), proto]:
        h = maglev._mix32(h ^ w)
    return h


def _raw16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def _host_words(*addresses: str) -> list[int]:
    packed = b"".join(ipaddress.ip_address(a).packed for a in addresses)
    return list(struct.unpack(f"={len(packed) // 4}I", packed))


# (client, client port, frontend, frontend port, protocol, the hash on a little-endian
# host such as the x86-64 and arm64 machines the kernel path runs on)
VECTORS = [
    ("10.244.0.200", 40000, "10.96.0.10", 80, Protocol.TCP, 0xC0DD819E),
    ("fd00:10:244::c8", 40000, "fd00:10:96::a", 80, Protocol.TCP, 0x748F3441),
    ("fd00:192:168:50::65", 53, "fd00:192:168:60::5", 30053, Protocol.UDP, 0x5834BEED),
]


@pytest.mark.parametrize(("client", "cport", "frontend", "fport", "proto", "want"), VECTORS)
def test_the_flow_hash_of_fixed_flows(
    client: str, cport: int, frontend: str, fport: int, proto: Protocol, want: int
) -> None:
    """IPv4 unchanged, IPv6 by lb6_flow_hash's formula (both addresses' four words)."""
    got = maglev.flow_hash(
        ipaddress.ip_address(client), cport, ipaddress.ip_address(frontend), fport, proto
    )
    assert got == _reference_hash(_host_words(client, frontend), cport, fport, proto.number)
    if sys.byteorder == "little":
        assert got == want


def test_every_word_of_an_ipv6_address_counts() -> None:
    base = ipaddress.IPv6Address("fd00:10:96::a")
    client = ipaddress.IPv6Address("fd00:10:244::c8")
    hashes = {maglev.flow_hash(client, 40000, base, 80, Protocol.TCP)}
    for word in range(4):
        other = ipaddress.IPv6Address(int(base) ^ (1 << (32 * word)))
        hashes.add(maglev.flow_hash(client, 40000, other, 80, Protocol.TCP))
        hashes.add(maglev.flow_hash(other, 40000, base, 80, Protocol.TCP))
    assert len(hashes) == 9


def _reference_table(names: list[str], size: int) -> list[int]:
    """The paper's fill, claim by claim, as written before the table was optimised:
    the kernel's tables were made by it, so the optimised fill must give the same."""
    n = len(names)
    cursor = [maglev._name_hash(b, b"offset") % size for b in names]
    skips = [maglev._name_hash(b, b"skip") % (size - 1) + 1 for b in names]
    entry = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            slot = cursor[i]
            while entry[slot] >= 0:
                slot = (slot + skips[i]) % size
            entry[slot] = i
            cursor[i] = (slot + skips[i]) % size
            filled += 1
            if filled == size:
                return entry


@pytest.mark.parametrize("size", [251, 1021, 4093])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 64, 300])
def test_the_fill_is_the_papers_claim_by_claim(size: int, n: int) -> None:
    names = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:{8000 + i % 7}" for i in range(n)]
    assert maglev.table(names, size) == _reference_table(names, size)


# A table computed by the fill before it was optimised (see _reference_table).
KNOWN_251 = (251, [0, 0, 1, 0, 2, 0, 2, 2, 2, 2, 2, 2], 30407)


def test_a_known_table_is_unchanged() -> None:
    """Pinned: every node (and every agent version) must compute the same table."""
    t = maglev.table(NAMES[:3], 251)
    assert (len(t), t[:12], sum(i * v for i, v in enumerate(t))) == KNOWN_251
