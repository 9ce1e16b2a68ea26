"""read_state's bulk steps in C (ebpflb/_readback.c) against their Python reference in
ebpflb.dataplane.bpf.maps, on random buffers: the backend sort and its twins, the
decoding of backend columns and addresses, the check of the frontends' slot runs, and
objects made field by field (equal to what the constructors make). No root needed:
these take buffers, not maps (tests/bpf/test_read_state_columns.py reads real maps
both ways)."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
import random
import struct
from ipaddress import IPv4Address, IPv6Address
from itertools import pairwise
from typing import Any

import pytest

from ebpflb import _readback
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf import maps as bpf_maps
from ebpflb.model import Frontend, FrontendKind, Protocol, ServicePortName, ServiceRef
from ebpflb.plan import FrontendState

NATIVE = bpf_maps.NATIVE_STEPS


def test_maps_uses_the_native_module() -> None:
    """Built by every install (setup.py), and taken by maps when it is there."""
    assert bpf_maps._native_order is _readback.order
    assert bpf_maps._native_runs is _readback.runs
    assert bpf_maps._native_objects is _readback.objects
    assert bpf_maps._native_backends is _readback.backends
    assert bpf_maps._native_records is _readback.records
    assert bpf_maps._native_nonzero is _readback.nonzero
    assert bpf_maps._native_cut is _readback.cut
    assert bpf_maps._native_names is _readback.names
    # every hook is named where the tests switch them off
    assert set(NATIVE) == {n for n in vars(bpf_maps) if n.startswith("_native_")}
    assert bpf_maps._ADDRESS_FIELDS[4] is not None and bpf_maps._ADDRESS_FIELDS[6] is not None


def _element(family: int, rng: random.Random, owners: int, addresses: int) -> bytes:
    layout = abi.PACK_LB4_BACKEND if family == 4 else abi.PACK_LB6_BACKEND
    size = 4 if family == 4 else 16
    address = rng.randrange(addresses).to_bytes(size, "big")
    port = rng.choice((1, 80, 8080, 65535))
    return layout.pack(
        address, abi.htons(port), 6, rng.choice((1, 1, 1, 2, 3, 0)), rng.randrange(1, owners + 1)
    )


def _elements(family: int, rng: random.Random, count: int) -> tuple[bytes, bytes]:
    """count backend elements (few owners, addresses and ports: twins) and their ids."""
    owners, addresses = rng.choice((1, 3, 50)), rng.choice((2, 5, 1000))
    values = b"".join(_element(family, rng, owners, addresses) for _ in range(count))
    ids = struct.pack(f"={count}I", *rng.sample(range(1, 2**32), count))
    return values, ids


def _sorted(family: int, values: bytes, ids: bytes) -> bytes:
    return bpf_maps._order_py(values, ids, 4 if family == 4 else 16)[0]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("seed", range(20))
def test_order_sorts_as_python_does(family: int, seed: int) -> None:
    rng = random.Random(seed)
    values, ids = _elements(family, rng, rng.choice((0, 1, 2, 7, 300)))
    size = 4 if family == 4 else 16
    got = _readback.order(values, ids, size)
    assert got == bpf_maps._order_py(values, ids, size)
    # and sorted input comes back as it is, with the same twins
    again = _readback.order(got[0], got[1], size)
    assert again == got and again[0] is got[0]


def test_order_finds_twins_and_keeps_their_ids_in_map_order() -> None:
    one = abi.PACK_LB4_BACKEND.pack(bytes([10, 0, 0, 1]), abi.htons(80), 6, 1, 7)
    other = abi.PACK_LB4_BACKEND.pack(bytes([10, 0, 0, 1]), abi.htons(80), 6, 2, 7)
    first = abi.PACK_LB4_BACKEND.pack(bytes([10, 0, 0, 1]), abi.htons(80), 6, 1, 3)
    values, ids, twins = _readback.order(one + other + first, struct.pack("=3I", 5, 4, 9), 4)
    assert values == first + one + other
    assert struct.unpack("=3I", ids) == (9, 5, 4)
    assert twins == {7}


@pytest.mark.parametrize("seed", range(10))
def test_records_sort_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    key_size, value_size = rng.choice(((8, 16), (20, 28), (1, 3)))
    n = rng.choice((0, 1, 2, 50, 1000))
    keys = b"".join(rng.choice((b"a", b"b", b"c")) * key_size for _ in range(n // 2))
    keys += rng.randbytes(key_size * (n - n // 2))  # repeated keys: ties keep their order
    values = rng.randbytes(value_size * n)
    got = _readback.records(keys, key_size, values, value_size)
    assert got == bpf_maps._records_py(keys, key_size, values, value_size)
    assert sorted(keys[i : i + key_size] for i in range(0, len(keys), key_size)) == [
        got[0][i : i + key_size] for i in range(0, len(keys), key_size)
    ]
    with pytest.raises(ValueError):
        _readback.records(keys + b"x", key_size, values, value_size)


@pytest.mark.parametrize("seed", range(10))
def test_nonzero_finds_the_elements_python_finds(seed: int) -> None:
    rng = random.Random(seed)
    size, stride = rng.choice(((12, 16), (28, 32), (4, 4), (3, 8)))
    n = rng.choice((0, 1, 1024, 3000))
    elements = [
        rng.choice((bytes(size), bytes(size), rng.randbytes(size), b"\1" + bytes(size - 1)))
        for _ in range(n)
    ]
    if n > 2048:  # a block of zeros, and a block with none
        elements[1024:2048] = [bytes(size)] * 1024
        elements[2048:3000] = [b"\7" * size] * 952
    buf = b"".join(e + rng.randbytes(stride - size) for e in elements)  # padding: ignored
    indexes, values = _readback.nonzero(buf, size, stride)
    want_indexes, want_values = bpf_maps._nonzero_py(buf, size, stride)
    assert (indexes, values) == (want_indexes.tobytes(), want_values)
    assert list(struct.unpack(f"={len(indexes) // 4}I", indexes)) == [
        i for i, e in enumerate(elements) if any(e)
    ]
    with pytest.raises(ValueError):
        _readback.nonzero(buf + b"x", size, stride)


@pytest.mark.parametrize("seed", range(10))
def test_cut_takes_the_usual_frontends_slices(seed: int) -> None:
    rng = random.Random(seed)
    count, record = rng.choice((0, 1, 40)), rng.choice((10, 22))
    flat = tuple(rng.randrange(100) for _ in range(2 * count))
    records = rng.randbytes(count * record)
    bounds = sorted({0, count, *rng.sample(range(count + 1), min(count, 8))})
    runs = list(pairwise(bounds))
    spans = dict(zip(rng.sample(range(1, 999), len(runs)), runs, strict=True))
    sids = [*spans, 5000]  # one with no backends: never usual
    mask = bytes(rng.random() < 0.7 for _ in spans) + b"\0"
    left = dict(spans)
    stores, tables = _readback.cut(flat, records, record, left, sids, mask)
    usual = [sid for sid, m in zip(sids, mask, strict=True) if m]
    assert stores == [flat[2 * spans[s][0] : 2 * spans[s][1]] for s in usual]
    assert tables == [records[spans[s][0] * record : spans[s][1] * record] for s in usual]
    assert left == {sid: span for sid, span in spans.items() if sid not in usual}


def test_cut_refuses_missing_and_bad_spans() -> None:
    with pytest.raises(KeyError):
        _readback.cut((1, 2), b"ab", 2, {}, [7], b"\1")
    with pytest.raises(ValueError):
        _readback.cut((1, 2), b"ab", 2, {7: (0, 2)}, [7], b"\1")
    with pytest.raises(ValueError):
        _readback.cut((1, 2), b"ab", 2, {7: (0, 1)}, [7], b"\1\1")
    spans = {7: (0, 1)}
    assert _readback.cut((1, 2), b"ab", 2, spans, [7], b"\0") == ([], []) and spans


def _meta_field(rng: random.Random, size: int) -> bytes:
    """A NUL-padded string field as a writer leaves it, or as a foreign one might."""
    shape = rng.choice(("text", "text", "zero", "full", "garbage", "bad utf-8", "lead nul"))
    if shape == "zero":
        return bytes(size)
    if shape == "full":
        return bytes(rng.choice(b"abc-") for _ in range(size))
    text = rng.choice(("default", "kube-system", "http", "dns", "ünï", ""))
    raw = text.encode()[: size - 1]
    if shape == "garbage":
        return (raw + b"\0" + rng.randbytes(size))[:size]
    if shape == "bad utf-8":
        return (raw + b"\xff\xfe" + b"\0" * size)[:size]
    if shape == "lead nul":
        return (b"\0" + rng.randbytes(size))[:size]
    return raw.ljust(size, b"\0")


@pytest.mark.parametrize("seed", range(10))
def test_names_decode_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice((0, 1, 300))
    sizes = bpf_maps._META_SIZES
    values = b"".join(b"".join(_meta_field(rng, size) for size in sizes) for _ in range(n))
    keys = struct.pack(f"={n}I", *rng.sample(range(2**32), n))
    got = _readback.names(keys, values, *sizes)
    want = bpf_maps._names_of_py(keys, values)
    assert got == want and list(got) == list(want)
    assert None in got.values() or n < 300  # both kinds occur
    # one namespace and one port string per value
    assert len({id(v[0]) for v in got.values() if v}) == len({v[0] for v in got.values() if v})
    assert len({id(v[2]) for v in got.values() if v}) == len({v[2] for v in got.values() if v})
    with pytest.raises(ValueError):
        _readback.names(keys + b"x", values, *sizes)


def test_the_meta_sizes_are_the_abis() -> None:
    fields = [getattr(abi.LbSvcMeta, field[0]).size for field in abi.LbSvcMeta._fields_]
    assert tuple(fields) == bpf_maps._META_SIZES
    assert sum(bpf_maps._META_SIZES) == abi.PACK_LB_SVC_META.size


def test_order_refuses_bad_buffers() -> None:
    with pytest.raises(ValueError):
        _readback.order(bytes(12), bytes(8), 4)
    with pytest.raises(ValueError):
        _readback.order(bytes(12), bytes(4), 5)


def _columns(family: int, values: bytes, *, native: bool) -> tuple[Any, ...]:
    addresses: dict[int, Any] = {}
    ports: dict[int, int] = {}
    saved = bpf_maps._native_backends
    bpf_maps._native_backends = _readback.backends if native else None
    try:
        flat, spans, mixed = bpf_maps._backends(values, family, addresses, ports)
    finally:
        bpf_maps._native_backends = saved
    return flat, spans, mixed, addresses, ports


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("seed", range(20))
def test_backend_columns_decode_as_python_does(family: int, seed: int) -> None:
    rng = random.Random(seed)
    values = _sorted(family, *_elements(family, rng, rng.choice((0, 1, 5, 400))))
    fast, slow = _columns(family, values, native=True), _columns(family, values, native=False)
    assert fast == slow
    flat, _spans, _mixed, addresses, ports = fast
    # one address object and one port int per value, those of the caches
    assert all(a is addresses[int(a)] for a in flat[0::2])
    assert all(p is ports[p] for p in flat[1::2])
    assert all(type(a) is (IPv4Address if family == 4 else IPv6Address) for a in flat[0::2])


@pytest.mark.parametrize("family", [4, 6])
def test_addresses_decode_as_python_does(family: int) -> None:
    rng = random.Random(family)
    size = 4 if family == 4 else 16
    stride, offset = size + 5, 3
    buf = b"".join(
        bytes(rng.randrange(256) for _ in range(offset))
        + rng.choice((0, 1, 2 ** (8 * size) - 1, rng.randrange(2 ** (8 * size)))).to_bytes(
            size, "big"
        )
        + bytes(2)
        for _ in range(200)
    )
    cache: dict[int, Any] = {}
    make = IPv4Address if family == 4 else IPv6Address
    fields = bpf_maps._ADDRESS_FIELDS[family]
    assert fields is not None
    got = _readback.addresses(make, fields, buf, stride, offset, size, cache)
    reference: dict[int, Any] = {}
    layout = struct.Struct(f"{offset}x{size}s{stride - offset - size}x")
    want = bpf_maps._addresses_py(reference, make, bpf_maps._column(layout, buf))
    assert got == want and cache == reference
    assert [a is cache[int(a)] for a in got] == [True] * len(got)
    with pytest.raises(ValueError):
        _readback.addresses(make, fields, buf + b"x", stride, offset, size, cache)


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "10.96.0.1", "255.255.255.255", "::", "fd00:10:96::a", "::ffff:1.2.3.4"]
)
def test_addresses_made_by_field_behave_as_the_constructors(address: str) -> None:
    made = ipaddress.ip_address(address)
    family, make = made.version, type(made)
    fields = bpf_maps._ADDRESS_FIELDS[family]
    assert fields is not None
    (ours,) = _readback.objects(make, fields, [int(made)], *([None] for _ in fields[1:]))
    assert type(ours) is make
    assert ours == made and hash(ours) == hash(made) and sorted([made, ours]) == [made, ours]
    assert (str(ours), repr(ours), ours.packed, ours.is_private) == (
        str(made),
        repr(made),
        made.packed,
        made.is_private,
    )
    assert pickle.loads(pickle.dumps(ours)) == made
    if family == 6:
        assert ours.scope_id is None and ours.ipv4_mapped == made.ipv4_mapped  # type: ignore[union-attr]


def test_the_fields_are_the_dataclasses_fields() -> None:
    """maps makes these field by field: a field added to one must be added there."""
    for cls, fields in (
        (Frontend, bpf_maps._FRONTEND_FIELDS),
        (FrontendState, bpf_maps._STATE_FIELDS),
        (ServiceRef, bpf_maps._REF_FIELDS),
        (ServicePortName, bpf_maps._PORT_NAME_FIELDS),
    ):
        assert tuple(f.name for f in dataclasses.fields(cls)) == fields


@pytest.mark.parametrize("native", [True, False])
def test_objects_equal_the_constructors(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(bpf_maps, "_native_objects", None)
    a, b = IPv4Address("10.96.0.1"), IPv4Address("10.96.0.2")
    refs = bpf_maps._objects(ServiceRef, bpf_maps._REF_FIELDS, ["ns", "ns"], ["a", "b"])
    assert refs == [ServiceRef("ns", "a"), ServiceRef("ns", "b")]
    keys = [(a, 80, Protocol.TCP), (b, 53, Protocol.UDP)]
    fronts = bpf_maps._objects(
        Frontend,
        bpf_maps._FRONTEND_FIELDS,
        [a, b],
        [80, 53],
        [Protocol.TCP, Protocol.UDP],
        [FrontendKind.CLUSTER_IP, FrontendKind.NODE_PORT],
        keys,
    )
    want = [
        Frontend(a, 80, Protocol.TCP, FrontendKind.CLUSTER_IP),
        Frontend(b, 53, Protocol.UDP, FrontendKind.NODE_PORT),
    ]
    assert fronts == want and [f.key for f in fronts] == [f.key for f in want]
    assert [f.kind for f in fronts] == [f.kind for f in want]
    assert fronts[0].key is keys[0] and hash(fronts[0]) == hash(want[0])


def test_objects_refuse_what_is_not_a_slot() -> None:
    with pytest.raises(TypeError):
        _readback.objects(ServiceRef, ("namespace", "nope"), ["a"], ["b"])
    with pytest.raises(TypeError):
        _readback.objects(ServiceRef, ("__str__",), ["a"])
    with pytest.raises(TypeError):  # made by a __new__ of its own
        _readback.objects(int, ("real",), [1])
    with pytest.raises(ValueError):
        _readback.objects(ServiceRef, ("namespace", "name"), ["a"], ["b", "c"])
    with pytest.raises(TypeError):
        _readback.objects(ServiceRef, ("namespace", "name"), ["a"])


def _slot_case(
    rng: random.Random,
) -> tuple[bytes, bytes, list[int], list[int], list[int], list[int], bytes]:
    """Frontends whose slots hold their run of ids, or not quite (a slot missing, one
    id more, two swapped, another id, a count that differs), and some with no run."""
    ids = rng.sample(range(1, 10_000), 300)
    slots: dict[tuple[int, int], int] = {}
    sids, counts, starts, ends = [], [], [], []
    at = 0
    for sid in rng.sample(range(1, 2**32), 60):
        length = rng.choice((0, 1, 2, 5))
        if at + length > len(ids) or rng.random() < 0.1:
            sids.append(sid)
            counts.append(rng.choice((0, 2)))
            starts.append(-1)
            ends.append(-1)
            for k in range(counts[-1]):
                slots[(sid, k)] = rng.choice(ids)
            continue
        held = ids[at : at + length]
        shape = rng.choice(("same", "same", "missing", "more", "swapped", "other", "count"))
        count = length
        if shape == "missing" and held:
            held = held[:-1]
        elif shape == "more":
            held = [*held, rng.choice(ids)]
            count += 1
        elif shape == "swapped" and len(held) > 1:
            held[0], held[1] = held[1], held[0]
        elif shape == "other" and held:
            held[-1] = 10_001
        elif shape == "count":
            count = length + rng.choice((-1, 1)) if length else 1
        for k, bid in enumerate(held):
            slots[(sid, k)] = bid
        sids.append(sid)
        counts.append(max(count, 0))
        starts.append(at)
        ends.append(at + length)
        at += length
    keys = b"".join(struct.pack("=II", sid, k) for sid, k in slots)
    values = struct.pack(f"={len(slots)}I", *slots.values())
    return keys, values, sids, counts, starts, ends, struct.pack(f"={len(ids)}I", *ids)


@pytest.mark.parametrize("seed", range(30))
def test_slot_runs_are_found_as_python_finds_them(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, values, sids, counts, starts, ends, ids = _slot_case(random.Random(seed))
    got = bpf_maps._SlotMap(keys, values).runs(sids, counts, starts, ends, ids)
    monkeypatch.setattr(bpf_maps, "_native_runs", None)
    want = bpf_maps._SlotMap(keys, values).runs(sids, counts, starts, ends, ids)
    assert got == want
    assert 0 < sum(got) < len(sids)  # both kinds occur


def test_slot_runs_refuse_runs_out_of_the_ids() -> None:
    with pytest.raises(ValueError):
        _readback.runs(
            b"",
            b"",
            struct.pack("=I", 1),
            struct.pack("=I", 1),
            struct.pack("=q", 0),
            struct.pack("=q", 2),
            struct.pack("=I", 7),
        )
    with pytest.raises(ValueError):
        _readback.runs(b"", b"", struct.pack("=I", 1), b"", b"", b"", b"")
