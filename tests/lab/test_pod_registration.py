"""Registration from selectors on the kernel path: a Service with a selector and the
lab's Pods in the manifest directory, no EndpointSlice written. The matching pods get
traffic; a Pod edited to Ready=False is out of the ready set (and gets no new
connection) within a second of the edit; a Pod removed from the directory goes."""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.inspect import BpfInspector
from ebpflb.lab import build, layout, podnet, traffic
from ebpflb.lab.agentproc import AgentProcess, services_synced

from .conftest import CNIS, _require_root, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.8.10"
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "clusterIP": IP,
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    },
}


def write(directory: Path, objs: list[dict[str, Any]]) -> None:
    """The manifest file, replaced atomically."""
    tmp = directory / ".cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(objs))
    os.replace(tmp, directory / "cluster.yaml")


def active(pin_dir: str) -> dict[str, bool]:
    """Backend address -> active, for the Service's frontend in the pinned maps."""
    with BpfInspector(pin_dir) as insp:
        return {str(b.address): b.active for b in insp.backends() if str(b.frontend.address) == IP}


def spread(lab: layout.Lab, n: int = 30) -> Counter[str]:
    return Counter(
        {k.strip(): v for k, v in traffic.spread_tcp(lab.client.netns, IP, 80, n).items()}
    )


@pytest.fixture(params=CNIS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[layout.Lab, str]]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=3, cni=podnet.Cni(request.param)))
    agent: AgentProcess | None = None
    try:
        write(tmp_path, [SERVICE, *(lab.pod_manifest(p) for p in lab.pods)])
        agent = AgentProcess(
            lab.node_ns,
            manifests=tmp_path,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf"],
        ).start()
        agent.wait_for(services_synced(pin_dir, {f"{IP}:80/TCP"}), timeout=15)
        yield lab, pin_dir
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def test_selected_pods_get_traffic_and_leave_when_not_ready_or_removed(
    setup: tuple[layout.Lab, str], tmp_path: Path
) -> None:
    lab, pin_dir = setup
    ips = {p.name: str(p.ip) for p in lab.pods}
    assert active(pin_dir) == dict.fromkeys(ips.values(), True)
    assert set(spread(lab)) == {"pod-1", "pod-2", "pod-3"}

    # pod-2 turns not ready: out of the ready set within a second, no new connection
    write(
        tmp_path,
        [
            SERVICE,
            lab.pod_manifest(1),
            lab.pod_manifest(2, ready=False),
            lab.pod_manifest(3),
        ],
    )
    start = time.monotonic()
    deadline = start + 5.0
    while active(pin_dir).get(ips["pod-2"]) is not False and time.monotonic() < deadline:
        time.sleep(0.01)
    gone = time.monotonic() - start
    print(f"\npod-2 Ready=False -> out of the ready backends in {gone * 1000:.0f} ms")
    assert gone < 1.0
    assert active(pin_dir)[ips["pod-2"]] is False  # still listed, as a cluster's slice has it
    assert set(spread(lab)) == {"pod-1", "pod-3"}

    # pod-3 removed from the directory: it goes
    write(tmp_path, [SERVICE, lab.pod_manifest(1), lab.pod_manifest(2, ready=False)])
    start = time.monotonic()
    deadline = start + 5.0
    while ips["pod-3"] in active(pin_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"pod-3 removed -> out of the backends in {(time.monotonic() - start) * 1000:.0f} ms")
    assert active(pin_dir) == {ips["pod-1"]: True, ips["pod-2"]: False}
    assert set(spread(lab)) == {"pod-1"}
