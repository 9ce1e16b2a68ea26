"""An installed (non-editable) ebpflb compiles its programs from the C sources shipped
inside the package, not from a checkout: a wheel of the project is built, installed into
a fresh venv outside the checkout, and that copy's `ebpflb doctor` is run there.

Nothing is downloaded: the wheel is built with the project venv's setuptools
(--no-build-isolation, --no-index), installed --no-deps, and the venv sees bcc through
--system-site-packages and the other dependencies through a .pth naming the project
venv's site-packages (a directory named by a .pth has its own .pth files ignored, so the
checkout's editable-install hook does not come along)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpflb.dataplane.bpf import abi

pytestmark = pytest.mark.root

CHECKOUT = Path(__file__).resolve().parents[2]
# What a wheel is built from (as in an sdist): the packaging files and both source trees.
PROJECT_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
PROJECT_DIRS = ("ebpflb", "bpf")
STEP_TIMEOUT = 60.0


def _run(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False, cwd=cwd, env=env
    )
    assert proc.returncode == 0, (
        f"{args[:4]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A venv outside the checkout with a wheel of the project installed; removed after."""
    with tempfile.TemporaryDirectory(prefix="ebpflb-installed-") as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        for name in PROJECT_FILES:
            shutil.copy2(CHECKOUT / name, src / name)
        for name in PROJECT_DIRS:
            shutil.copytree(
                CHECKOUT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "_bpf")
            )
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "-w",
                str(root / "dist"),
                str(src),
            ]
        )
        wheels = list((root / "dist").glob("ebpflb-*.whl"))
        assert len(wheels) == 1, wheels
        venv = root / "venv"
        _run(
            ["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]
        )
        python = venv / "bin" / "python"
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
                str(wheels[0]),
            ]
        )
        site = Path(
            _run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
            ).stdout.strip()
        )
        (site / "ebpflb-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        shutil.rmtree(src)  # the installed copy must stand alone
        yield venv


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "EBPFLB_BPF_DIR", "VIRTUAL_ENV")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_the_installed_copy_is_imported(installed: Path) -> None:
    out = _run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import ebpflb; from ebpflb.dataplane.bpf.loader import bpf_dir; "
            "print(ebpflb.__file__); print(bpf_dir())",
        ],
        cwd=installed,
        env=_env(),
    ).stdout.split()
    package = Path(out[0]).parent
    assert package.is_relative_to(installed), out
    assert Path(out[1]) == package / "_bpf"
    assert (package / "_bpf" / "ebpflb_tc.c").is_file()
    assert (package / "_bpf" / "lib" / "abi.h").is_file()


def test_installed_doctor_compiles_the_shipped_sources(installed: Path) -> None:
    """`ebpflb doctor` of the installed copy, run outside the checkout, compiles and
    loads the programs from the package's own C sources."""
    proc = _run([str(installed / "bin" / "ebpflb"), "doctor", "--json"], cwd=installed, env=_env())
    report = json.loads(proc.stdout)
    compile_check = next(c for c in report["checks"] if c["name"] == "compile")
    assert compile_check["ok"], compile_check
    assert "/site-packages/ebpflb/_bpf" in compile_check["detail"]
    assert str(installed) in compile_check["detail"]
    assert str(CHECKOUT) not in compile_check["detail"]
    assert report["dataplane"] == "bpf"


# Run by the installed copy's python: the agent's own load step (a compiler child
# process started as `sys.executable -m ebpflb.dataplane.bpf.isolated`) on a private
# bpffs, unmounted and removed even when the load fails.
AGENT_LOAD = """
import json, os, subprocess, tempfile
from ebpflb.dataplane.bpf.isolated import load_isolated
from ebpflb.dataplane.bpf.loader import bpf_dir
mount = tempfile.mkdtemp(prefix="ebpflb-installed-pins-")
try:
    subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True)
    try:
        prog = load_isolated(pin_dir=mount, max_services=16, max_backends=64,
                             max_conntrack=64)
        print(json.dumps({"fds": [prog.fd, prog.egress_fd, *prog.sock_fds.values()],
                          "pins": sorted(os.listdir(mount)), "sources": str(bpf_dir())}))
        prog.close()
    finally:
        subprocess.run(["umount", mount], check=True)
finally:
    os.rmdir(mount)
"""


def test_installed_agent_loads_its_programs(installed: Path) -> None:
    """The agent's load path (compiler child process, pinned maps, program fds) works
    from the installed copy alone."""
    proc = _run([str(installed / "bin" / "python"), "-c", AGENT_LOAD], cwd=installed, env=_env())
    loaded = json.loads(proc.stdout)
    # tc ingress and egress, and the eight socket-LB hooks (four per family)
    assert len(loaded["fds"]) == 10 and all(fd >= 0 for fd in loaded["fds"]), loaded
    assert set(abi.ALL_MAPS) <= set(loaded["pins"]), loaded["pins"]
    assert Path(loaded["sources"]).is_relative_to(installed)
