"""The C library, loaded once with ``use_errno``: the few calls Python's ``os`` lacks
(setns, mount, umount2, a raw syscall for bpf(2), which glibc does not wrap) and
glibc's malloc_trim.

Each call raises ``OSError`` with the C ``errno`` when it fails, as ``os`` does; the
callers translate that into their own errors. Nothing here imports from ebpflb, so any
layer may use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNET = 0x40000000  # setns(2) nstype: a network namespace
MNT_DETACH = 2  # umount2(2) flag: lazy unmount

# find_library may find nothing (a static or unusual libc): CDLL(None) is then the
# process's own symbols, which include the C library Python itself runs on.
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
# syscall(long number, ...): declared so every argument is passed full width (without
# argtypes ctypes passes a C int, whose upper register half is not defined on arm64).
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at ``fd`` (setns(2))."""
    if _libc.setns(fd, nstype) != 0:
        raise _error()


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    """mount(2) with no data: ``mount -t FSTYPE SOURCE TARGET``."""
    if _libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags, None) != 0:
        raise _error()


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2); ``MNT_DETACH`` for a lazy unmount."""
    if _libc.umount2(os.fsencode(target), flags) != 0:
        raise _error()


def syscall(number: int, arg: int, ptr: ctypes._CData, size: int) -> int:
    """syscall(2) with three arguments, the second a pointer to ``ptr`` (how bpf(2)
    is called: command, attribute struct, its size); the call's non-negative result."""
    ret = int(_libc.syscall(number, arg, ctypes.byref(ptr), size))
    if ret < 0:
        raise _error()
    return ret


def malloc_trim() -> bool:
    """Hand freed heap memory back to the kernel (glibc's malloc_trim(0)); False
    where the C library has no such call."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
