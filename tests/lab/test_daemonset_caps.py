"""The capabilities that deploy/daemonset.yaml gives the agent are enough for the
kernel data path, and each of NET_ADMIN, BPF and PERFMON is needed: the agent runs in
a lab node with exactly the manifest's set as its bounding set (setpriv; uid 0 as in
the pod, no other capability, as `drop: [ALL]`), and a client reaches a ClusterIP
through it; without one of the three, it cannot load its programs.

Measured here (kernel 6.x): without PERFMON the verifier refuses the tc program
("pointer arithmetic with it prohibited for !root"); without BPF the maps cannot be
created; without NET_ADMIN bcc cannot load a tc program. SYS_RESOURCE (for
RLIMIT_MEMLOCK on kernels before 5.11) is not in this machine's own bounding set, and
not needed on this kernel: the run without it is the one that passes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns, traffic
from ebpflb.lab.traffic import Failure, failure_of

from . import manifests as k8s

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_IP = "10.96.9.10"


def daemonset_caps() -> list[str]:
    with open(ROOT / "deploy" / "daemonset.yaml") as f:
        (ds,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet"]
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    caps = agent["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


def _bounding_set() -> set[str]:
    """Names (as Kubernetes spells them) of the capabilities this process can pass on."""
    with open("/proc/self/status") as f:
        mask = int(next(line.split()[1] for line in f if line.startswith("CapBnd:")), 16)
    out = subprocess.run(
        ["capsh", f"--decode={mask:x}"], capture_output=True, text=True, check=True
    ).stdout
    return {c.removeprefix("cap_").upper() for c in out.split("=", 1)[1].strip().split(",")}


@pytest.fixture
def one_node(lab_names: Callable[[], str], tmp_path: Path) -> Iterator[tuple[layout.Lab, Path]]:
    lab = build.up(layout.LabSpec(lab_names(), pods=2))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    k8s.write(
        manifests,
        "web",
        [
            k8s.service(
                "web",
                CLUSTER_IP,
                [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            ),
            k8s.endpoint_slice(
                "web-a",
                "web",
                [{"name": "http", "port": 8080, "protocol": "TCP"}],
                [lab.endpoint(1), lab.endpoint(2)],
            ),
        ],
    )
    yield lab, manifests


def _run_agent(lab: layout.Lab, manifests: Path, caps: list[str]) -> tuple[bool, str]:
    """Run the agent with exactly ``caps``; whether a client got through, and its log."""
    pin_dir = f"/sys/fs/bpf/ebpflb-{lab.name}-caps"
    log_path = manifests.parent / f"agent-{'-'.join(caps) or 'none'}.log"
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    argv = [
        "setpriv",
        f"--bounding-set={bounding}",
        "--inh-caps=-all",
        "--",
        sys.executable,
        "-m",
        "ebpflb",
        "agent",
        "--manifests",
        str(manifests),
        "--pin-dir",
        pin_dir,
        "--dataplane",
        "bpf",
        "--cleanup",
        "--state-dir",
        str(manifests.parent / "state"),
    ]
    with open(log_path, "wb") as log:
        proc = netns.spawn(lab.node(1).netns, argv, stdout=log, stderr=subprocess.STDOUT)
    reached = False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not reached:
            try:
                reached = traffic.http_get(
                    lab.node(1).client.netns, CLUSTER_IP, 80, timeout=0.5
                ).startswith("pod-")
            except OSError as exc:
                # not translated (yet): the node has no route for the ClusterIP
                assert failure_of(exc) in (Failure.UNREACHABLE, Failure.TIMEOUT), exc
                time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
    return reached, log_path.read_text(errors="replace")


def test_the_daemonsets_capabilities_run_the_kernel_data_path(
    one_node: tuple[layout.Lab, Path],
) -> None:
    lab, manifests = one_node
    caps = daemonset_caps()
    assert {"NET_ADMIN", "BPF", "PERFMON"} <= set(caps)
    assert not {"SYS_ADMIN", "NET_RAW"} & set(caps)
    usable = [c for c in caps if c in _bounding_set()]
    reached, log = _run_agent(lab, manifests, usable)
    assert reached, log[-3000:]
    assert "agent running on the bpf data path" in log


@pytest.mark.parametrize("missing", ["NET_ADMIN", "BPF", "PERFMON"])
def test_without_each_capability_the_programs_do_not_load(
    one_node: tuple[layout.Lab, Path], missing: str
) -> None:
    lab, manifests = one_node
    caps = [c for c in daemonset_caps() if c in _bounding_set() and c != missing]
    reached, log = _run_agent(lab, manifests, caps)
    assert not reached
    # without CAP_BPF the agent refuses before compiling and names the privilege;
    # without either of the others the kernel refuses a program or its attach
    why = "loading BPF programs needs root" if missing == "BPF" else "cannot load"
    assert why in log, log[-3000:]


def test_setpriv_really_narrows_the_capabilities() -> None:
    """The mechanism the tests above rely on: a child's effective set is the bounding
    set given to setpriv, not root's full set."""
    out = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-all,+net_admin",
            "--inh-caps=-all",
            "--",
            "cat",
            "/proc/self/status",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    eff = int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("CapEff:")), 16)
    assert eff == 1 << 12  # CAP_NET_ADMIN alone
