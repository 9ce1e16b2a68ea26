"""The bpf(2) system call number per architecture: the number of the machine the
process runs on, never x86-64's on another machine."""

from __future__ import annotations

import errno
import platform

import pytest

from ebpflb.dataplane.bpf import syscall
from ebpflb.errors import BpfUnavailableError

# (platform.machine(), pointer bits) -> __NR_bpf from the kernel's syscall tables.
NUMBERS = [
    ("x86_64", 64, 321),
    ("aarch64", 64, 280),
    ("arm64", 64, 280),
    ("x86_64", 32, 357),  # a 32-bit process on a 64-bit kernel uses the i386 table
    ("aarch64", 32, 386),  # ... and on arm64, the arm table
    ("i686", 32, 357),
    ("armv7l", 32, 386),
    ("ppc64le", 64, 361),
    ("s390x", 64, 351),
    ("riscv64", 64, 280),
    ("loongarch64", 64, 280),
]


@pytest.mark.parametrize(("machine", "bits", "number"), NUMBERS)
def test_number_per_machine(
    monkeypatch: pytest.MonkeyPatch, machine: str, bits: int, number: int
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert syscall.bpf_syscall_number(pointer_bits=bits) == number


def test_arm64_is_not_x86_64s_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """The number a fresh process picks on an arm64 machine (platform.machine() as the
    kernel reports it there) is 280: 321 there is a different system call."""
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(syscall, "_nr_bpf", None)
    assert syscall.bpf_syscall_number() == 280


def test_unknown_machine_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "mips64")
    with pytest.raises(BpfUnavailableError, match=r"machine 'mips64' \(64-bit\)"):
        syscall.bpf_syscall_number(pointer_bits=64)


def test_unknown_machine_fails_the_call_not_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the module works anywhere (inspection imports it); the first bpf call on
    an unknown machine raises instead of making whatever system call 321 is there."""
    monkeypatch.setattr(platform, "machine", lambda: "sparc64")
    monkeypatch.setattr(syscall, "_nr_bpf", None)
    with pytest.raises(BpfUnavailableError, match="sparc64"):
        syscall.obj_get("/sys/fs/bpf/ebpflb-no-such-pin")


def test_this_machine_number_is_the_one_used() -> None:
    """On this machine the table's number is the real bpf(2): asking for a pin that does
    not exist gets ENOENT from the bpf syscall (a wrong number gives ENOSYS or worse)."""
    assert syscall.bpf_syscall_number() == syscall.BPF_SYSCALL_NUMBERS[platform.machine()]
    with pytest.raises(OSError) as info:
        syscall.obj_get("/sys/fs/bpf/ebpflb-no-such-pin")
    assert info.value.errno in (errno.ENOENT, errno.EPERM)  # EPERM: without privileges


@pytest.mark.parametrize(
    ("machine", "ok", "words"),
    [
        ("aarch64", True, "aarch64: bpf(2) is system call 280"),
        ("x86_64", True, "x86_64: bpf(2) is system call 321"),
        ("sparc64", False, "machine 'sparc64'"),
    ],
)
def test_doctor_names_the_number(
    monkeypatch: pytest.MonkeyPatch, machine: str, ok: bool, words: str
) -> None:
    """`ebpflb doctor` shows the number in use, and fails the bpf data path (a required
    check) on a machine whose number is not known."""
    from ebpflb import doctor

    monkeypatch.setattr(platform, "machine", lambda: machine)
    check = doctor.check_arch()
    assert (check.ok, check.required) == (ok, True)
    assert words in check.detail
