"""An agent of this version started over the pins of an older one, whose Maglev outer
map ebpflb_mg4 holds only non-mmapable tables: the old pin is removed, the tables go
into ebpflb_mg4_v2, and the Service is served through them."""

from __future__ import annotations

import ctypes
import os
import secrets
from array import array
from pathlib import Path

import pytest

from ebpflb import maglev
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import ensure_pin_dir, remove_pins
from ebpflb.dataplane.bpf.maglevtables import TABLE_FLAGS
from ebpflb.dataplane.bpf.syscall import (
    BPF_F_INNER_MAP,
    BPF_MAP_TYPE_ARRAY,
    MapType,
    PinnedMap,
    map_create,
    map_fd_by_id,
    map_info,
    obj_pin,
)
from ebpflb.lab import build, layout
from ebpflb.lab.agentproc import AgentProcess, services_synced

from .conftest import _require_root, unique_lab_name
from .test_last_good import IP, served, write_web

pytestmark = pytest.mark.root


def _pin_old_maglev_map(pin_dir: str) -> None:
    """ebpflb_mg4 as the previous version made it (template BPF_F_INNER_MAP only),
    holding one table for frontend id 1."""
    template = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, "ebpflb_mgtmpl", flags=BPF_F_INNER_MAP)
    try:
        fd = map_create(MapType.ARRAY_OF_MAPS, 4, 4, 64, "ebpflb_mg4", inner_map_fd=template)
    finally:
        os.close(template)
    with PinnedMap("ebpflb_mg4", fd=fd) as outer:
        table = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1021, "ebpflb_mgt", flags=BPF_F_INNER_MAP)
        try:
            outer.update(ctypes.c_uint32(1), ctypes.c_uint32(table))
        finally:
            os.close(table)
        obj_pin(outer.fd, os.path.join(pin_dir, "ebpflb_mg4"))


def test_an_agent_over_an_old_maglev_pin_removes_it_and_serves(tmp_path: Path) -> None:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2))
    agent: AgentProcess | None = None
    try:
        ensure_pin_dir(pin_dir)
        _pin_old_maglev_map(pin_dir)
        write_web(tmp_path, lab)
        agent = AgentProcess(
            lab.node_ns,
            manifests=tmp_path,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf", "--lb-algorithm", "maglev"],
        ).start()
        agent.wait_ready()
        agent.wait_for(services_synced(pin_dir, {f"{IP}:80/TCP"}), timeout=10, what="synced")
        assert not os.path.exists(os.path.join(pin_dir, "ebpflb_mg4"))
        with PinnedMap(os.path.join(pin_dir, abi.MAP_MAGLEV)) as outer:
            _, values, count = outer.dump_raw()
        assert count == 1  # the frontend's table, nothing of the old map
        fd = map_fd_by_id(array("I", values)[0])
        try:
            info = map_info(fd)
        finally:
            os.close(fd)
        assert (info.max_entries, info.flags) == (maglev.DEFAULT_TABLE_SIZE, TABLE_FLAGS)
        assert served(lab) == 10
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, (*abi.ALL_MAPS, *abi.LEGACY_MAPS, "ebpflb_mg4"))
