"""The XDP program on the node's uplinks (bpf/ebpflb_xdp.c): compiling it beside the
tc program (a bcc module of its own on the same pinned maps), attaching it with
pyroute2, choosing the mode per uplink, and telling it where it may redirect.

Modes (``--xdp``): ``auto`` (the default) attaches natively to uplinks that are
physical NICs (or bonds) whose driver supports it, and to nothing else: a virtual
device (veth, bridge, VXLAN, dummy) may deliver frames of local senders with a
partial checksum (CHECKSUM_PARTIAL), which XDP cannot see and the program's RFC 1624
port update then corrupts (choose_mode says why, per uplink, in the log). ``native``
attaches in the driver (XDP_FLAGS_DRV_MODE) and ``generic`` in the kernel's generic
hook (XDP_FLAGS_SKB_MODE) on every uplink: the user's word that the uplinks deliver
complete checksums. An uplink whose attach fails is left to the tc program (logged).
``off`` attaches nothing and removes what an earlier agent attached. The tc program
stays attached in every mode: it handles what XDP passes (ClusterIP, ICMP,
fragments, options, a next hop the FIB cannot give yet).

Where XDP may redirect a frame (the ``ebpflb_xdpdev`` map): in generic mode the uplinks,
the pod veths and their bridges, as a generic redirect is an ordinary transmit. In native mode only
the uplinks running the program natively (a driver sets up its XDP transmit queues
when a program is attached) that are not veths: a frame redirected natively into a
veth is dropped unless the veth's peer runs NAPI (an XDP program of its own, or GRO
turned on), and a pod's end lives in the pod's namespace, out of the agent's view;
so natively a frame for a local backend is translated in XDP and handed to the
stack, which routes it to the pod (one routing look-up, no tc work).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.cttable import table_seed
from ebpflb.dataplane.bpf.loader import (
    _captured_stderr,
    _cflags,
    bpf_dir,
    require_bpf_privileges,
    set_tail_call,
)
from ebpflb.dataplane.bpf.syscall import (
    BPF_OBJ_GET_INFO_BY_FD,
    PinnedMap,
    _bpf,
    _InfoAttr,
    prog_fd_by_id,
)
from ebpflb.errors import AttachError, BccMissingError, CompileError, EbpflbError

log = logging.getLogger(__name__)

PROGRAM_FILE = "ebpflb_xdp.c"
PROGRAM_NAME = "ebpflb_xdp"
IPV6_PROGRAM_NAME = "ebpflb_xdp6"  # the IPv6 path, reached by a tail call (as ebpflb_tc6)
TAIL_MAP = "ebpflb_xtail"

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
# IFLA_XDP_ATTACHED as pyroute2 decodes it (XDP_ATTACHED_* of uapi if_link.h)
ATTACHED_MODES = {None: 0, "xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4}


class XdpMode(enum.StrEnum):
    """``--xdp``: where the XDP program runs, if anywhere (``auto``: see choose_mode)."""

    AUTO = "auto"
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
        ct_seed=table_seed(pin_dir),  # the tc program's load made and stamped the tables
    )
    messages: list[str] = []
    module: Any = None
    try:
        with _captured_stderr(messages):
            module = bcc.BPF(src_file=str(source).encode(), cflags=cflags)
            fn = module.load_func(PROGRAM_NAME.encode(), bcc.BPF.XDP)
            fn6 = module.load_func(IPV6_PROGRAM_NAME.encode(), bcc.BPF.XDP)
            set_tail_call(module, TAIL_MAP, abi.TAIL_IPV6, fn6.fd)
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
        """Remove our program from every interface of the namespace; their names. A
        device whose upper device (a VXLAN set up on it, a bond) runs a program refuses
        any change (EEXIST) until the upper's is gone: hence passes, until one removes
        nothing more (the last failure is raised if any is left)."""
        names = [link.get_attr("IFLA_IFNAME") for link in self.ipr.get_links()]
        left = [name for name in names if self.is_ours(name)]
        done: list[str] = []
        while left:
            failed: list[str] = []
            error: Exception | None = None
            for name in left:
                try:
                    self.detach(name)
                except Exception as exc:  # netlink: EEXIST from an upper device
                    failed.append(name)
                    error = exc
                else:
                    done.append(name)
            if len(failed) == len(left):
                raise AttachError(f"cannot remove XDP from {', '.join(failed)}: {error}")
            left = failed
        return done


# Devices whose received frames may carry a partial checksum (CHECKSUM_PARTIAL: the
# sender on this machine left the L4 checksum to an offload that never happens). XDP
# sees only the bytes, and the program's RFC 1624 update of a port is then wrong for
# them; `auto` leaves them to tc, whose helpers know the skb's checksum state.
PARTIAL_CHECKSUM_KINDS = frozenset({"veth", "bridge", "vxlan", "geneve", "dummy", "macvlan", "tun"})
# Kinds whose driver may run XDP natively (a physical NIC has no kind; a bond runs it
# when its slaves' drivers do); `auto` tries these, the attach says whether it can.
NATIVE_CANDIDATE_KINDS = frozenset({None, "bond"})


def choose_mode(mode: XdpMode, kind: str | None) -> tuple[XdpMode, str]:
    """The mode to try on one uplink of this kind, and why. ``native`` and ``generic``
    are the user's word (the uplink delivers complete checksums); ``auto`` tries native
    on a physical NIC or bond only (a failed attach then leaves it to tc)."""
    if mode is not XdpMode.AUTO:
        return mode, f"--xdp {mode.value}"
    shown = kind or "physical"
    if kind in NATIVE_CANDIDATE_KINDS:
        return XdpMode.NATIVE, f"{shown} device: native XDP where its driver supports it"
    if kind in PARTIAL_CHECKSUM_KINDS:
        return XdpMode.OFF, (
            f"a {shown} device may deliver partial checksums from local senders, which "
            "XDP cannot fix up; --xdp native or generic forces it"
        )
    return XdpMode.OFF, f"a {shown} device has no native XDP; --xdp generic forces it"


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


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


@dataclass(frozen=True)
class XdpLink:
    """One interface as the XDP side sees it."""

    index: int
    kind: str | None  # IFLA_INFO_KIND; None: a physical device


def scan_links(ipr: Any) -> tuple[dict[str, XdpLink], set[str]]:
    """Every interface of the namespace, and the veths among them that XDP serves as
    uplinks beside the tc uplinks: those holding a routable IPv4 address (not in
    169.254/16, the routed pods' gateway), a container node's own eth0 (kind's nodes,
    this lab's nodes), where traffic from outside arrives as on a NIC."""
    links = {
        link.get_attr("IFLA_IFNAME"): XdpLink(int(link["index"]), _kind(link))
        for link in ipr.get_links()
    }
    by_index = {link.index: name for name, link in links.items()}
    routable = {
        by_index.get(int(a["index"]))
        for a in ipr.get_addr(family=socket.AF_INET)
        if not ip_address(a.get_attr("IFA_ADDRESS")).is_link_local
    }
    veth_uplinks = {n for n in routable if n is not None and links[n].kind == "veth"}
    return links, veth_uplinks


class XdpUplinks:
    """The XDP side of the agent's housekeeping: on each uplink that appears, the mode
    chosen (choose_mode) and attached, said once in the log; the program compiled on
    first need; ebpflb_xdpdev kept to the redirect targets. A failure to compile or to
    attach leaves the uplink to tc and never stops the agent."""

    def __init__(
        self,
        ipr: Any,
        mode: XdpMode,
        *,
        pin_dir: str,
        sizes: tuple[int, int, int],
        compile_program: Callable[..., LoadedXdp] = compile_xdp,
    ) -> None:
        self.ipr = ipr
        self.mode = mode
        self.pin_dir = pin_dir
        self.sizes = sizes
        self.compile_program = compile_program
        self.program: LoadedXdp | None = None
        self.compile_error: str | None = None
        self.modes: dict[str, XdpMode] = {}  # uplink -> what runs there (OFF: tc only)
        self.targets: set[int] | None = None  # what ebpflb_xdpdev holds, once written
        if mode is XdpMode.OFF:
            try:
                removed = XdpAttacher(ipr, -1, mode).detach_all()
            except AttachError as exc:
                log.warning("--xdp off: %s", exc)
            else:
                if removed:
                    log.info("--xdp off: removed the XDP program from %s", ", ".join(removed))

    def _program(self) -> LoadedXdp:
        if self.program is None:
            if self.compile_error is not None:
                raise CompileError(self.compile_error)
            services, backends, conntrack = self.sizes
            try:
                self.program = self.compile_program(
                    pin_dir=self.pin_dir,
                    max_services=services,
                    max_backends=backends,
                    max_conntrack=conntrack,
                )
            except EbpflbError as exc:
                self.compile_error = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise
        return self.program

    def _attach(self, ifname: str, kind: str | None) -> XdpMode:
        mode, why = choose_mode(self.mode, kind)
        if mode is XdpMode.OFF:
            XdpAttacher(self.ipr, -1, mode).detach(ifname)  # an earlier agent's
            log.info("XDP on %s: none, tc only (%s)", ifname, why)
            return mode
        try:
            XdpAttacher(self.ipr, self._program().fd, mode).attach(ifname)
        except Exception as exc:  # bcc, the driver, netlink: none may stop the agent
            with contextlib.suppress(Exception):
                XdpAttacher(self.ipr, -1, mode).detach(ifname)
            log.warning("XDP on %s: not attached, tc only (%s): %s", ifname, why, exc)
            return XdpMode.OFF
        log.info("XDP on %s: %s (%s)", ifname, mode.value, why)
        return mode

    def refresh(
        self, *, wanted: Iterable[str], uplinks: Iterable[str], veths: Iterable[str]
    ) -> None:
        """Attach to the uplinks that appeared among the interfaces the agent serves
        (``wanted``; ``uplinks``: the tc uplinks, see scan_links for the others), forget
        those gone, and rewrite ebpflb_xdpdev when its set changed (``veths``: the pod
        veths the program serves, and their bridges)."""
        if self.mode is XdpMode.OFF:
            return
        links, veth_uplinks = scan_links(self.ipr)
        serving = (set(uplinks) | veth_uplinks) & set(wanted)
        for gone in set(self.modes) - serving:
            del self.modes[gone]
        for ifname in sorted(serving - set(self.modes)):
            self.modes[ifname] = self._attach(ifname, links[ifname].kind)
        running = {n: m for n, m in self.modes.items() if m is not XdpMode.OFF}
        generic = XdpMode.GENERIC in running.values()
        names = redirect_targets(
            XdpMode.GENERIC if generic else XdpMode.NATIVE,
            uplinks=running,
            veths=veths,
            kinds={n: link.kind for n, link in links.items()},
        )
        targets = {links[n].index for n in names if n in links}
        if targets != self.targets:
            write_targets(self.pin_dir, targets)
            self.targets = targets

    def close(self, *, cleanup: bool = False) -> None:
        """Close the program's fds (an attached program stays, serving, as the tc
        filters do); with ``cleanup`` remove it from every interface first."""
        if cleanup:
            try:
                removed = XdpAttacher(self.ipr, -1, self.mode).detach_all()
            except AttachError as exc:
                log.warning("%s", exc)
            else:
                if removed:
                    log.info("removed the XDP program from %s", ", ".join(removed))
        if self.program is not None:
            self.program.close()
            self.program = None
