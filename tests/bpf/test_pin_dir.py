"""The pin directory is ours before anything in it is used or removed: another
user's directory (made first under a world-writable /sys/fs/bpf), a symlink, or a
group/other-writable mode is refused with one line naming it, and its pins are left.
Run on a private bpffs (mode 1777 at its root, as /sys/fs/bpf), unmounted afterwards."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ebpflb.dataplane import choose
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import ensure_pin_dir, remove_legacy_pins, remove_pins
from ebpflb.dataplane.bpf.dataplane import BpfConfig, BpfDataplane
from ebpflb.dataplane.bpf.syscall import BPF_MAP_TYPE_ARRAY, map_create, obj_pin
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.dataplane.userspace.dataplane import UserspaceConfig
from ebpflb.errors import DataplaneError, PinDirError

pytestmark = pytest.mark.root

NOBODY = 65534


def _pin_a_map(pin_dir: str, name: str = abi.MAP_SERVICES) -> str:
    fd = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, "pintest")
    try:
        obj_pin(fd, os.path.join(pin_dir, name))
    finally:
        os.close(fd)
    return os.path.join(pin_dir, name)


def test_the_pin_dir_is_created_0700(bpffs: str):
    assert stat.S_IMODE(os.stat(bpffs).st_mode) == 0o1777  # as /sys/fs/bpf
    pin_dir = os.path.join(bpffs, "ebpflb")
    old = os.umask(0)
    try:
        ensure_pin_dir(pin_dir)
    finally:
        os.umask(old)
    st = os.stat(pin_dir)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0)


def test_a_dir_another_user_made_first_is_refused_and_its_pins_kept(bpffs: str):
    pin_dir = os.path.join(bpffs, "ebpflb")
    # The attack: an unprivileged user makes the directory before the agent does.
    subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "mkdir",
            "-m",
            "0700",
            pin_dir,
        ],
        check=True,
    )
    os.chmod(pin_dir, 0o777)  # root plants a pin for the test, as the agent once did
    pin = _pin_a_map(pin_dir)
    os.chmod(pin_dir, 0o700)
    for step in (
        ensure_pin_dir,
        remove_legacy_pins,
        lambda d: remove_pins(d, abi.ALL_MAPS + abi.LEGACY_MAPS),
    ):
        with pytest.raises(PinDirError) as err:
            step(pin_dir)
        msg = str(err.value)
        assert "\n" not in msg and pin_dir in msg and f"uid {NOBODY}" in msg
        assert f"rm -r {pin_dir}" in msg
        assert os.path.exists(pin)


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o1777])
def test_a_dir_others_may_write_is_refused(bpffs: str, mode: int):
    pin_dir = os.path.join(bpffs, "ebpflb")
    os.mkdir(pin_dir)
    os.chmod(pin_dir, mode)
    pin = _pin_a_map(pin_dir)
    with pytest.raises(PinDirError, match=f"mode {mode:04o}.*chmod 0700 {pin_dir}"):
        ensure_pin_dir(pin_dir)
    with pytest.raises(PinDirError):
        remove_pins(pin_dir, abi.ALL_MAPS)
    assert os.path.exists(pin)


def test_a_symlinked_dir_is_refused(bpffs: str):
    real = os.path.join(bpffs, "real")
    ensure_pin_dir(real)
    link = os.path.join(bpffs, "ebpflb")
    os.symlink(real, link)
    pin = _pin_a_map(real)
    with pytest.raises(PinDirError, match=f"{link} is reached through a symlink.*{real}"):
        ensure_pin_dir(link)
    with pytest.raises(PinDirError):
        remove_pins(link, abi.ALL_MAPS)
    assert os.path.exists(pin)


def test_a_dir_under_another_users_dir_is_refused(bpffs: str):
    theirs = os.path.join(bpffs, "theirs")
    subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "mkdir",
            "-m",
            "0755",
            theirs,
        ],
        check=True,
    )
    os.chmod(theirs, 0o777)
    pin_dir = os.path.join(theirs, "ebpflb")
    os.mkdir(pin_dir, 0o700)
    with pytest.raises(PinDirError, match=f"lies under {theirs}.*uid {NOBODY}"):
        ensure_pin_dir(pin_dir)


class _NoFilters:
    """TcAttacher stand-in: no ebpflb filter on any interface (the real one would
    detach filters in this test's network namespace, which is the host's)."""

    def __init__(self, _fd: int) -> None:
        pass

    def attached(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def test_auto_refuses_a_foreign_pin_dir_and_leaves_its_pins(
    bpffs: str, monkeypatch: pytest.MonkeyPatch
):
    """Pins in a directory another user made: `auto` neither uses them, nor removes
    them, nor starts the userspace path over them; it stops with the pin dir's fix."""
    from ebpflb.dataplane.bpf import attach

    monkeypatch.setattr(attach, "TcAttacher", _NoFilters)
    pin_dir = os.path.join(bpffs, "ebpflb")
    subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "mkdir",
            "-m",
            "0777",
            pin_dir,
        ],
        check=True,
    )
    pins = [_pin_a_map(pin_dir, name) for name in abi.ALL_MAPS]
    started: list[str] = []

    def open_userspace(_c: UserspaceConfig) -> FakeDataplane:
        started.append("userspace")
        return FakeDataplane()

    with pytest.raises(DataplaneError) as raised:
        choose.open_dataplane(
            "auto",
            bpf_config=BpfConfig(pin_dir=pin_dir),
            userspace_config=UserspaceConfig(),
            open_bpf=BpfDataplane,
            open_userspace=open_userspace,
            clear_userspace=lambda _c: None,
        )
    assert started == []
    assert all(os.path.exists(p) for p in pins)
    assert f"pin dir {pin_dir} is owned by" in str(raised.value)
    assert raised.value.fix == PinDirError.fix
