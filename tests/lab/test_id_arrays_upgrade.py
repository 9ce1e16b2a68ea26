"""An agent of this version started over the pins of an older one, whose backends and
reverse NAT were hashes keyed by id (ebpflb_be4, ebpflb_rnat4): their entries are
copied into the arrays that replaced them, the old pins go, the agent adopts the very
backend ids the old maps held (the ids live flows' conntrack entries name), and the
Service is served."""

from __future__ import annotations

import ctypes
import os
import secrets
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.maps import BpfMaps, IdArrayMap, read_state
from ebpflb.dataplane.bpf.syscall import MapType, PinnedMap, map_create, obj_pin
from ebpflb.lab import build, layout
from ebpflb.lab.agentproc import AgentProcess, services_synced

from .conftest import _require_root, unique_lab_name
from .test_last_good import IP, served, write_web

pytestmark = pytest.mark.root

SHIFT = 1000  # the old agent's backend ids: this version's own, moved out of its way


def _backend_ids(pin_dir: str) -> dict[str, int]:
    with BpfMaps(pin_dir) as maps:
        st = read_state(maps)
    (sid,) = st.svc_ids.values()
    (fs,) = st.frontends.values()
    return {f"{b.address}:{b.port}": st.backend_id(sid, b.address, b.port) for b in fs.backends}


def _downgrade_pins(pin_dir: str) -> None:
    """Rewrite the pins as the previous version left them: each id array as the hash
    keyed by id it was (backend ids moved up by SHIFT, the slots with them)."""
    for old, new in abi.ID_MAPS_MIGRATED.items():
        path = os.path.join(pin_dir, new)
        with IdArrayMap(path) as arr:
            keys, values, count = arr.dump_raw()
            info = arr.info
        shift = SHIFT if new in (abi.MAP_BACKENDS, abi.MAP_BACKENDS6) else 0
        ids = [i + shift for i in memoryview(keys).cast("I")]
        fd = map_create(MapType.HASH, 4, info.value_size, info.max_entries, old)
        with PinnedMap(old, fd=fd) as h:
            h.update_batch_raw(b"".join(bytes(ctypes.c_uint32(i)) for i in ids), values, count)
            obj_pin(h.fd, os.path.join(pin_dir, old))
        os.unlink(path)
    with PinnedMap(os.path.join(pin_dir, abi.MAP_SLOTS)) as slots:
        for key, bid in slots.items(abi.Lb4SlotKey, ctypes.c_uint32):
            slots.update(key, ctypes.c_uint32(bid.value + SHIFT))


def test_an_agent_over_old_id_hashes_keeps_their_ids_and_serves(tmp_path: Path) -> None:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2))
    agent: AgentProcess | None = None
    try:
        write_web(tmp_path, lab)

        def start(*extra: str) -> AgentProcess:
            proc = AgentProcess(
                lab.node_ns,
                manifests=tmp_path,
                pin_dir=pin_dir,
                log_path=lab.state_dir / "agent.log",
                extra_args=["--dataplane", "bpf", *extra],
            ).start()
            proc.wait_ready()
            proc.wait_for(services_synced(pin_dir, {f"{IP}:80/TCP"}), timeout=10, what="synced")
            return proc

        agent = start()  # no --cleanup: its data path and pins stay, as in an upgrade
        before = _backend_ids(pin_dir)
        assert len(before) == 2
        agent.stop()
        agent = None
        _downgrade_pins(pin_dir)

        agent = start("--cleanup")
        for old, new in abi.ID_MAPS_MIGRATED.items():
            assert not os.path.exists(os.path.join(pin_dir, old))
            assert os.path.exists(os.path.join(pin_dir, new))
        assert _backend_ids(pin_dir) == {b: i + SHIFT for b, i in before.items()}
        assert served(lab) == 10
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
