"""The map writer with IPv6 and dual-stack desired states on the real pinned maps: IPv6
frontends go to ebpflb_svc6 with their backends in ebpflb_be6, reverse NAT in
ebpflb_rnat6 and source ranges in ebpflb_srcr6, with ids from the one space both
families share; a restarted writer re-adopts them; deleting removes every entry."""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendKind,
    Protocol,
    ServiceEntry,
    ServicePortName,
    ServiceRef,
)
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, Maps
from tests.unit.test_plan import entry_st

U32 = ctypes.c_uint32


def entry(
    ip: str,
    port: int,
    backends: list[tuple[str, int, bool]],
    *,
    name: str = "web",
    kind: FrontendKind = FrontendKind.CLUSTER_IP,
    affinity: int = 0,
    snat: str | None = None,
    ranges: tuple[str, ...] = (),
) -> ServiceEntry:
    return ServiceEntry(
        Frontend(ipaddress.ip_address(ip), port, Protocol.TCP, kind),
        ServicePortName(ServiceRef("demo", name), "http", Protocol.TCP),
        tuple(sorted(Backend(ipaddress.ip_address(a), p, ready=r) for a, p, r in backends)),
        affinity,
        ipaddress.ip_address(snat) if snat else None,
        tuple(sorted(ipaddress.ip_network(r) for r in ranges)),
    )


V6 = entry("fd00:10:96::a", 80, [("fd00:10:244::b", 8080, True), ("fd00:10:244::c", 8080, True)])
V6_LB = entry(
    "fd00:192:168:60::5",
    443,
    [("fd00:10:244::b", 8443, True), ("fd00:10:244::d", 8443, False)],
    name="lb",
    kind=FrontendKind.LOAD_BALANCER,
    affinity=10800,
    snat="fd00:192:168:50::1",
    ranges=("fd00:192:168:50::/64", "2001:db8::/32"),
)
V4 = entry("10.96.0.10", 80, [("10.244.0.11", 8080, True)])
DUAL = DesiredState.build([V4, V6, V6_LB])


@pytest.fixture
def dual(maps: Maps) -> Iterator[Maps]:
    """The shared maps, emptied of IPv6 entries too (conftest's clear() knows IPv4's)."""
    maps.clear()
    _clear6(maps.pin_dir)
    try:
        yield maps
    finally:
        _clear6(maps.pin_dir)
        maps.clear()


def _clear6(pin_dir: str) -> None:
    with BpfMaps(pin_dir) as m:
        for pinned, key_type in (
            (m.svc6, abi.Lb6Key),
            (m.backends6, U32),
            (m.rnat6, U32),
            (m.src_ranges6, abi.SrcRange6Key),
            (m.ct6, abi.Ct6Key),
            (m.affinity6, abi.Aff6Key),
        ):
            for key in list(pinned.keys(key_type)):
                pinned.delete(key)


def _writer(pin_dir: str) -> MapWriter:
    return MapWriter(BpfMaps(pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)


def _apply(writer: MapWriter, state: DesiredState) -> None:
    writer.apply(diff(writer.frontends, desired_frontends(state)))


def _items(m: PinnedMap, key_type: type, value_type: type) -> list[tuple[object, object]]:
    return list(m.items(key_type, value_type))


def test_ipv6_frontends_land_in_the_ipv6_maps(dual: Maps) -> None:
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
        m = writer.maps
        svc6 = {
            (abi.unpack_addr6(k.address), abi.ntohs(k.dport), k.proto): v
            for k, v in m.svc6.items(abi.Lb6Key, abi.Lb6Service)
        }
        a = ipaddress.IPv6Address("fd00:10:96::a")
        lb = ipaddress.IPv6Address("fd00:192:168:60::5")
        assert set(svc6) == {(a, 80, abi.IPPROTO_TCP), (lb, 443, abi.IPPROTO_TCP)}
        plain, restricted = svc6[(a, 80, 6)], svc6[(lb, 443, 6)]
        assert plain.count == 2 and plain.flags & abi.SvcFlag.CLUSTERIP
        assert bytes(plain.snat_address) == bytes(16)  # none
        assert restricted.count == 1 and restricted.affinity_timeout == 10800
        assert restricted.flags & abi.SvcFlag.SRC_RANGES
        assert restricted.flags & abi.SvcFlag.LOADBALANCER
        assert abi.unpack_addr6(restricted.snat_address) == ipaddress.IPv6Address(
            "fd00:192:168:50::1"
        )
        # The IPv4 map holds only the IPv4 frontend.
        svc4 = [abi.unpack_ip4(k.address) for k in m.svc.keys(abi.Lb4Key)]
        assert svc4 == [ipaddress.IPv4Address("10.96.0.10")]
        # Backends: by family, each naming its frontend's id.
        be6 = {bid.value: be for bid, be in m.backends6.items(U32, abi.Lb6Backend)}
        assert sorted(
            (str(abi.unpack_addr6(b.address)), abi.ntohs(b.port), b.svc_id) for b in be6.values()
        ) == sorted(
            [
                ("fd00:10:244::b", 8080, plain.id),
                ("fd00:10:244::c", 8080, plain.id),
                ("fd00:10:244::b", 8443, restricted.id),
                ("fd00:10:244::d", 8443, restricted.id),
            ]
        )
        be4 = {bid.value: be for bid, be in m.backends.items(U32, abi.Lb4Backend)}
        assert len(be4) == 1
        # One id space: no frontend id and no backend id is used twice across families.
        (svc_v4,) = m.svc.items(abi.Lb4Key, abi.Lb4Service)
        assert len({svc_v4[1].id, plain.id, restricted.id}) == 3
        assert not set(be4) & set(be6)
        # Slots (shared map) of the IPv6 frontend name its IPv6 backends.
        held = [m.slots.lookup(abi.Lb4SlotKey(plain.id, i), U32) for i in range(2)]
        slot_bids = {b.value for b in held if b is not None}
        assert {str(abi.unpack_addr6(be6[b].address)) for b in slot_bids} == {
            "fd00:10:244::b",
            "fd00:10:244::c",
        }
        # Reverse NAT by id, in the IPv6 map only.
        rnat = m.rnat6.lookup(U32(plain.id), abi.Lb6Rnat)
        assert rnat is not None and abi.unpack_addr6(rnat.address) == a
        assert abi.ntohs(rnat.port) == 80
        assert m.rnat.lookup(U32(plain.id), abi.Lb4Rnat) is None
        # Source ranges: prefixlen = 32 (the id) + the prefix, in the IPv6 LPM map.
        ranges = sorted(
            (k.prefixlen, k.svc_id, str(abi.unpack_addr6(k.address)))
            for k in m.src_ranges6.keys(abi.SrcRange6Key)
        )
        assert ranges == [
            (64, restricted.id, "2001:db8::"),
            (96, restricted.id, "fd00:192:168:50::"),
        ]
        assert not list(m.src_ranges.keys(abi.SrcRange4Key))
        # Read back as a restarted agent reads them: exactly the desired state.
        with BpfMaps(dual.pin_dir) as fresh:
            assert read_state(fresh).frontends == desired_frontends(DUAL)
    finally:
        writer.maps.close()


def test_a_restarted_writer_adopts_both_families_ids(dual: Maps) -> None:
    first = _writer(dual.pin_dir)
    try:
        _apply(first, DUAL)
        ids, owned = dict(first.svc_ids), first.backend_ids()
    finally:
        first.maps.close()
    again = _writer(dual.pin_dir)
    try:
        assert again.svc_ids == ids
        assert again.backend_ids() == owned
        assert again.frontends == desired_frontends(DUAL)
        assert not diff(again.frontends, desired_frontends(DUAL))  # nothing to write
        # A new frontend gets an id neither family uses.
        extra = entry("fd00:10:96::b", 53, [("fd00:10:244::e", 53, True)], name="dns")
        _apply(again, DesiredState.build([V4, V6, V6_LB, extra]))
        assert again.svc_ids[extra.frontend.key] not in ids.values()
        (new_bid,) = again.owned(again.svc_ids[extra.frontend.key], v6=True).values()
        assert new_bid not in {b for v in owned.values() for b in v.values()}
    finally:
        again.maps.close()


def test_deleting_removes_every_ipv6_entry(dual: Maps) -> None:
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
        _apply(writer, DesiredState.build([V4]))
        m = writer.maps
        assert not list(m.svc6.keys(abi.Lb6Key))
        assert not list(m.backends6.keys(U32))
        assert not list(m.rnat6.keys(U32))
        assert not list(m.src_ranges6.keys(abi.SrcRange6Key))
        sid4 = writer.svc_ids[V4.frontend.key]
        assert {k.svc_id for k in m.slots.keys(abi.Lb4SlotKey)} == {sid4}
        assert [k.value for k in m.meta.keys(U32)] == [sid4]
        assert len(list(m.backends.keys(U32))) == 1
        with BpfMaps(dual.pin_dir) as fresh:
            assert read_state(fresh).frontends == desired_frontends(DesiredState.build([V4]))
    finally:
        writer.maps.close()


def test_an_ipv6_source_range_change_keeps_the_others(dual: Maps) -> None:
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
        narrowed = entry(
            "fd00:192:168:60::5",
            443,
            [("fd00:10:244::b", 8443, True)],
            name="lb",
            kind=FrontendKind.LOAD_BALANCER,
            snat="fd00:192:168:50::1",
            ranges=("2001:db8::/32",),
        )
        _apply(writer, DesiredState.build([V4, V6, narrowed]))
        sid = writer.svc_ids[narrowed.frontend.key]
        keys = [(k.prefixlen, k.svc_id) for k in writer.maps.src_ranges6.keys(abi.SrcRange6Key)]
        assert keys == [(64, sid)]
    finally:
        writer.maps.close()


def test_an_orphaned_ipv6_backend_is_removed_on_adoption(dual: Maps) -> None:
    with BpfMaps(dual.pin_dir) as m:
        m.backends6.update(
            U32(7),
            abi.Lb6Backend(abi.addr6("fd00::7"), abi.htons(80), 6, abi.BackendFlag.ACTIVE, 33),
        )
    writer = _writer(dual.pin_dir)
    try:
        assert writer.maps.backends6.lookup(U32(7), abi.Lb6Backend) is None
        assert writer.frontends == {}
    finally:
        writer.maps.close()


# A dual-stack property: any mix of IPv4 and IPv6 states A to any B leaves exactly B.
IPS6 = [f"fd00:10:244::{i:x}" for i in range(1, 6)]
FRONTENDS6 = [("fd00:10:96::1", 80), ("fd00:10:96::1", 443), ("fd00:10:96::2", 53)]
entry6_st = st.builds(
    lambda fe, bes, aff, snat, ranges: entry(
        fe[0],
        fe[1],
        list({(a, p): (a, p, r) for a, p, r in bes}.values()),
        kind=FrontendKind.LOAD_BALANCER if snat or ranges else FrontendKind.CLUSTER_IP,
        affinity=aff,
        snat=snat,
        ranges=tuple(sorted(set(ranges))),
    ),
    st.sampled_from(FRONTENDS6),
    st.lists(st.tuples(st.sampled_from(IPS6), st.sampled_from([80, 8080]), st.booleans())),
    st.sampled_from([0, 10800]),
    st.sampled_from([None, "fd00:192:168:50::1"]),
    st.lists(st.sampled_from(["fd00:192:168:50::/64", "::/0", "2001:db8::1/128"]), max_size=2),
)
dual_st = st.lists(st.one_of(entry_st, entry6_st), max_size=4).map(
    lambda es: DesiredState.build({e.frontend.key: e for e in es}.values())
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=dual_st, b=dual_st)
def test_any_dual_stack_a_to_any_b_leaves_exactly_b(dual: Maps, a, b) -> None:
    dual.clear()
    _clear6(dual.pin_dir)
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, a)
        _apply(writer, b)
        with BpfMaps(dual.pin_dir) as fresh:
            assert read_state(fresh).frontends == desired_frontends(b)
        assert writer.frontends == desired_frontends(b)
        n6 = sum(1 for k in desired_frontends(b) if k[0].version == 6)
        assert len(list(writer.maps.svc6.keys(abi.Lb6Key))) == n6
        assert len(list(writer.maps.rnat6.keys(U32))) == n6
    finally:
        writer.maps.close()


def test_the_writers_counts_are_what_the_maps_hold(dual: Maps) -> None:
    """Telemetry takes the fill of the maps the agent writes from the writer's records:
    for each family's maps they must be what a dump counts."""
    import os

    from ebpflb.dataplane.bpf.telemetry import written_counts

    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
        known = written_counts(writer)
        assert known[abi.MAP_SERVICES6] == 2 and known[abi.MAP_BACKENDS6] == 4
        by_name = {os.path.basename(m.path): m for m in writer.maps.all()}
        for name, n in known.items():
            assert by_name[name].count() == n, name
    finally:
        writer.maps.close()
