"""What can run on this machine: each requirement of the bpf data path checked, with
the fix when it is missing, whether the userspace fallback can run, and the data path
`--dataplane auto` would choose."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.dataplane.bpf.bpffs import BPFFS_ROOT, bpffs_mounts
from ebpflb.errors import EbpflbError
from ebpflb.statefile import DEFAULT_STATE_DIR

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39
USERSPACE_CHECK = "userspace"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # False: a warning, bpf still runs
    extra: Mapping[str, object] = field(default_factory=dict)  # more JSON keys of this check

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "required": self.required,
            "detail": self.detail,
            "fix": self.fix,
            **self.extra,
        }


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def bpf_ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    @property
    def userspace_ok(self) -> bool:
        return any(c.name == USERSPACE_CHECK and c.ok for c in self.checks)

    @property
    def dataplane(self) -> str:
        """What `--dataplane auto` would run: bpf, userspace, or none."""
        if self.bpf_ok:
            return "bpf"
        return "userspace" if self.userspace_ok else "none"

    @property
    def runnable(self) -> bool:
        return self.dataplane != "none"

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if c.required and not c.ok]
        if not failed:
            return "every requirement of the bpf data path is met"
        why = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        if self.userspace_ok:
            return f"the bpf data path cannot run ({why}); the userspace proxy can"
        return f"the bpf data path cannot run ({why}); nor can the userspace proxy"

    def as_json(self) -> dict[str, object]:
        return {
            "dataplane": self.dataplane,
            "reason": self.reason,
            "checks": [c.as_json() for c in self.checks],
        }


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    caps = _effective_caps()
    has_admin = bool(caps & (1 << CAP_SYS_ADMIN))
    has_bpf = bool(caps & (1 << CAP_BPF)) or has_admin
    has_net = bool(caps & (1 << CAP_NET_ADMIN))
    ok = has_bpf and has_net
    return Check(
        "privileges",
        ok,
        f"uid {os.geteuid()}, CAP_BPF={has_bpf}, CAP_NET_ADMIN={has_net}",
        "" if ok else "run as root (or with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)",
    )


def check_kernel() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel", False, f"cannot parse release {release}")
    ok = (major, minor) >= (5, 10)
    return Check(
        "kernel",
        ok,
        f"Linux {release}",
        "" if ok else "needs Linux 5.10 or newer (batch map ops, BTF)",
    )


def check_arch() -> Check:
    """The bpf(2) system call number for this machine (dataplane.bpf.syscall): maps are
    read and written through it, bypassing bcc."""
    from ebpflb.dataplane.bpf.syscall import bpf_syscall_number

    try:
        number = bpf_syscall_number()
    except EbpflbError as exc:
        return Check(
            "arch",
            False,
            str(exc),
            "add this machine's __NR_bpf (from the "
            "kernel's syscall table) to syscall.BPF_SYSCALL_NUMBERS",
        )
    return Check("arch", True, f"{platform.machine()}: bpf(2) is system call {number}")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except Exception as exc:
        return Check(
            "bcc",
            False,
            f"not importable: {exc}",
            "apt-get install python3-bpfcc, and run ebpflb from a venv made from "
            "/usr/bin/python3 with --system-site-packages (make setup does both)",
        )
    return Check("bcc", True, "python3-bpfcc importable")


def check_headers() -> Check:
    build = f"/lib/modules/{platform.release()}/build"
    ok = os.path.isdir(os.path.join(build, "include"))
    return Check(
        "kernel headers",
        ok,
        f"{build} {'present' if ok else 'missing'}",
        ""
        if ok
        else "install Debian's linux-headers-<flavour> of this "
        "architecture and link it there (make setup does both)",
    )


def check_bpffs() -> Check:
    mounted = BPFFS_ROOT in bpffs_mounts()
    return Check(
        "bpffs",
        True,
        f"{BPFFS_ROOT} {'mounted' if mounted else 'not mounted; the agent mounts it'}",
        required=False,
    )


def check_compile() -> Check:
    """Compile and load ebpflb's own programs from the C sources the agent would use
    (loader.bpf_dir(): the installed package's copy, or the checkout's): proves the
    sources are there and the compiler, headers and verifier accept them."""
    from ebpflb.dataplane.bpf.loader import BPF_DIR_ENV, bpf_dir, compile_check

    try:
        source_dir = compile_check()
    except Exception as exc:
        first = str(exc).strip().splitlines()[:1]
        return Check(
            "compile",
            False,
            f"bcc could not compile/load the programs in "
            f"{bpf_dir()}: {first[0] if first else type(exc).__name__}",
            f"see the checks above (headers, privileges); ${BPF_DIR_ENV} names "
            "another source directory",
        )
    return Check("compile", True, f"the programs in {source_dir} compile and load")


def check_rp_filter() -> Check:
    try:
        with open("/proc/sys/net/ipv4/conf/all/rp_filter") as f:
            value = f.read().strip()
    except OSError:
        return Check("rp_filter", True, "unknown", required=False)
    ok = value != "1"
    return Check(
        "rp_filter",
        ok,
        f"net.ipv4.conf.all.rp_filter={value}",
        ""
        if ok
        else "strict reverse-path filtering drops replies rewritten to a "
        "Service address; the agent sets rp_filter=0 on the interfaces it attaches "
        "to, but the kernel applies the larger of that and all.rp_filter: set "
        "net.ipv4.conf.all.rp_filter=0 or 2",
        required=False,
    )


def check_forwarding(proc: str = "/proc/sys/net") -> Check:
    """Both families forward: a packet the data path rewrote to a backend is routed by
    the node, so a node with IPv6 Services and net.ipv6.conf.all.forwarding=0 drops
    every one of them (kubelet sets IPv4's; a dual-stack CNI sets IPv6's)."""
    values: dict[str, str] = {}
    for family, path in (("ipv4", "ipv4/ip_forward"), ("ipv6", "ipv6/conf/all/forwarding")):
        try:
            with open(f"{proc}/{path}") as f:
                values[family] = f.read().strip()
        except OSError:
            values[family] = "absent"  # IPv6 disabled in the kernel: nothing to forward
    off = [f for f, v in values.items() if v == "0"]
    detail = f"net.ipv4.ip_forward={values['ipv4']}, net.ipv6.conf.all.forwarding={values['ipv6']}"
    fix = ""
    if off:
        fix = (
            "packets rewritten to a backend are routed by the node: set "
            + " and ".join(
                "net.ipv4.ip_forward=1" if f == "ipv4" else "net.ipv6.conf.all.forwarding=1"
                for f in off
            )
            + " (the IPv6 one only matters with IPv6 Services)"
        )
    return Check("forwarding", not off, detail, fix, required=False)


def pinned_socket_lb_links(pin_dir: str) -> list[str]:
    """The socket-LB links pinned under pin_dir (see dataplane.bpf.socklb): hooks that
    serve the node's own sockets whether or not an agent runs."""
    from ebpflb.dataplane.bpf.socklb import LINK_PINS

    return [p for p in LINK_PINS.values() if os.path.exists(os.path.join(pin_dir, p))]


def check_socket_lb(state_dir: str = DEFAULT_STATE_DIR, pin_dir: str = DEFAULT_PIN_DIR) -> Check:
    """Socket-LB (the node's own sockets) links to the cgroup v2 root: the one visible
    here, or one the agent mounts under its state directory (see
    dataplane.bpf.cgroup). Without it the bpf data path runs anyway, with those sockets
    untranslated. JSON keys "cgroup2": {"path", "mount", "visible"}, and
    "pinned_links": the links pinned under pin_dir, which stay attached while no agent
    runs (until the agent's clean-up)."""
    from ebpflb.dataplane.bpf.cgroup import choose_cgroup2

    try:
        choice = choose_cgroup2(state_dir)
    except OSError as exc:
        return Check("socket_lb", False, f"cannot read the mounts: {exc}", required=False)
    links = pinned_socket_lb_links(pin_dir)
    extra: dict[str, object] = {"cgroup2": choice.as_json(), "pinned_links": links}
    pinned = (
        f"; {len(links)} socket-LB links are pinned under {pin_dir} and attached, agent or not"
        if links
        else ""
    )
    if choice.mount and not _effective_caps() & (1 << CAP_SYS_ADMIN):
        return Check(
            "socket_lb",
            False,
            f"{choice.describe()}, which needs CAP_SYS_ADMIN{pinned}",
            f"run as root, or mount cgroup2 first (mount -t cgroup2 none "
            f"{choice.path}) so the node's own sockets reach Services",
            required=False,
            extra=extra,
        )
    return Check(
        "socket_lb",
        True,
        f"{choice.describe()}: the node's own sockets are translated at connect(){pinned}",
        required=False,
        extra=extra,
    )


def check_userspace(*, nft: str | None = None) -> Check:
    """The userspace proxy needs CAP_NET_ADMIN (its device and the frontend addresses),
    pyroute2, and nft (the filter that keeps Service addresses to their Service ports).
    Not required for bpf: a warning when it fails."""
    has_net = bool(_effective_caps() & (1 << CAP_NET_ADMIN))
    nft = nft if nft is not None else (shutil.which("nft") or "")
    try:
        import pyroute2  # noqa: F401
    except Exception as exc:
        return Check(
            USERSPACE_CHECK,
            False,
            f"pyroute2 not importable: {exc}",
            "pip install pyroute2 (make setup does it)",
            required=False,
        )
    if not nft:
        return Check(
            USERSPACE_CHECK,
            False,
            "nft not found: the fallback proxy filters its "
            "Service addresses to their Service ports with nftables",
            "apt-get install nftables (make setup does it)",
            required=False,
        )
    if not has_net:
        return Check(
            USERSPACE_CHECK,
            False,
            "the fallback proxy needs CAP_NET_ADMIN for "
            "its device ebpflb0 and the frontend addresses",
            "run as root (or with CAP_NET_ADMIN)",
            required=False,
        )
    return Check(
        USERSPACE_CHECK,
        True,
        "the fallback proxy can run (CAP_NET_ADMIN, pyroute2, nft)",
        required=False,
    )


def run_checks(*, state_dir: str = DEFAULT_STATE_DIR, pin_dir: str = DEFAULT_PIN_DIR) -> Report:
    """Every check; ``state_dir`` is the agent's --state-dir (where it would mount what
    it finds missing), ``pin_dir`` its --pin-dir (where its socket-LB links may be
    pinned)."""
    checks = [
        check_privileges(),
        check_kernel(),
        check_arch(),
        check_bcc(),
        check_headers(),
        check_bpffs(),
        check_rp_filter(),
        check_forwarding(),
        check_socket_lb(state_dir, pin_dir),
    ]
    if all(c.ok for c in checks if c.required):
        checks.append(check_compile())
    checks.append(check_userspace())
    return Report(tuple(checks))
