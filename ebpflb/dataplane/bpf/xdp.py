"""The XDP program on the node's uplinks (bpf/ebpflb_xdp.c): compiling it beside the
tc program (a bcc module of its own on the same pinned maps), attaching it with
pyroute2, and telling it where it may redirect.

Modes (``--xdp``): ``native`` attaches in the driver (XDP_FLAGS_DRV_MODE) where the
driver supports it and leaves an uplink whose driver does not to the tc program (the
attach fails cleanly, it is logged); ``generic`` attaches in the kernel's generic hook
(XDP_FLAGS_SKB_MODE) on every uplink; ``off`` attaches nothing and removes what an
earlier agent attached. The tc program stays attached in every mode: it handles what
XDP passes (ClusterIP, ICMP, fragments, options, a next hop the FIB cannot give yet).

Where XDP may redirect a frame (the ``ebpflb_xdpdev`` map): in generic mode the uplinks
and the pod veths, as a generic redirect is an ordinary transmit. In native mode only
uplinks that are not veths: a frame redirected natively into a veth is dropped unless
the veth's peer runs NAPI (an XDP program of its own, or GRO turned on), and a pod's
end lives in the pod's namespace, out of the agent's view; so natively a frame for a
local backend is translated in XDP and handed to the stack, which routes it to the pod
(one routing look-up, no tc work).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
from collections.abc import Iterable
from typing import Any

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import _captured_stderr, _cflags, bpf_dir, require_bpf_privileges
from ebpflb.dataplane.bpf.syscall import (
    BPF_OBJ_GET_INFO_BY_FD,
    PinnedMap,
    _bpf,
    _InfoAttr,
    prog_fd_by_id,
)
from ebpflb.errors import AttachError, BccMissingError, CompileError

log = logging.getLogger(__name__)

PROGRAM_FILE = "ebpflb_xdp.c"
PROGRAM_NAME = "ebpflb_xdp"

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
# IFLA_XDP_ATTACHED as pyroute2 decodes it (XDP_ATTACHED_* of uapi if_link.h)
ATTACHED_MODES = {None: 0, "xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4}


class XdpMode(enum.StrEnum):
    """``--xdp``: where the XDP program runs, if anywhere."""

    NATIVE = "native"
    GENERIC = "generic"
    OFF = "off"

    @property
    def flags(self) -> int:
        return XDP_FLAGS_DRV_MODE if self is XdpMode.NATIVE else XDP_FLAGS_SKB_MODE


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to its name (uapi bpf.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


def prog_name(prog_id: int) -> str:
    """The name of loaded program ``prog_id`` ('' when it is gone)."""
    try:
        fd = prog_fd_by_id(prog_id)
    except OSError:
        return ""
    try:
        info = _ProgInfo()
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        return bytes(info.name).decode(errors="replace")
    finally:
        os.close(fd)


class LoadedXdp:
    """The loaded XDP program; keeps its bcc module (program and map fds) alive."""

    def __init__(self, bpf: Any, fd: int) -> None:
        self.bpf = bpf
        self.fd = fd

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self.fd = -1


def compile_xdp(
    *, pin_dir: str, max_services: int, max_backends: int, max_conntrack: int
) -> LoadedXdp:
    """Compile bpf/ebpflb_xdp.c with the tc program's flags, so that it opens the same
    pinned maps (same names, same sizes), and load ebpflb_xdp as an XDP program."""
    try:
        import bcc
    except ImportError as exc:
        raise BccMissingError(f"bcc is not importable ({exc})") from exc
    require_bpf_privileges()
    source = bpf_dir() / PROGRAM_FILE
    cflags = _cflags(
        bpf_dir(),
        pin_dir=pin_dir,
        max_services=max_services,
        max_backends=max_backends,
        max_conntrack=max_conntrack,
    )
    messages: list[str] = []
    module: Any = None
    try:
        with _captured_stderr(messages):
            module = bcc.BPF(src_file=str(source).encode(), cflags=cflags)
            fn = module.load_func(PROGRAM_NAME.encode(), bcc.BPF.XDP)
    except Exception as exc:  # bcc raises bare Exception for compile and verifier errors
        if module is not None:
            module.cleanup()
        detail = "\n".join(m.strip() for m in messages if m.strip())
        raise CompileError(
            f"cannot load {source}: {exc}" + (f"\n{detail}" if detail else "")
        ) from exc
    log.info("loaded %s (fd %d), maps under %s", PROGRAM_NAME, fn.fd, pin_dir)
    return LoadedXdp(module, int(fn.fd))


class XdpAttacher:
    """Attaches the XDP program to interfaces of one namespace (an IPRoute or NetNS
    handle, the tc attacher's), finds and removes it by its program name."""

    def __init__(self, ipr: Any, prog_fd: int, mode: XdpMode) -> None:
        self.ipr = ipr
        self.prog_fd = prog_fd
        self.mode = mode

    def _index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(f"interface {ifname} does not exist")
        return int(found[0])

    def _set(self, idx: int, fd: int, flags: int) -> None:
        self.ipr.link(
            "set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]}
        )

    def attached_id(self, ifname: str) -> int:
        """The id of the XDP program on ifname, 0 when none."""
        xdp = self.ipr.get_links(self._index(ifname))[0].get_attr("IFLA_XDP")
        if xdp is None or not self.attached_mode(ifname):
            return 0
        return int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0)

    def attached_mode(self, ifname: str) -> int:
        """IFLA_XDP_ATTACHED of ifname: 0 none, 1 native, 2 generic (XDP_ATTACHED_*)."""
        xdp = self.ipr.get_links(self._index(ifname))[0].get_attr("IFLA_XDP")
        return ATTACHED_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED"), 0) if xdp is not None else 0

    def is_ours(self, ifname: str) -> bool:
        prog_id = self.attached_id(ifname)
        return bool(prog_id) and prog_name(prog_id) == PROGRAM_NAME

    def attach(self, ifname: str) -> None:
        """The program on ifname in the attacher's mode, replacing an earlier agent's
        (never another tool's: AttachError then)."""
        idx = self._index(ifname)
        if self.attached_id(ifname) and not self.is_ours(ifname):
            raise AttachError(f"{ifname} already runs another XDP program; left to tc")
        try:
            self._set(idx, self.prog_fd, self.mode.flags)
        except Exception as exc:
            if getattr(exc, "code", None) == errno.EEXIST:
                # attached in the other mode by an earlier agent: replace it
                self.detach(ifname)
                self._set(idx, self.prog_fd, self.mode.flags)
            else:
                raise AttachError(
                    f"cannot attach XDP ({self.mode.value}) to {ifname}: {exc}"
                ) from exc
        if not self.is_ours(ifname):
            raise AttachError(f"XDP program on {ifname} not found after attaching")

    def detach(self, ifname: str) -> None:
        """Remove our program from ifname (in whichever mode it runs); another tool's
        stays."""
        try:
            idx = self._index(ifname)
            if not self.is_ours(ifname):
                return
            flags = XDP_FLAGS_SKB_MODE if self.attached_mode(ifname) == 2 else XDP_FLAGS_DRV_MODE
            self._set(idx, -1, flags)
        except AttachError:
            return

    def detach_all(self) -> list[str]:
        """Remove our program from every interface of the namespace; their names."""
        names = [link.get_attr("IFLA_IFNAME") for link in self.ipr.get_links()]
        done = []
        for name in names:
            if self.is_ours(name):
                self.detach(name)
                done.append(name)
        return done


def redirect_targets(
    mode: XdpMode, *, uplinks: Iterable[str], veths: Iterable[str], kinds: dict[str, str | None]
) -> set[str]:
    """The interfaces ebpflb_xdpdev lists (see the module docstring for why)."""
    if mode is XdpMode.OFF:
        return set()
    if mode is XdpMode.GENERIC:
        return set(uplinks) | set(veths)
    return {name for name in uplinks if kinds.get(name) != "veth"}


def write_targets(pin_dir: str, ifindexes: Iterable[int]) -> None:
    """Make ebpflb_xdpdev hold exactly ``ifindexes``."""
    wanted = set(ifindexes)
    with PinnedMap(os.path.join(pin_dir, abi.MAP_XDP_DEVS)) as m:
        present = {int(k.value) for k in m.keys(ctypes.c_uint32)}
        for index in sorted(wanted - present):
            m.update(ctypes.c_uint32(index), ctypes.c_uint32(1))
        for index in sorted(present - wanted):
            m.delete(ctypes.c_uint32(index))
