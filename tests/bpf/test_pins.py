"""Pinned maps are reused only when they match what the agent asks for."""

from __future__ import annotations

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import LoadedProgram
from ebpflb.dataplane.bpf.maps import BpfMaps, check_geometry, resolve_sizes
from ebpflb.errors import DataplaneError

from .conftest import MAX_BACKENDS, MAX_CONNTRACK, MAX_SERVICES

pytestmark = pytest.mark.root


def test_matching_maps_are_accepted(program: LoadedProgram, pin_dir: str):
    with BpfMaps(pin_dir) as maps:
        check_geometry(
            maps, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, max_conntrack=MAX_CONNTRACK
        )


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ("max_services", "--max-services"),
        ("max_backends", "--max-backends"),
        ("max_conntrack", "--max-conntrack"),
    ],
)
def test_a_size_change_is_refused_naming_the_map_and_flag(
    program: LoadedProgram, pin_dir: str, option: str, flag: str
):
    sizes = {
        "max_services": MAX_SERVICES,
        "max_backends": MAX_BACKENDS,
        "max_conntrack": MAX_CONNTRACK,
    }
    sizes[option] *= 2
    with BpfMaps(pin_dir) as maps, pytest.raises(DataplaneError) as err:
        check_geometry(maps, **sizes)
    assert flag in str(err.value) and pin_dir in str(err.value)


def test_missing_pins_are_a_clear_error(tmp_path):
    with pytest.raises(DataplaneError, match="no ebpflb maps pinned under"):
        BpfMaps(str(tmp_path))


def test_sizes_not_given_are_the_pinned_maps_sizes(program: LoadedProgram, pin_dir: str):
    """An agent upgraded across a change of the default sizes keeps its pinned maps
    (and their ids and flows) when no --max-* flag asks otherwise."""
    assert resolve_sizes(pin_dir, max_services=None, max_backends=None, max_conntrack=None) == (
        MAX_SERVICES,
        MAX_BACKENDS,
        MAX_CONNTRACK,
    )
    # a size given wins, and check_geometry then refuses the pinned one by its flag
    assert resolve_sizes(pin_dir, max_services=7, max_backends=None, max_conntrack=None)[0] == 7


def test_sizes_without_pins_are_the_defaults(tmp_path):
    assert resolve_sizes(
        str(tmp_path), max_services=None, max_backends=None, max_conntrack=None
    ) == (abi.DEFAULT_MAX_SERVICES, abi.DEFAULT_MAX_BACKENDS, abi.DEFAULT_MAX_CONNTRACK)
    assert resolve_sizes(str(tmp_path), max_services=5, max_backends=6, max_conntrack=7) == (
        5,
        6,
        7,
    )


def test_the_defaults_hold_100000_services_of_5_endpoints():
    assert abi.DEFAULT_MAX_SERVICES - 1 >= 100_000  # id 0 is never given out
    assert abi.DEFAULT_MAX_BACKENDS - 1 >= 500_000
