"""Which data path runs: `--dataplane bpf|userspace` as asked, or `auto`: the kernel
path when it starts, else the userspace proxy, with one log line that says why and
what would fix it. Starting one path first removes what the other left behind (a
switch on restart): the userspace path detaches ebpflb's tc filters and removes the
pins; the bpf path removes the `ebpflb0` device and the userspace state file.

Every step is a parameter of `open_dataplane` (`open_bpf`, `open_userspace`,
`clear_bpf`, `clear_userspace`), so a test can make the kernel path fail in each way it
fails in life without root."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ebpflb.dataplane.base import Dataplane
from ebpflb.dataplane.bpf.dataplane import BpfConfig
from ebpflb.dataplane.userspace.dataplane import UserspaceConfig
from ebpflb.errors import DataplaneError, EbpflbError, PinDirError

log = logging.getLogger("ebpflb.dataplane")

MODES = ("auto", "bpf", "userspace")

FIX_BCC = ("apt-get install python3-bpfcc, and run ebpflb from a venv made from "
           "/usr/bin/python3 with --system-site-packages (make setup does both)")
FIX_PRIVILEGES = "run the agent as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
FIX_COMPILE = ("the kernel path needs Linux >= 5.10 and its headers under "
               "/lib/modules/$(uname -r)/build (make setup links them); `ebpflb doctor` "
               "shows which check fails")
FIX_ATTACH = ("attaching to tc needs CAP_NET_ADMIN and a clsact qdisc it may add; check "
              "`tc qdisc show` and `ebpflb doctor`")
FIX_BPFFS = "mount a BPF filesystem (mount -t bpf bpf /sys/fs/bpf) or pass --pin-dir on one"
FIX_PIN_DIR = ("use a --pin-dir owned by root with mode 0700 (the agent creates it so); "
               "the one found was left as it is")
FIX_OTHER = "run `ebpflb doctor` to see which requirement of the bpf data path fails"


@dataclass(frozen=True)
class Fallback:
    """Why the kernel path could not start, and what would fix it."""

    reason: str
    fix: str

    def __str__(self) -> str:
        return f"falling back to the userspace data path: {self.reason}; fix: {self.fix}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def explain(exc: BaseException) -> Fallback:
    """The reason (the error's first line) and the fix for a failed kernel path."""
    reason = _first_line(exc)
    text = str(exc).lower()
    if isinstance(exc, PinDirError):
        return Fallback(reason, FIX_PIN_DIR)
    if isinstance(exc, ImportError):
        name = exc.name or ("bcc" if "bcc" in text else "a module")
        if not reason.startswith(f"{name} is not importable"):
            reason = f"{name} is not importable: {reason}"
        return Fallback(reason, FIX_BCC if name.startswith("bcc") else
                        "reinstall ebpflb's dependencies (make setup)")
    if "bcc" in text and ("import" in text or "no module" in text):
        return Fallback(reason, FIX_BCC)
    code = getattr(exc, "errno", None)
    if isinstance(exc, PermissionError) or code in (errno.EPERM, errno.EACCES) or \
            ("operation not permitted" in text and "attach" not in text):
        return Fallback(reason, FIX_PRIVILEGES)
    if "attach" in text or "clsact" in text:
        return Fallback(reason, FIX_ATTACH)
    if "bpf filesystem" in text or "pin dir" in text:
        return Fallback(reason, FIX_BPFFS)
    if any(w in text for w in ("compile", "header", "verifier", "load", "kernel")):
        return Fallback(reason, FIX_COMPILE)
    return Fallback(reason, FIX_OTHER)


def _open_bpf(config: BpfConfig) -> Dataplane:
    from ebpflb.dataplane.bpf.dataplane import BpfDataplane

    return BpfDataplane(config)


def _open_userspace(config: UserspaceConfig) -> Dataplane:
    from ebpflb.dataplane.userspace.dataplane import UserspaceDataplane

    return UserspaceDataplane(config)


def clear_bpf_leftovers(config: BpfConfig) -> None:
    """Remove what a bpf agent left: our tc filters (found by their fixed name and
    priority) on every interface of this namespace, the pinned socket-LB links and the
    pinned maps."""
    from ebpflb.dataplane.bpf import abi
    from ebpflb.dataplane.bpf.bpffs import remove_pins

    try:
        from ebpflb.dataplane.bpf.attach import TcAttacher

        attacher = TcAttacher(-1)
        try:
            for ifname in attacher.attached():
                attacher.detach(ifname)
                log.info("removed the bpf data path's tc filter from %s", ifname)
        finally:
            attacher.close()
    except Exception as exc:
        log.warning("could not remove the bpf data path's tc filters: %s", exc)
    try:
        from ebpflb.dataplane.bpf.socklb import remove_links

        remove_links(config.pin_dir)
    except Exception as exc:
        log.warning("could not remove the socket-LB links under %s: %s", config.pin_dir, exc)
    try:
        remove_pins(config.pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
    except (OSError, EbpflbError) as exc:  # PinDirError: a directory not ours, left whole
        log.warning("could not remove the pins under %s: %s", config.pin_dir, exc)


def clear_userspace_leftovers(config: UserspaceConfig) -> None:
    """Remove what a userspace agent left: the frontend device and the state file."""
    from ebpflb.dataplane.userspace.device import remove_device
    from ebpflb.dataplane.userspace.state import remove_state

    try:
        if remove_device(config.device):
            log.info("removed the userspace data path's device %s", config.device)
    except Exception as exc:
        log.warning("could not remove %s: %s", config.device, exc)
    try:
        remove_state(config.state_dir)
    except OSError as exc:
        log.warning("could not remove the userspace state: %s", exc)


def open_dataplane(
    mode: str,
    *,
    bpf_config: BpfConfig,
    userspace_config: UserspaceConfig,
    open_bpf: Callable[[BpfConfig], Dataplane] | None = None,
    open_userspace: Callable[[UserspaceConfig], Dataplane] | None = None,
    clear_bpf: Callable[[BpfConfig], None] | None = None,
    clear_userspace: Callable[[UserspaceConfig], None] | None = None,
) -> Dataplane:
    """Start the data path `mode` asks for. `bpf` and `userspace` raise on failure;
    `auto` falls back to userspace on any failure of the kernel path. The steps
    default to this module's functions, looked up at call time (test seams)."""
    open_bpf = open_bpf or _open_bpf
    open_userspace = open_userspace or _open_userspace
    clear_bpf = clear_bpf or clear_bpf_leftovers
    clear_userspace = clear_userspace or clear_userspace_leftovers
    if mode not in MODES:
        raise EbpflbError(f"unknown data path {mode!r}; one of {', '.join(MODES)}")
    if mode == "userspace":
        clear_bpf(bpf_config)
        return open_userspace(userspace_config)
    if mode == "bpf":
        dp = open_bpf(bpf_config)
        clear_userspace(userspace_config)
        return dp
    try:
        dp = open_bpf(bpf_config)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any failure of the kernel path: bcc, compile, attach
        log.warning("%s", explain(exc))
        log.debug("the bpf data path failed", exc_info=True)
    else:
        clear_userspace(userspace_config)
        return dp
    clear_bpf(bpf_config)
    try:
        return open_userspace(userspace_config)
    except DataplaneError as exc:
        raise DataplaneError(f"neither data path can run here; userspace: {exc}") from exc
