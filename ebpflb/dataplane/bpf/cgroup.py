"""The cgroup v2 hierarchy that socket-LB links its programs to: found wherever it is
mounted, or mounted under the agent's state directory when no mount is visible.

It is not always at /sys/fs/cgroup. A hybrid host (systemd's default on older
distributions) has it at /sys/fs/cgroup/unified; `ip netns exec` remounts /sys, so a
process started through it sees no cgroup2 at all; a container may see none, or only a
bind mount of its own sub-cgroup. The programs must be linked to the hierarchy's root
to act on every process of the node, and that root is one object whatever the mount
it is reached through: a cgroup2 mounted anywhere, even in a private mount namespace
that dies with the agent, reaches the same root and the same processes. So, as
Cilium does under its run directory: use a visible mount of the root; where there is
none, mount cgroup2 at ``<state dir>/cgroupv2``. A mount made there in the host's
mount namespace stays after the agent exits and is found, not mounted again, when it
restarts.

Mounts are read from /proc/self/mountinfo, not /proc/mounts: only mountinfo says which
cgroup a mount shows at its top (its root field), which tells the hierarchy's root
("/") from a bind-mounted sub-cgroup."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from ebpflb import libc
from ebpflb.errors import DataplaneError

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
MOUNT_DIR_NAME = "cgroupv2"  # under the agent's state directory, as Cilium's run dir
CGROUP2 = "cgroup2"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Cgroup2Mount:
    """One cgroup2 mount: where it is, and which cgroup it shows at its top."""

    mount_point: str
    root: str  # "/" for the hierarchy's (or cgroup namespace's) root; else a sub-cgroup

    @property
    def is_hierarchy_root(self) -> bool:
        return self.root == "/"


@dataclass(frozen=True)
class Cgroup2Choice:
    """Which cgroup2 the agent links socket-LB to, and whether it must mount it first."""

    path: str
    mount: bool  # True: nothing usable is visible; the agent mounts cgroup2 at path
    visible: Cgroup2Mount | None  # the mount it would use, or a sub-cgroup one it passes by

    def describe(self) -> str:
        if not self.mount:
            return f"cgroup v2 at {self.path}"
        if self.visible is not None:
            return (
                f"only a sub-cgroup ({self.visible.root}) of cgroup v2 is visible, at "
                f"{self.visible.mount_point}; the agent would mount the hierarchy's root at "
                f"{self.path}"
            )
        return f"no cgroup v2 is visible here; the agent would mount one at {self.path}"

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "mount": self.mount,
            "visible": None if self.visible is None else self.visible.mount_point,
        }


def unescape(field: str) -> str:
    """A mountinfo path with the kernel's octal escapes (\\040 space, \\011 tab,
    \\012 newline, \\134 backslash) decoded."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Cgroup2Mount]:
    """The cgroup2 mounts in a mountinfo text, in its order. A line is
    ``id parent major:minor root mount-point options [optional...] - type source
    super-options``; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) > sep + 1 and fields[sep + 1] == CGROUP2:
            mounts.append(Cgroup2Mount(mount_point=unescape(fields[4]), root=unescape(fields[3])))
    return mounts


def read_mountinfo(path: str = MOUNTINFO) -> str:
    with open(path) as f:
        return f.read()


def find_cgroup2(mounts: list[Cgroup2Mount]) -> Cgroup2Mount | None:
    """The mount to use: the first of the hierarchy's root; else the first sub-cgroup
    one (usable only for that subtree); None when there is no cgroup2 mount."""
    for m in mounts:
        if m.is_hierarchy_root:
            return m
    return mounts[0] if mounts else None


def choose_cgroup2(state_dir: str, mountinfo: str | None = None) -> Cgroup2Choice:
    """What the agent with this state directory would use; mounts nothing."""
    found = find_cgroup2(parse_mountinfo(read_mountinfo() if mountinfo is None else mountinfo))
    if found is not None and found.is_hierarchy_root:
        return Cgroup2Choice(path=found.mount_point, mount=False, visible=found)
    return Cgroup2Choice(
        path=os.path.join(os.path.abspath(state_dir), MOUNT_DIR_NAME), mount=True, visible=found
    )


def cgroup2_root() -> str:
    """The visible mount of the cgroup v2 hierarchy's root; DataplaneError if none."""
    found = find_cgroup2(parse_mountinfo(read_mountinfo()))
    if found is None or not found.is_hierarchy_root:
        raise DataplaneError("no cgroup v2 hierarchy root is mounted here (socket-LB needs one)")
    return found.mount_point


def mount_cgroup2(path: str) -> None:
    """mount -t cgroup2 none PATH, with the mount(2) system call."""
    os.makedirs(path, exist_ok=True)
    try:
        libc.mount("none", path, CGROUP2)
    except OSError as exc:
        raise DataplaneError(f"cannot mount cgroup2 at {path}: {exc.strerror}") from exc


def umount(path: str) -> None:
    """Unmount PATH (lazily: a process may still hold a directory of it open)."""
    try:
        libc.umount2(path, libc.MNT_DETACH)
    except OSError as exc:
        raise DataplaneError(f"cannot unmount {path}: {exc.strerror}") from exc


def ensure_cgroup2(state_dir: str) -> str:
    """The path of a mount of the cgroup v2 root, mounting one under ``state_dir`` when
    none is visible (a mount left there by an earlier run is visible, so reused)."""
    choice = choose_cgroup2(state_dir)
    if not choice.mount:
        return choice.path
    try:
        mount_cgroup2(choice.path)
    except DataplaneError as exc:
        if choice.visible is None:
            raise
        log.warning(
            "%s: socket-LB acts only on the processes of the sub-cgroup %s, visible at %s",
            exc,
            choice.visible.root,
            choice.visible.mount_point,
        )
        return choice.visible.mount_point
    mounted = {m.mount_point: m for m in parse_mountinfo(read_mountinfo())}
    real = os.path.realpath(choice.path)
    if real not in mounted or not mounted[real].is_hierarchy_root:
        umount(choice.path)
        raise DataplaneError(
            f"mounted cgroup2 at {choice.path}, but it does not show the hierarchy's root there"
        )
    log.info("mounted cgroup v2 at %s (no mount of it was visible)", choice.path)
    return choice.path
