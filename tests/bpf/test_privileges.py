"""Without root, CAP_BPF or CAP_SYS_ADMIN the kernel path says which privilege is
missing, before it compiles or creates anything (it said "Failed to compile BPF
module", and left a pin dir owned by the user behind)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf.loader import CAP_BPF, CAP_SYS_ADMIN, require_bpf_privileges
from ebpflb.errors import BpfUnavailableError

pytestmark = pytest.mark.root

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("caps", "allowed"),
    [
        (0, False),
        (1 << 12, False),  # CAP_NET_ADMIN alone
        (1 << CAP_BPF, True),
        (1 << CAP_SYS_ADMIN, True),
        ((1 << 41) - 1, True),  # root's full set
    ],
)
def test_the_privileges_that_load_bpf(caps: int, allowed: bool):
    if allowed:
        require_bpf_privileges(caps=caps, uid=NOBODY)
        return
    with pytest.raises(BpfUnavailableError) as err:
        require_bpf_privileges(caps=caps, uid=NOBODY)
    assert "CAP_BPF" in str(err.value) and "CAP_SYS_ADMIN" in str(err.value)
    assert f"uid {NOBODY}" in str(err.value) and "\n" not in str(err.value)


def test_a_non_root_agent_names_the_missing_privilege(tmp_path: Path):
    pin_dir = f"/sys/fs/bpf/ebpflb-privtest-{secrets.token_hex(3)}"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chown(state_dir, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)
    try:
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--inh-caps=-all",
                sys.executable,
                "-m",
                "ebpflb",
                "agent",
                "--dataplane",
                "bpf",
                "--manifests",
                str(REPO / "examples"),
                "--pin-dir",
                pin_dir,
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith(
            "error: operation not permitted: loading BPF programs needs root, CAP_BPF"
        ), proc.stderr
        assert "Failed to compile" not in proc.stderr
        assert not os.path.lexists(pin_dir)  # nothing made on the way
    finally:
        if os.path.lexists(pin_dir):
            shutil.rmtree(pin_dir)
