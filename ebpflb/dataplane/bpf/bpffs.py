"""The BPF filesystem: mounted at /sys/fs/bpf when missing (as Cilium does), and the
pin directory checked to be on one, since pins anywhere else silently fail.

The pin directory is also checked to be ours before anything in it is used or
removed: /sys/fs/bpf is world-writable (mode 1777), so an unprivileged user can create
/sys/fs/bpf/ebpflb before the agent first runs and then delete or replace the pins in
it (and an agent that adopts a replaced map writes where that user can read and
write). The directory must be owned by root or by the agent's own user, writable by
its owner only, and reached through no symlink; every directory above it must be
owned likewise and, where others may write to it, sticky (as /sys/fs/bpf and /tmp),
so that nobody else can rename it away. The agent creates it with mode 0700.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess

from ebpflb.errors import BpffsError, PinDirError

BPFFS_ROOT = "/sys/fs/bpf"
PIN_DIR_MODE = 0o700


def bpffs_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2:3] == ["bpf"]]


def on_bpffs(path: str) -> bool:
    path = os.path.realpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in bpffs_mounts())


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def pin_dir_problem(pin_dir: str) -> str | None:
    """Why `pin_dir` (which exists) is not safe to keep pins in, or None. See the
    module docstring for the rules."""
    trusted = {0, os.geteuid()}
    path = os.path.abspath(pin_dir)
    fix = f"remove it (rm -r {path}) or choose another --pin-dir"
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        return f"cannot resolve pin dir {path}: {exc.strerror}"
    if real != path:
        return (
            f"pin dir {path} is reached through a symlink (it resolves to {real}); "
            f"pass --pin-dir {real} if that is meant"
        )
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"pin dir {path} is not a directory; {fix}"
    if st.st_uid not in trusted:
        return (
            f"pin dir {path} is owned by {_owner(st.st_uid)}, not root: another user "
            f"could replace the pins in it; {fix}"
        )
    if st.st_mode & 0o022:
        return (
            f"pin dir {path} has mode {stat.S_IMODE(st.st_mode):04o}: others could "
            f"replace the pins in it; chmod 0700 {path}, or {fix}"
        )
    parent = os.path.dirname(path)
    while True:
        pst = os.lstat(parent)
        if pst.st_uid not in trusted or (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            return (
                f"pin dir {path} lies under {parent} (owned by {_owner(pst.st_uid)}, "
                f"mode {stat.S_IMODE(pst.st_mode):04o}), where another user could "
                f"rename it away; choose a --pin-dir under a directory only root writes"
            )
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def check_pin_dir(pin_dir: str) -> None:
    """Raise PinDirError when `pin_dir` exists and is not safe (see pin_dir_problem)."""
    if not os.path.lexists(pin_dir):
        return
    problem = pin_dir_problem(pin_dir)
    if problem is not None:
        raise PinDirError(problem)


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
            raise BpffsError(f"cannot mount the BPF filesystem at {BPFFS_ROOT}: {exc}") from exc
    check_pin_dir(pin_dir)  # before anything is created under a directory not ours
    if not on_bpffs(pin_dir):
        raise BpffsError(
            f"pin dir {pin_dir} is not on a BPF filesystem (mount -t bpf bpf <dir> first)"
        )
    if not os.path.lexists(pin_dir):
        os.makedirs(pin_dir, mode=PIN_DIR_MODE)
        os.chmod(pin_dir, PIN_DIR_MODE)  # whatever the umask
    check_pin_dir(pin_dir)


def remove_pins(pin_dir: str, names: tuple[str, ...]) -> None:
    """Unlink the pins `names`, any pinned socket-LB link, and the directory if then
    empty; refuses (PinDirError, nothing removed) where check_pin_dir does. A link
    whose last pin goes (and that no process holds open) is released, which detaches
    its program: a killed agent's teardown leaves no hook on the machine's cgroup."""
    from ebpflb.dataplane.bpf import abi

    check_pin_dir(pin_dir)
    with contextlib.suppress(OSError):
        names = (*names, *(n for n in os.listdir(pin_dir) if n.startswith(abi.LINK_PIN_PREFIX)))
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)


def remove_legacy_pins(pin_dir: str) -> None:
    """Unlink the pins of maps an older version used (a layout change renames a map):
    no program reads them any more, and they would keep their memory."""
    from ebpflb.dataplane.bpf import abi

    check_pin_dir(pin_dir)
    for name in abi.LEGACY_MAPS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))
