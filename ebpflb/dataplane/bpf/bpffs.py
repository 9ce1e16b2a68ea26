"""The BPF filesystem: mounted at /sys/fs/bpf when missing (as Cilium does), and the
pin directory checked to be on one, since pins anywhere else silently fail."""

from __future__ import annotations

import contextlib
import os
import subprocess

from ebpflb.errors import DataplaneError

BPFFS_ROOT = "/sys/fs/bpf"


def bpffs_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2:3] == ["bpf"]]


def on_bpffs(path: str) -> bool:
    path = os.path.realpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in bpffs_mounts())


def ensure_pin_dir(pin_dir: str) -> None:
    if pin_dir.startswith(BPFFS_ROOT + "/") and BPFFS_ROOT not in bpffs_mounts():
        try:
            subprocess.run(
                ["mount", "-t", "bpf", "bpf", BPFFS_ROOT],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise DataplaneError(f"cannot mount the BPF filesystem at {BPFFS_ROOT}: {exc}") from exc
    if not on_bpffs(pin_dir):
        raise DataplaneError(
            f"pin dir {pin_dir} is not on a BPF filesystem (mount -t bpf bpf <dir> first)"
        )
    os.makedirs(pin_dir, exist_ok=True)


def remove_pins(pin_dir: str, names: tuple[str, ...]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)


def remove_legacy_pins(pin_dir: str) -> None:
    """Unlink the pins of maps an older version used (a layout change renames a map):
    no program reads them any more, and they would keep their memory."""
    from ebpflb.dataplane.bpf import abi

    for name in abi.LEGACY_MAPS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))
