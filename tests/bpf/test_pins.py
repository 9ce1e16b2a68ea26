"""Pinned maps are reused only when they match what the agent asks for."""

from __future__ import annotations

import pytest

from ebpflb.dataplane.bpf.loader import LoadedProgram
from ebpflb.dataplane.bpf.maps import BpfMaps, check_geometry
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
