"""read_state decodes the backend map by column and a frontend's backends as one slice
(maps._BackendColumns); here random states, written by the real map writer, are read
back and compared, field by field of MapState, with the element-by-element reference
of test_read_state: IPv4 and IPv6, shared pods and names, inactive and terminating
backends, slots permuted, repeated or a subset (as Maglev or a weighted writer may
hold them), affinity, source NAT, source ranges, drop-when-empty; then after churn
(ids reused, a frontend's backends no longer one run of ids), and with orphans and one
backend key held under two ids. Each twice: with the native steps (ebpflb/_readback.c)
and with the Python ones that stand in where that module was not built."""

from __future__ import annotations

import ctypes
import ipaddress
import random
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf import maps as bpf_maps
from ebpflb.dataplane.bpf.ids import backend_key, pack_ids, unpack_ids
from ebpflb.dataplane.bpf.maps import BpfMaps, MapState, read_state
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import (
    Frontend,
    FrontendKey,
    FrontendKind,
    IPAddress,
    Protocol,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import BackendState, FrontendState, backend_order
from ebpflb.sync.diff import diff
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, Maps
from tests.bpf.test_read_state import _reference
from tests.bpf.test_writer_dualstack import _clear6

U32 = ctypes.c_uint32
TERMINATING = int(abi.BackendFlag.TERMINATING)
FIELDS = (
    "frontends",
    "svc_ids",
    "slot_counts",
    "backend_ids",
    "orphan_backends",
    "orphan_backends6",
    "orphan_svc_ids",
    "src_ranges",
)


def _pods(family: int) -> list[IPAddress]:
    if family == 4:
        return [ipaddress.ip_address(f"10.244.{i // 7}.{i % 7 + 2}") for i in range(12)]
    return [ipaddress.ip_address(f"fd00:10:244::{i + 2:x}") for i in range(12)]


def _random_states(rng: random.Random, count: int) -> dict[FrontendKey, FrontendState]:
    """count frontends; fewer than MAX_BACKENDS backends in all."""
    out: dict[FrontendKey, FrontendState] = {}
    names = [
        ServicePortName(ServiceRef(rng.choice(("default", "kube-system", "a")), f"s{i}"), p, proto)
        for i in range(count // 2)
        for p, proto in (("http", Protocol.TCP), ("", Protocol.UDP))
    ]
    while len(out) < count:
        family = rng.choice((4, 4, 6))
        kind = rng.choice(list(FrontendKind))
        host = rng.randrange(1, 9)  # few addresses: several ports on one
        address = ipaddress.ip_address(
            f"10.96.0.{host}" if family == 4 else f"fd00:10:96::{host:x}"
        )
        port_name = rng.choice(names)
        fe = Frontend(address, rng.choice((53, 80, 443, 30080)), port_name.protocol, kind)
        if fe.key in out:
            continue
        pods = rng.sample(_pods(family), rng.choice((0, 1, 2, 3, 5)))
        backends = tuple(
            sorted(
                (
                    BackendState(
                        a, rng.choice((8080, 8443)), rng.random() < 0.8, rng.random() < 0.2
                    )
                    for a in pods
                ),
                key=backend_order,
            )
        )
        backends = tuple({b.key: b for b in backends}.values())  # one state per key
        active = [b.key for b in backends if b.active]
        shape = rng.choice(("sorted", "permuted", "subset", "repeated"))
        if shape == "permuted":
            rng.shuffle(active)
        elif shape == "subset":
            active = active[: len(active) // 2]
        elif shape == "repeated" and active:
            active = [*active, active[0], *active]
        snat = rng.choice((None, _pods(family)[0]))
        ranges = (
            tuple(sorted({ipaddress.ip_network(f"10.{rng.randrange(4)}.0.0/16")}))
            if family == 4
            else (ipaddress.ip_network("2001:db8::/32"),)
        )
        out[fe.key] = FrontendState(
            fe,
            port_name,
            backends,
            tuple(active),
            rng.choice((0, 0, 60, 10800)),
            snat,
            ranges if rng.random() < 0.3 else (),
            rng.random() < 0.2,
        )
    return out


def _same(fast: MapState, slow: MapState) -> None:
    # the id tables as read (packed, as the writer adopts them), then as mappings
    six = {sid for key, sid in slow.svc_ids.items() if key[0].version == 6}
    assert sorted(fast.all_backend_ids()) == sorted(slow.all_backend_ids())
    tables = fast.id_tables()
    assert {sid: unpack_ids(t, v6=sid in six) for sid, t in tables.items()} == slow.backend_ids
    assert fast.tables6 == six & tables.keys()
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
    for key, state in fast.frontends.items():  # the stored form too (a compact slot store)
        assert state.slots == slow.frontends[key].slots
        assert state.slots_are_backends == slow.frontends[key].slots_are_backends


NATIVE = bpf_maps.NATIVE_STEPS


@pytest.fixture(params=["native", "python"])
def steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """read_state with ebpflb._readback's steps, or with maps' Python ones only."""
    assert all(getattr(bpf_maps, name) is not None for name in NATIVE)  # built: setup.py
    if request.param == "python":
        for name in NATIVE:
            monkeypatch.setattr(bpf_maps, name, None)
    return str(request.param)


@pytest.fixture
def writer(maps: Maps, steps: str) -> Iterator[MapWriter]:
    maps.clear()
    _clear6(maps.pin_dir)
    w = MapWriter(BpfMaps(maps.pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
    try:
        yield w
    finally:
        w.maps.close()
        maps.clear()
        _clear6(maps.pin_dir)


@pytest.mark.parametrize("seed", range(4))
def test_random_states_read_as_the_reference_reads_them(writer: MapWriter, seed: int) -> None:
    rng = random.Random(seed)
    for _round in range(3):  # the later rounds reuse ids: backends in no id order
        want = _random_states(rng, 30)
        writer.apply(diff(writer.frontends, want))
        fast, slow = read_state(writer.maps), _reference(writer.maps)
        _same(fast, slow)
        assert fast.frontends == want
        assert fast.backend_ids == writer.backend_ids()
        # one port name object per distinct name, one address and port object per value
        by_name: dict[ServicePortName, ServicePortName] = {}
        for state in fast.frontends.values():
            assert by_name.setdefault(state.port_name, state.port_name) is state.port_name
        addresses: dict[IPAddress, IPAddress] = {}
        ports: dict[int, int] = {}  # 8080 and 8443: ints Python does not share itself
        for state in fast.frontends.values():
            if isinstance(state._backends, bytes):
                continue  # packed (plan.FrontendState): no address or port object held
            for b in state.backends:
                assert addresses.setdefault(b.address, b.address) is b.address
                assert ports.setdefault(b.port, b.port) is b.port


def test_orphans_twins_and_unnamed_services(writer: MapWriter) -> None:
    want = _random_states(random.Random(7), 20)
    writer.apply(diff(writer.frontends, want))
    maps = writer.maps
    st = read_state(maps)
    # a backend of every frontend's key again, under a new id, terminating
    for n, (key, state) in enumerate(list(st.frontends.items())[:3]):
        if not state.backends:
            continue
        b = state.backends[-1]
        sid = st.svc_ids[key]
        if b.address.version == 4:
            maps.backends.update(
                U32(240 + n),
                abi.Lb4Backend(abi.pack_ip4(b.address), abi.htons(b.port), 6, TERMINATING, sid),
            )
        else:
            maps.backends6.update(
                U32(240 + n),
                abi.Lb6Backend(abi.addr6(b.address), abi.htons(b.port), 6, TERMINATING, sid),
            )
    # orphans of two owners, interleaved by id, in both families
    for bid, owner in ((230, 62), (231, 61), (232, 62)):
        maps.backends.update(
            U32(bid),
            abi.Lb4Backend(
                abi.pack_ip4(ipaddress.IPv4Address("10.9.9.9")), abi.htons(bid), 6, 1, owner
            ),
        )
    maps.backends6.update(
        U32(233),
        abi.Lb6Backend(abi.addr6(ipaddress.IPv6Address("fd00::9")), abi.htons(1), 6, 1, 60),
    )
    maps.meta.update(U32(59), abi.LbSvcMeta(b"gone", b"svc", b"p"))
    fast, slow = read_state(maps), _reference(maps)
    _same(fast, slow)
    assert fast.orphan_backends == [230, 232, 231]
    assert fast.orphan_backends6 == [233]
    assert fast.orphan_svc_ids == [59]
    assert any(len(s.backends) > len(want[k].backends) for k, s in fast.frontends.items())
    # a service whose names were lost (the reference cannot read it): read as svc-<id>
    lost_key, lost = next(iter(fast.frontends.items()))
    sid = st.svc_ids[lost_key]
    maps.meta.delete(U32(sid))
    again = read_state(maps)
    assert again.frontends[lost_key] == lost.replace(
        port_name=ServicePortName(ServiceRef("", f"svc-{sid}"), "", lost.frontend.protocol)
    )
    assert {k: s for k, s in again.frontends.items() if k != lost_key} == {
        k: s for k, s in fast.frontends.items() if k != lost_key
    }


@pytest.mark.parametrize("family", [4, 6])
def test_the_column_layouts_pick_the_fields_of_abi_elements(family: int) -> None:
    """maps' one-field layouts against the abi's packing of whole elements."""
    element = (abi.PACK_LB4_BACKEND if family == 4 else abi.PACK_LB6_BACKEND).pack(
        bytes(range(1, 5 if family == 4 else 17)), abi.htons(8443), 17, 3, 0x01020304
    )
    layouts = bpf_maps._LAYOUTS[family]
    n = 4 if family == 4 else 16
    other = (abi.PACK_LB4_BACKEND if family == 4 else abi.PACK_LB6_BACKEND).pack(
        bytes(n), abi.htons(1), 6, 1, 7
    )
    assert layouts.element.size == layouts.address.size == len(element)
    assert layouts.element.unpack(element) == (element,)
    assert layouts.address.unpack(element) == (bytes(range(1, n + 1)),)
    assert layouts.order.unpack(element) == (bytes(range(1, n + 1)) + (8443).to_bytes(2, "big"),)
    assert layouts.ports(element + other) == [8443, 1]
    assert layouts.flags(element + other) == [3, 1]
    assert layouts.owners(element + other) == [0x01020304, 7]
    record = bpf_maps._id_records(element, [0x0A0B0C0D], family)
    assert record == pack_ids(
        {backend_key(bytes(range(1, n + 1)), 8443): 0x0A0B0C0D}, v6=family == 6
    )
    key = (abi.PACK_LB4_KEY if family == 4 else abi.PACK_LB6_KEY).pack(
        bytes(range(1, n + 1)), abi.htons(30080), 6, 0
    )
    assert bpf_maps._SVC_KEYS[family].unpack(key) == (bytes(range(1, n + 1)), 30080, 6, 0)


def test_the_meta_layouts_pick_the_names() -> None:
    meta = abi.PACK_LB_SVC_META.pack(b"kube-system", b"dns", b"udp-53")
    assert [layout.unpack(meta)[0].rstrip(b"\0") for layout in bpf_maps._META_FIELDS] == [
        b"kube-system",
        b"dns",
        b"udp-53",
    ]


def test_a_frontend_of_an_unknown_protocol_is_left_out(writer: MapWriter) -> None:
    """(ICMP, say, from a newer writer): its backends are read as orphans, its names
    as left, the frontends beside it as they are."""
    want = _random_states(random.Random(11), 12)
    writer.apply(diff(writer.frontends, want))
    maps = writer.maps
    before = read_state(maps)
    assert 60 not in before.slot_counts  # an id no frontend has
    address = abi.pack_ip4(ipaddress.IPv4Address("10.96.0.5"))
    maps.svc.update(abi.Lb4Key(address, abi.htons(7), 1, 0), abi.Lb4Service(60, 1, 1, 0, 0))
    maps.backends.update(
        U32(250),
        abi.Lb4Backend(abi.pack_ip4(ipaddress.IPv4Address("10.9.9.8")), abi.htons(7), 1, 1, 60),
    )
    maps.meta.update(U32(60), abi.LbSvcMeta(b"ns", b"icmp", b""))
    after = read_state(maps)
    assert after.frontends == before.frontends == want
    assert list(after.frontends) == list(before.frontends)  # in the same order
    assert after.orphan_backends == [250]
    assert after.orphan_svc_ids == [60]
    assert 60 not in after.slot_counts and after.id_tables() == before.id_tables()


def test_names_without_a_namespace_read_as_none(writer: MapWriter) -> None:
    """A meta element whose namespace is empty names no Service: its frontend reads as
    svc-<id>, as one whose element is missing, and the element is taken (not left)."""
    want = _random_states(random.Random(5), 10)
    writer.apply(diff(writer.frontends, want))
    maps = writer.maps
    before = read_state(maps)
    key, state = next(iter(before.frontends.items()))
    sid = before.svc_ids[key]
    maps.meta.update(U32(sid), abi.LbSvcMeta(b"", b"name", b"port"))
    after = read_state(maps)
    assert after.frontends[key] == state.replace(
        port_name=ServicePortName(ServiceRef("", f"svc-{sid}"), "", key[2])
    )
    assert after.orphan_svc_ids == before.orphan_svc_ids == []
    assert {k: s for k, s in after.frontends.items() if k != key} == {
        k: s for k, s in before.frontends.items() if k != key
    }


def test_one_id_under_two_frontends_is_read_as_before(writer: MapWriter) -> None:
    """A damaged service map (two elements with one svc id): the frontend first in key
    order takes the id's backends and names, the other reads with none, svc-<id>."""
    want = _random_states(random.Random(3), 12)
    usual = FrontendState(  # every backend active, in the slots in order
        Frontend(ipaddress.IPv4Address("10.96.0.50"), 80, Protocol.TCP),
        ServicePortName(ServiceRef("default", "usual"), "http", Protocol.TCP),
        tuple(BackendState(a, 8080, True, False) for a in _pods(4)[:3]),
        None,
    )
    key = usual.frontend.key
    want[key] = usual
    writer.apply(diff(writer.frontends, want))
    maps = writer.maps
    before = read_state(maps)
    assert before.frontends[key] == usual
    sid = before.svc_ids[key]
    address = ipaddress.IPv4Address("10.96.0.99")  # after every frontend's address
    maps.svc.update(
        abi.Lb4Key(abi.pack_ip4(address), abi.htons(9), 6, 0),
        abi.Lb4Service(sid, before.slot_counts[sid], int(abi.SvcFlag.CLUSTERIP), 0, 0),
    )
    after = read_state(maps)
    other = Frontend(address, 9, Protocol.TCP, FrontendKind.CLUSTER_IP)
    assert after.frontends[other.key] == FrontendState(
        other, ServicePortName(ServiceRef("", f"svc-{sid}"), "", Protocol.TCP), (), ()
    )
    assert after.svc_ids[other.key] == sid
    assert {k: s for k, s in after.frontends.items() if k != other.key} == before.frontends
    assert after.id_tables() == before.id_tables()
    assert after.orphan_backends == before.orphan_backends == []


def test_a_dual_stack_services_frontends_share_one_port_name(writer: MapWriter) -> None:
    """Each Service port's names its own (the usual case, read in one pass): its IPv4
    and IPv6 frontends, read from two maps, still share one ServicePortName."""
    want: dict[FrontendKey, FrontendState] = {}
    for i in range(20):
        port_name = ServicePortName(ServiceRef("ns", f"s{i}"), "http", Protocol.TCP)
        for address in (f"10.96.1.{i + 1}", f"fd00:10:96::1:{i + 1:x}"):
            fe = Frontend(ipaddress.ip_address(address), 80, Protocol.TCP)
            pods = _pods(fe.address.version)[i % 5 : i % 5 + 2]
            backends = tuple(BackendState(a, 8080, True, False) for a in pods)
            want[fe.key] = FrontendState(fe, port_name, backends, None)
    writer.apply(diff(writer.frontends, want))
    got = read_state(writer.maps)
    assert got.frontends == want
    by_name: dict[ServicePortName, list[ServicePortName]] = {}
    for state in got.frontends.values():
        by_name.setdefault(state.port_name, []).append(state.port_name)
    assert len(by_name) == 20
    assert all(len(same) == 2 and same[0] is same[1] for same in by_name.values())
