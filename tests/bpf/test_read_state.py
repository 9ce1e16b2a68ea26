"""read_state decodes whole batch dumps; here it is checked against a reference that
reads the same maps element by element through the ctypes structs and builds the
objects as read_state did before (one address and BackendState per element, sorted
by backend_order): a mixed IPv4/IPv6 state with Maglev, affinity, Local (no source
NAT) and source-NATed frontends, inactive and terminating backends, source ranges,
drop-when-empty, orphans, and one backend key held under two ids."""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import (
    BpfMaps,
    MapState,
    kind_from_flags,
    meta_to_port_name,
    read_src_ranges,
    read_state,
)
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKey,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import BackendState, FrontendState, backend_order, desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, Maps
from tests.bpf.test_writer_dualstack import _clear6

U32 = ctypes.c_uint32


def _entry(
    ip: str,
    port: int,
    backends: list[tuple[str, int, bool, bool]],  # address, port, ready, terminating
    *,
    name: str,
    kind: FrontendKind = FrontendKind.CLUSTER_IP,
    proto: Protocol = Protocol.TCP,
    affinity: int = 0,
    snat: str | None = None,
    ranges: tuple[str, ...] = (),
    drop_when_empty: bool = False,
) -> ServiceEntry:
    return ServiceEntry(
        Frontend(ipaddress.ip_address(ip), port, proto, kind),
        ServicePortName(ServiceRef("mixed", name), "p", proto),
        tuple(
            sorted(
                Backend(ipaddress.ip_address(a), p, ready=r, serving=True, terminating=t)
                for a, p, r, t in backends
            )
        ),
        affinity,
        ipaddress.ip_address(snat) if snat else None,
        tuple(sorted(ipaddress.ip_network(r) for r in ranges)),
        drop_when_empty,
    )


MIXED = DesiredState.build(
    [
        # the same pods behind two ports and a NodePort (Local: no source NAT)
        _entry(
            "10.96.0.10",
            80,
            [("10.244.0.3", 8080, True, False), ("10.244.0.2", 8080, True, False)],
            name="web",
            affinity=10800,
        ),
        _entry(
            "10.96.0.10",
            443,
            [("10.244.0.2", 8443, True, False), ("10.244.0.9", 8443, False, True)],
            name="web",
        ),
        _entry(
            "192.168.50.2",
            30080,
            [("10.244.0.3", 8080, True, False), ("10.244.0.2", 8080, False, False)],
            name="web",
            kind=FrontendKind.NODE_PORT,
        ),
        _entry(
            "192.168.60.5",
            53,
            [("10.244.1.1", 5353, True, False)],
            name="dns",
            kind=FrontendKind.LOAD_BALANCER,
            proto=Protocol.UDP,
            snat="192.168.50.2",
            ranges=("10.0.0.0/8", "172.16.0.0/12"),
        ),
        _entry("10.96.0.11", 80, [], name="empty", drop_when_empty=True),
        _entry(
            "fd00:10:96::a",
            80,
            [("fd00:10:244::c", 8080, True, False), ("fd00:10:244::b", 8080, True, False)],
            name="web6",
            affinity=60,
        ),
        _entry(
            "fd00:192:168:60::5",
            443,
            [("fd00:10:244::b", 8443, True, False), ("fd00:10:244::d", 8443, False, True)],
            name="lb6",
            kind=FrontendKind.LOAD_BALANCER,
            snat="fd00:192:168:50::1",
            ranges=("fd00:192:168:50::/64", "2001:db8::/32"),
        ),
    ]
)


def _reference(maps: BpfMaps) -> MapState:
    """The maps read one element at a time into the object form."""
    out = MapState()
    slot_of = {(k.svc_id, k.slot): v.value for k, v in maps.slots.items(abi.Lb4SlotKey, U32)}
    names = {k.value: v for k, v in maps.meta.items(U32, abi.LbSvcMeta)}
    ranges = read_src_ranges(maps)
    out.src_ranges = ranges
    for svc_map, be_map, key_t, svc_t, be_t, unpack, orphans in (
        (
            maps.svc,
            maps.backends,
            abi.Lb4Key,
            abi.Lb4Service,
            abi.Lb4Backend,
            abi.unpack_ip4,
            out.orphan_backends,
        ),
        (
            maps.svc6,
            maps.backends6,
            abi.Lb6Key,
            abi.Lb6Service,
            abi.Lb6Backend,
            abi.unpack_addr6,
            out.orphan_backends6,
        ),
    ):
        by_svc: dict[int, list[tuple[int, BackendState]]] = {}
        for bid, be in be_map.items(U32, be_t):
            state = BackendState(
                unpack(be.address),
                abi.ntohs(be.port),
                bool(be.flags & abi.BackendFlag.ACTIVE),
                bool(be.flags & abi.BackendFlag.TERMINATING),
            )
            by_svc.setdefault(be.svc_id, []).append((bid.value, state))
        for key, svc in svc_map.items(key_t, svc_t):
            proto = {6: Protocol.TCP, 17: Protocol.UDP}[key.proto]
            sid = svc.id
            frontend = Frontend(
                unpack(key.address),
                abi.ntohs(key.dport),
                proto,
                kind_from_flags(svc.flags),
            )
            port_name = meta_to_port_name(names.pop(sid, None), proto)
            assert port_name is not None
            owned = by_svc.pop(sid, [])
            key_by_id = {bid: st.key for bid, st in owned}
            if owned:
                out.backend_ids[sid] = {
                    st.address.packed + st.port.to_bytes(2, "little"): bid for bid, st in owned
                }
            slots = tuple(
                key_by_id[slot_of[(sid, i)]]
                for i in range(svc.count)
                if slot_of.get((sid, i)) in key_by_id
            )
            snat = unpack(svc.snat_address)
            out.svc_ids[frontend.key] = sid
            out.slot_counts[sid] = svc.count
            out.frontends[frontend.key] = FrontendState(
                frontend,
                port_name,
                tuple(sorted((st for _, st in owned), key=backend_order)),
                slots,
                svc.affinity_timeout,
                None if int(snat) == 0 else snat,
                ranges.get(sid, ()) if svc.flags & abi.SvcFlag.SRC_RANGES else (),
                bool(svc.flags & abi.SvcFlag.DROP_EMPTY),
            )
        for left in by_svc.values():
            orphans.extend(bid for bid, _ in left)
    out.orphan_svc_ids.extend(names)
    return out


@pytest.fixture
def written(maps: Maps) -> Iterator[MapWriter]:
    maps.clear()
    _clear6(maps.pin_dir)
    writer = MapWriter(
        BpfMaps(maps.pin_dir),
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        maglev_size=1021,  # Maglev: the service entries carry its flag
    )
    try:
        writer.apply(diff(writer.frontends, desired_frontends(MIXED)))
        yield writer
    finally:
        writer.maps.close()
        maps.clear()
        _clear6(maps.pin_dir)


def _sid(st: MapState, ip: str, port: int, proto: Protocol = Protocol.TCP) -> int:
    key: FrontendKey = (ipaddress.ip_address(ip), port, proto)
    return st.svc_ids[key]


def test_the_batch_read_equals_the_element_reads(written: MapWriter) -> None:
    fast, slow = read_state(written.maps), _reference(written.maps)
    assert fast.frontends == slow.frontends == desired_frontends(MIXED)
    assert fast.svc_ids == slow.svc_ids and fast.slot_counts == slow.slot_counts
    assert fast.backend_ids == slow.backend_ids == written.backend_ids()
    assert fast.src_ranges == slow.src_ranges
    assert not fast.orphan_backends and not fast.orphan_svc_ids
    # the usual frontend's backends read back packed (plan.FrontendState), as written
    web = fast.frontends[(ipaddress.ip_address("10.96.0.10"), 80, Protocol.TCP)]
    node = fast.frontends[(ipaddress.ip_address("192.168.50.2"), 30080, Protocol.TCP)]
    assert isinstance(web._backends, bytes) and not isinstance(node._backends, bytes)
    assert web.backends[0].address == node.backends[0].address
    sid = _sid(fast, "10.96.0.10", 80)
    assert fast.backend_id(sid, ipaddress.ip_address("10.244.0.2"), 8080) in set(
        fast.all_backend_ids()
    )


def test_orphans_and_a_key_under_two_ids_read_as_before(written: MapWriter) -> None:
    maps = written.maps
    sid = _sid(read_state(maps), "10.96.0.10", 443)
    sid6 = _sid(read_state(maps), "fd00:10:96::a", 80)
    twin = abi.Lb4Backend(
        abi.pack_ip4(ipaddress.IPv4Address("10.244.0.2")),
        abi.htons(8443),
        6,
        int(abi.BackendFlag.TERMINATING),
        sid,
    )
    maps.backends.update(U32(200), twin)  # the same key as an active backend of sid
    lost = abi.Lb4Backend(abi.pack_ip4(ipaddress.IPv4Address("10.1.1.1")), abi.htons(1), 6, 1, 63)
    maps.backends.update(U32(201), lost)
    lost6 = abi.Lb6Backend(abi.addr6(ipaddress.IPv6Address("fd00::1")), abi.htons(1), 6, 1, 62)
    maps.backends6.update(U32(202), lost6)
    maps.meta.update(U32(61), abi.LbSvcMeta(b"gone", b"svc", b"p"))
    fast, slow = read_state(maps), _reference(maps)
    assert fast.frontends == slow.frontends
    held = fast.frontends[(ipaddress.ip_address("10.96.0.10"), 443, Protocol.TCP)].backends
    assert [(str(b.address), b.port, b.active, b.terminating) for b in held] == [
        ("10.244.0.2", 8443, False, True),
        ("10.244.0.2", 8443, True, False),
        ("10.244.0.9", 8443, False, True),
    ]
    assert fast.orphan_backends == slow.orphan_backends == [201]
    assert fast.orphan_backends6 == slow.orphan_backends6 == [202]
    assert fast.orphan_svc_ids == slow.orphan_svc_ids == [61]
    assert fast.backend_ids[sid6] == slow.backend_ids[sid6]


def test_frontends_are_read_back_in_address_order(maps: Maps) -> None:
    """In the order translation builds them (and the first sync's diff walks them):
    the states are then made, and laid out in memory, in that order."""
    maps.clear()
    _clear6(maps.pin_dir)
    entries = [
        _entry(f"10.96.{i % 7}.{i}", 80, [(f"10.244.0.{i}", 8080, True, False)], name=f"s{i}")
        for i in range(1, 40)
    ]
    writer = MapWriter(BpfMaps(maps.pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
    try:
        want = desired_frontends(DesiredState.build(entries))
        writer.apply(diff(writer.frontends, want))
        got = read_state(writer.maps)
        assert got.frontends == want
        addresses = [int(key[0]) for key in got.frontends]
        assert addresses == sorted(addresses)
    finally:
        writer.maps.close()
        maps.clear()
