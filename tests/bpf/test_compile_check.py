"""doctor's compile check (loader.compile_check): ebpflb's own programs compiled and
loaded from bpf_dir() in a scratch pin directory that is gone afterwards, also without
CAP_SYS_ADMIN (then under /sys/fs/bpf instead of a private bpffs mount)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import loader
from ebpflb.dataplane.bpf.bpffs import BPFFS_ROOT, bpffs_mounts
from ebpflb.errors import BpfUnavailableError

pytestmark = pytest.mark.root
PREFIX = "ebpflb-compile-check-"


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory for compile_check's scratch mount (so that a doctor
    run elsewhere on the machine cannot show up as a leftover of these tests)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def _leftovers(tmp: Path) -> list[str]:
    """Scratch mounts and directories still there (under `tmp` and /sys/fs/bpf)."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if str(tmp) in line.split()[1]]
    bpffs = [p.name for p in Path(BPFFS_ROOT).iterdir() if p.name.startswith(PREFIX)]
    return mounts + [p.name for p in tmp.iterdir()] + bpffs


def test_compiles_the_source_tree_and_leaves_nothing(scratch: Path) -> None:
    assert loader.compile_check() == loader.bpf_dir()
    assert _leftovers(scratch) == []


def test_broken_sources_fail_with_the_file_named(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), broken)
    with (broken / loader.PROGRAM_FILE).open("a") as f:
        f.write("\nint ebpflb_broken = ;\n")
    monkeypatch.setenv(loader.BPF_DIR_ENV, str(broken))
    with pytest.raises(BpfUnavailableError, match=str(broken / loader.PROGRAM_FILE)):
        loader.compile_check()
    assert _leftovers(scratch) == []


def test_without_cap_sys_admin_pins_under_sys_fs_bpf(scratch: Path) -> None:
    """With CAP_BPF but no CAP_SYS_ADMIN no bpffs can be mounted: the scratch pins go
    to a directory under the mounted /sys/fs/bpf, removed afterwards."""
    assert BPFFS_ROOT in bpffs_mounts()  # scripts/setup.sh mounts it
    code = (
        "from ebpflb.dataplane.bpf import loader\n"
        "with loader._scratch_bpffs() as d: print(d)\n"
        "print(loader.compile_check())\n"
    )
    proc = subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-sys_admin",
            "--inh-caps",
            "-sys_admin",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pin_dir, source = proc.stdout.split()
    assert Path(pin_dir).parent == Path(BPFFS_ROOT)
    assert Path(source) == loader.bpf_dir()
    assert _leftovers(scratch) == []
