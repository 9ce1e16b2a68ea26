"""A typo in a live Service's manifest on the kernel path: the agent keeps serving its
last good version (10 of 10 requests answered across the bad edits), applies the
fixed edit, and removes the Service when its file goes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, traffic
from ebpflb.lab.agentproc import AgentProcess, services_synced

from . import manifests as k8s
from .conftest import _require_root, unique_lab_name

pytestmark = pytest.mark.root

IP = "10.96.7.10"
PODS = {"pod-1\n", "pod-2\n"}


def write_web(directory: Path, lab: layout.Lab, *, cluster_ip: str = IP, port: int = 80) -> None:
    k8s.write(
        directory,
        "web",
        [
            k8s.service(
                "web",
                cluster_ip,
                [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
            ),
            k8s.endpoint_slice(
                "web-a",
                "web",
                [{"name": "http", "port": 8080, "protocol": "TCP"}],
                [k8s.endpoint(str(p.ip)) for p in lab.pods],
            ),
        ],
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[layout.Lab, AgentProcess, str]]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"
    lab = build.up(layout.LabSpec(name, pods=2))
    agent: AgentProcess | None = None
    try:
        write_web(tmp_path, lab)
        agent = AgentProcess(
            lab.node_ns,
            manifests=tmp_path,
            pin_dir=pin_dir,
            log_path=lab.state_dir / "agent.log",
            extra_args=["--cleanup", "--dataplane", "bpf"],
        ).start()
        agent.wait_ready()
        yield lab, agent, pin_dir
    finally:
        if agent is not None:
            agent.stop()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


def served(lab: layout.Lab, port: int = 80) -> int:
    """How many of 10 requests to the Service a pod answered."""
    return sum(traffic.http_get(lab.client.netns, IP, port) in PODS for _ in range(10))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"cluster_ip": "10.96.7.1O"}, "spec.clusterIP '10.96.7.1O' is not an IP address"),
        ({"port": 80000}, "spec.ports[0]: port 80000 is out of range 1-65535"),
    ],
)
def test_a_typo_in_a_live_service_keeps_it_served(
    setup, tmp_path: Path, edit: dict[str, object], field: str
) -> None:
    lab, agent, pin_dir = setup
    assert served(lab) == 10
    write_web(tmp_path, lab, **edit)  # type: ignore[arg-type]
    agent.wait_for(lambda: field in agent.log_text(), timeout=10, what="the invalid edit logged")
    assert served(lab) == 10
    lines = [ln for ln in agent.log_text().splitlines() if "demo/web" in ln]
    assert len(lines) == 1 and "last good version is kept" in lines[0], lines

    write_web(tmp_path, lab, port=81)  # fixed: the new version applies
    agent.wait_for(
        services_synced(pin_dir, {f"{IP}:81/TCP"}), timeout=10, what="the fixed edit applied"
    )
    assert served(lab, 81) == 10

    (tmp_path / "web.json").unlink()  # removed: it goes
    agent.wait_for(services_synced(pin_dir, set()), timeout=10, what="the Service removed")
    with traffic.fails(traffic.Failure.UNREACHABLE):  # untranslated: no route
        traffic.http_get(lab.client.netns, IP, 81, timeout=0.5)
