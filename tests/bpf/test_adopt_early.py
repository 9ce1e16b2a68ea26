"""Reading the pinned maps back while the compiler child runs (dataplane.read_early):
what is read ahead is what a read afterwards gives, a writer adopts it as its own, and
it is refused once any pinned map is another map than the one it was read from."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.dataplane import read_early
from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.dataplane.bpf.syscall import PinnedMap, map_create, obj_pin
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.plan import desired_frontends
from ebpflb.sync.diff import diff
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, Maps
from tests.bpffs import private_bpffs
from tests.unit.test_plan import entry, state

STATE = state(
    entry("10.96.0.1", 80, [("10.0.0.1", 8080, True), ("10.0.0.2", 8080, False)]),
    entry("10.96.0.2", 53, [("10.0.0.3", 5353, True)]),
)


@pytest.fixture
def other_bpffs() -> Iterator[str]:
    with private_bpffs("ebpflb-test-early") as path:
        yield path


def _write(maps: Maps) -> MapWriter:
    maps.clear()
    writer = MapWriter(BpfMaps(maps.pin_dir), max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
    writer.apply(diff(writer.frontends, desired_frontends(STATE)))
    return writer


def test_read_ahead_is_adopted_as_a_read_now(maps: Maps) -> None:
    writer = _write(maps)
    try:
        early = read_early(maps.pin_dir)
        assert early is not None
        with BpfMaps(maps.pin_dir) as again:
            assert early.same_maps(again)
            now = read_state(again)
            adopted = MapWriter(
                again, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, adopted=early.state
            )
            assert early.state.frontends == now.frontends == desired_frontends(STATE)
            assert adopted.svc_ids == writer.svc_ids and adopted.slot_counts == writer.slot_counts
            assert adopted.backend_ids() == writer.backend_ids()
            assert not diff(adopted.frontends, desired_frontends(STATE))
    finally:
        writer.maps.close()


def test_nothing_is_read_ahead_without_pins(other_bpffs: str) -> None:
    assert read_early(other_bpffs) is None


def test_a_replaced_map_refuses_what_was_read_ahead(maps: Maps, other_bpffs: str) -> None:
    """The same maps pinned in a second bpffs; then one pin is replaced by a new map of
    the same geometry (as a loader that recreated it would): the ids tell."""
    writer = _write(maps)
    try:
        for name in abi.ALL_MAPS:
            with PinnedMap(os.path.join(maps.pin_dir, name)) as m:
                obj_pin(m.fd, os.path.join(other_bpffs, name))
        early = read_early(other_bpffs)
        assert early is not None
        with BpfMaps(other_bpffs) as same:
            assert early.same_maps(same)
        slots = os.path.join(other_bpffs, abi.MAP_SLOTS)
        info = writer.maps.slots.info
        os.unlink(slots)
        fd = map_create(
            info.type, info.key_size, info.value_size, info.max_entries, info.name, flags=info.flags
        )
        try:
            obj_pin(fd, slots)
        finally:
            os.close(fd)
        with BpfMaps(other_bpffs) as replaced:
            assert not early.same_maps(replaced)
    finally:
        writer.maps.close()
