"""Compiling and loading the tc program (bpf/ebpflb_tc.c) with bcc.

Owns the one call into bcc's compiler. Tunables reach the C code as ``-D`` flags, never
by editing the source text. bcc prints compiler and verifier messages on the process's
stderr (from C++), so the loader captures file descriptor 2 while it compiles and puts
that text into the ``BpfUnavailableError`` it raises. The maps are pinned under
``pin_dir`` by bcc itself on first load and reused by later loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import BPFFS_ROOT, bpffs_mounts
from ebpflb.dataplane.bpf.cttable import (
    check_tables_fit,
    ct_buckets,
    ct_multipliers,
    memory_total,
    stamp_seed,
    table_seed,
)
from ebpflb.errors import (
    BccMissingError,
    BpffsError,
    BpfUnavailableError,
    CompileError,
    DataplaneError,
    PrivilegeError,
)

log = logging.getLogger(__name__)

PROGRAM_FILE = "ebpflb_tc.c"
PROGRAM_NAME = "ebpflb_tc"
# The IPv6 ingress path, a program of its own reached by a tail call (ebpflb_tc.c says
# why) through the pinned program array ebpflb_tail (maps.h says why it is pinned).
IPV6_PROGRAM_NAME = "ebpflb_tc6"
TAIL_MAP = "ebpflb_tail"
EGRESS_PROGRAM_NAME = "ebpflb_tc_egress"
# Socket-LB programs (cgroup sock_addr hooks) -> their attach types (uapi bpf.h).
SOCK_PROGRAMS = {
    "ebpflb_sock_connect4": 10,  # BPF_CGROUP_INET4_CONNECT
    "ebpflb_sock_sendmsg4": 14,  # BPF_CGROUP_UDP4_SENDMSG
    "ebpflb_sock_recvmsg4": 19,  # BPF_CGROUP_UDP4_RECVMSG
    "ebpflb_sock_getpeername4": 29,  # BPF_CGROUP_INET4_GETPEERNAME
    "ebpflb_sock_connect6": 11,  # BPF_CGROUP_INET6_CONNECT
    "ebpflb_sock_sendmsg6": 15,  # BPF_CGROUP_UDP6_SENDMSG
    "ebpflb_sock_recvmsg6": 20,  # BPF_CGROUP_UDP6_RECVMSG
    "ebpflb_sock_getpeername6": 30,  # BPF_CGROUP_INET6_GETPEERNAME
}
BPF_DIR_ENV = "EBPFLB_BPF_DIR"


PACKAGED_BPF_DIR = "_bpf"  # ebpflb/_bpf in a built package: setup.py copies bpf/ there


def bpf_dir() -> Path:
    """The directory of the C sources: $EBPFLB_BPF_DIR; else the copy shipped in the
    installed package (``ebpflb/_bpf``, put there by setup.py when a wheel is built);
    else ``bpf/`` of the source tree (a checkout, or an editable install of one)."""
    env = os.environ.get(BPF_DIR_ENV)
    if env:
        return Path(env)
    packaged = importlib.resources.files("ebpflb") / PACKAGED_BPF_DIR
    if isinstance(packaged, Path) and (packaged / PROGRAM_FILE).is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "bpf"


class LoadedProgram:
    """The loaded tc program; keeps bcc's module (and so the program and maps) alive."""

    def __init__(
        self,
        *,
        bpf: Any,
        fd: int,
        name: str,
        pin_dir: str,
        egress_fd: int = -1,
        sock_fds: dict[str, int] | None = None,
    ) -> None:
        self.bpf = bpf
        self.fd = fd
        self.egress_fd = egress_fd
        self.sock_fds = sock_fds or {}  # SOCK_PROGRAMS name -> fd
        self.name = name
        self.pin_dir = pin_dir

    def close(self) -> None:
        """Release the program and map file descriptors; pinned maps stay."""
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self.fd = -1
            self.egress_fd = -1

    def __enter__(self) -> LoadedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _captured_stderr(sink: list[str]) -> Iterator[None]:
    """Redirect fd 2 into a temporary file; its text is appended to ``sink``."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


CAP_SYS_ADMIN = 21
CAP_BPF = 39  # Linux >= 5.8; loading tc programs with it also takes CAP_PERFMON (38)


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_bpf_privileges(*, caps: int | None = None, uid: int | None = None) -> None:
    """Raise BpfUnavailableError naming the missing privilege when this process may not
    load BPF programs, before anything is compiled or created (without the check bcc
    fails its first map with EPERM and says "Failed to compile BPF module")."""
    caps = _effective_caps() if caps is None else caps
    uid = os.geteuid() if uid is None else uid
    if caps & ((1 << CAP_BPF) | (1 << CAP_SYS_ADMIN)):
        return
    raise PrivilegeError(
        f"operation not permitted: loading BPF programs needs root, CAP_BPF (with "
        f"CAP_PERFMON) or CAP_SYS_ADMIN, and this process (uid {uid}) has none of them "
        f"(CapEff {caps:016x}); run the agent as root or grant CAP_BPF, CAP_PERFMON and "
        f"CAP_NET_ADMIN"
    )


SET_RETVAL_KERNEL = (5, 18)  # bpf_set_retval() in cgroup hooks


def kernel_feature_flags(release: str | None = None) -> list[str]:
    """The ``-D`` flags of the optional helpers the running kernel (or ``release``)
    has: HAVE_SET_RETVAL from Linux 5.18, so a socket-LB hook can refuse with
    ECONNREFUSED instead of its plain EPERM. An unparsable release gets none."""
    release = platform.release() if release is None else release
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return []
    return ["-DHAVE_SET_RETVAL"] if version >= SET_RETVAL_KERNEL else []


def _cflags(
    source_dir: Path,
    *,
    pin_dir: str,
    max_services: int,
    max_backends: int,
    max_conntrack: int,
    ct_seed: int,
) -> list[str]:
    if any(c in pin_dir for c in '"\\\n') or not os.path.isabs(pin_dir):
        raise DataplaneError(f"pin dir must be an absolute path without quotes: {pin_dir!r}")
    for name, value in (
        ("max_services", max_services),
        ("max_backends", max_backends),
        ("max_conntrack", max_conntrack),
    ):
        if not 1 <= value <= 1 << 26:
            raise DataplaneError(f"{name} out of range: {value}")
    check_tables_fit(max_conntrack, memory_total())
    return [
        f"-I{source_dir}",
        f'-DPIN_DIR="{pin_dir.rstrip("/")}"',
        f"-DMAX_SERVICES={max_services}",
        f"-DMAX_BACKENDS={max_backends}",
        f"-DMAX_CONNTRACK={max_conntrack}",
        f"-DCT_BUCKETS={ct_buckets(max_conntrack)}",
        *(f"-DCT_M{i}={m:#x}ULL" for i, m in enumerate(ct_multipliers(ct_seed))),
        *kernel_feature_flags(),
        "-Wall",
        "-Werror",
    ]


def compile_program(
    *, pin_dir: str, max_services: int, max_backends: int, max_conntrack: int
) -> LoadedProgram:
    """Compile bpf/ebpflb_tc.c, create or reuse its maps pinned under ``pin_dir`` (which
    must be on a bpffs), and load the entry program as a tc classifier."""
    try:
        import bcc  # optional: imported only where it is needed
    except ImportError as exc:
        raise BccMissingError(
            f"bcc is not importable: install python3-bpfcc and run with Debian's python3 "
            f"(or a venv made with --system-site-packages) ({exc})"
        ) from exc

    require_bpf_privileges()
    source_dir = bpf_dir()
    source = source_dir / PROGRAM_FILE
    if not source.is_file():
        raise BpfUnavailableError(
            f"BPF source not found: {source}",
            fix=f"reinstall ebpflb (its C sources ship as ebpflb/_bpf) or set ${BPF_DIR_ENV}",
        )
    seed = table_seed(pin_dir)  # the pinned tables', or a new one stamped after the load
    cflags = _cflags(
        source_dir,
        pin_dir=pin_dir,
        max_services=max_services,
        max_backends=max_backends,
        max_conntrack=max_conntrack,
        ct_seed=seed,
    )
    try:
        os.makedirs(pin_dir, mode=0o700, exist_ok=True)  # see bpffs: only root writes
    except OSError as exc:
        raise DataplaneError(f"cannot create pin dir {pin_dir}: {exc.strerror}") from exc

    messages: list[str] = []
    module: Any = None
    try:
        with _captured_stderr(messages):
            module = bcc.BPF(src_file=str(source).encode(), cflags=cflags)
            fn = module.load_func(PROGRAM_NAME.encode(), bcc.BPF.SCHED_CLS)
            fn6 = module.load_func(IPV6_PROGRAM_NAME.encode(), bcc.BPF.SCHED_CLS)
            set_tail_call(module, TAIL_MAP, abi.TAIL_IPV6, fn6.fd)
            egress = module.load_func(EGRESS_PROGRAM_NAME.encode(), bcc.BPF.SCHED_CLS)
            socks = {
                name: module.load_func(
                    name.encode(), bcc.BPF.CGROUP_SOCK_ADDR, attach_type=attach_type
                )
                for name, attach_type in SOCK_PROGRAMS.items()
            }
    except Exception as exc:  # bcc raises bare Exception for compile and verifier errors
        if module is not None:
            module.cleanup()
        detail = "\n".join(m.strip() for m in messages if m.strip())
        raise CompileError(
            f"cannot load {source}: {exc}" + (f"\n{detail}" if detail else "")
        ) from exc
    for text in messages:
        if text.strip():
            log.debug("bcc: %s", text.strip())
    try:
        stamp_seed(pin_dir, seed)
    except (OSError, DataplaneError) as exc:
        module.cleanup()
        raise CompileError(
            f"cannot write the conntrack tables' seed under {pin_dir}: {exc}"
        ) from exc
    log.info(
        "loaded %s (fd %d) and %s (fd %d), maps pinned under %s",
        PROGRAM_NAME,
        fn.fd,
        EGRESS_PROGRAM_NAME,
        egress.fd,
        pin_dir,
    )
    return LoadedProgram(
        bpf=module,
        fd=int(fn.fd),
        name=PROGRAM_NAME,
        pin_dir=pin_dir,
        egress_fd=int(egress.fd),
        sock_fds={name: int(f.fd) for name, f in socks.items()},
    )


def set_tail_call(module: Any, table: str, index: int, fd: int) -> None:
    """Put the program ``fd`` at ``index`` of the module's program array ``table``."""
    module[table.encode()][ctypes.c_int(index)] = ctypes.c_int(fd)


def compile_check() -> Path:
    """Compile and load the programs from bpf_dir() as the agent would, with small maps
    pinned in a scratch directory removed afterwards (nothing is attached, nothing
    stays): a private bpffs, or, where mounting needs a CAP_SYS_ADMIN the process lacks,
    a directory under the mounted /sys/fs/bpf. Returns the source directory; raises
    ``BpfUnavailableError`` with the compiler's or verifier's words."""
    source_dir = bpf_dir()
    with _scratch_bpffs() as pin_dir:
        compile_program(pin_dir=pin_dir, max_services=16, max_backends=64, max_conntrack=64).close()
    return source_dir


@contextlib.contextmanager
def _scratch_bpffs() -> Iterator[str]:
    mount = tempfile.mkdtemp(prefix="ebpflb-compile-check-")
    try:
        proc = subprocess.run(
            ["mount", "-t", "bpf", "bpf", mount], check=False, capture_output=True, text=True
        )
        if proc.returncode == 0:
            try:
                yield mount
            finally:
                subprocess.run(["umount", mount], check=False, capture_output=True)
            return
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mount)
    if BPFFS_ROOT not in bpffs_mounts():
        raise BpffsError(
            f"cannot mount a scratch bpffs ({proc.stderr.strip()}) "
            f"and none is mounted at {BPFFS_ROOT}"
        )
    pin_dir = tempfile.mkdtemp(prefix="ebpflb-compile-check-", dir=BPFFS_ROOT)
    try:
        yield pin_dir
    finally:
        for name in os.listdir(pin_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(pin_dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(pin_dir)
