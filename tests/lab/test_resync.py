"""The periodic resync on the kernel path: map entries deleted behind the agent's back
(as `bpftool map delete` would) are found and written again within --sync-period,
with real traffic failing in between and working again after.

The agent is stopped (SIGSTOP) while the entry is deleted and the traffic fails: a
resync every 2 s has no fixed phase, and one that ran between the delete and the
failing request repaired the entry first and made the request succeed."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.lab import build, layout, traffic
from ebpflb.lab.agentproc import AgentProcess

from . import manifests as k8s
from .conftest import _require_root, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.3.10"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[layout.Lab, AgentProcess, str]]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2))
    agent: AgentProcess | None = None
    try:
        k8s.write(
            tmp_path,
            "web",
            [
                k8s.service(
                    "web", IP, [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
                ),
                k8s.endpoint_slice(
                    "web-a",
                    "web",
                    [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    [k8s.endpoint(str(p.ip)) for p in lab.pods],
                ),
            ],
        )
        agent = AgentProcess(
            lab.node_ns,
            manifests=tmp_path,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf", "--sync-period", "2"],
        ).start()
        agent.wait_ready()
        yield lab, agent, pin_dir
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


@contextlib.contextmanager
def paused(agent: AgentProcess) -> Iterator[None]:
    """The agent stopped for the block (the kernel path keeps running): it cannot
    resync until the block ends."""
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(agent.pid, signal.SIGCONT)


def test_a_deleted_service_entry_is_written_again(setup) -> None:
    lab, agent, pin_dir = setup
    assert traffic.http_get(lab.client.netns, IP, 80) in {"pod-1\n", "pod-2\n"}
    key = abi.Lb4Key(abi.pack_ip4(IP), abi.htons(80), abi.IPPROTO_TCP)
    with PinnedMap(os.path.join(pin_dir, abi.MAP_SERVICES)) as svc:
        with paused(agent):
            assert svc.delete(key)
            with traffic.fails(traffic.Failure.UNREACHABLE):  # untranslated: no route
                traffic.http_get(lab.client.netns, IP, 80, timeout=0.5)
        agent.wait_for(
            lambda: svc.lookup(key, abi.Lb4Service) is not None,
            timeout=10,
            what="the service entry written again",
        )
    assert traffic.http_get(lab.client.netns, IP, 80) in {"pod-1\n", "pod-2\n"}
    assert "resync: the data path differed from the desired state; repaired 1" in (agent.log_text())
