"""Which data path runs: `--dataplane bpf|userspace` as asked, or `auto`: the kernel
path when it starts, else (only when it cannot run here at all and none is in place)
the userspace proxy, with one log line that says why and what would fix it (the
error's own fix: see errors). Starting one path first removes what the other left behind (a
switch on restart): the userspace path detaches ebpflb's tc filters and removes the
pins; the bpf path removes the `ebpflb0` device and the userspace state file.

Every step is a parameter of `open_dataplane` (`open_bpf`, `open_userspace`,
`clear_bpf`, `clear_userspace`, `in_place`), so a test can make the kernel path fail in each way it
fails in life without root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ebpflb.dataplane.base import Dataplane
from ebpflb.dataplane.bpf.dataplane import BpfConfig
from ebpflb.dataplane.userspace.dataplane import UserspaceConfig
from ebpflb.errors import (
    BccMissingError,
    BpfUnavailableError,
    DataplaneError,
    EbpflbError,
    PrivilegeError,
)

log = logging.getLogger("ebpflb.dataplane")

MODES = ("auto", "bpf", "userspace")

FIX_OTHER = BpfUnavailableError.fix


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


def fallback_for(exc: BaseException) -> Fallback:
    """The reason (the error's first line) and the fix for a failed kernel path: the
    error's own (every EbpflbError carries one), else one by the exception's type."""
    reason = _first_line(exc)
    if isinstance(exc, EbpflbError) and exc.fix:
        return Fallback(reason, exc.fix)
    if isinstance(exc, ImportError):
        name = exc.name or "a module"
        if not reason.startswith(f"{name} is not importable"):
            reason = f"{name} is not importable: {reason}"
        return Fallback(
            reason,
            BccMissingError.fix
            if name.startswith("bcc")
            else "reinstall ebpflb's dependencies (make setup)",
        )
    if isinstance(exc, PermissionError):
        return Fallback(reason, PrivilegeError.fix)
    return Fallback(reason, FIX_OTHER)


def bpf_in_place(config: BpfConfig) -> str | None:
    """What of a kernel path is in place now (pinned maps, tc filters), or None."""
    from ebpflb.dataplane.bpf.maps import pins_present

    found = []
    if pins_present(config.pin_dir):
        found.append(f"pinned maps under {config.pin_dir}")
    try:
        from ebpflb.dataplane.bpf.attach import TcAttacher

        attacher = TcAttacher(-1)
        try:
            attached = sorted(attacher.attached())
        finally:
            attacher.close()
    except Exception:  # no pyroute2, no privileges: nothing we could have attached
        attached = []
    if attached:
        found.append(f"tc filters on {', '.join(attached)}")
    return " and ".join(found) or None


def _open_bpf(config: BpfConfig) -> Dataplane:
    from ebpflb.dataplane.bpf.dataplane import BpfDataplane

    return BpfDataplane(config)


def _open_userspace(config: UserspaceConfig) -> Dataplane:
    from ebpflb.dataplane.userspace.dataplane import UserspaceDataplane

    return UserspaceDataplane(config)


def clear_bpf_leftovers(config: BpfConfig) -> None:
    """Remove what a bpf agent left: our tc filters (found by their fixed name and
    priority) and XDP programs (by their name) on every interface of this
    namespace, the pinned socket-LB links and the pinned maps."""
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
        from pyroute2 import IPRoute

        from ebpflb.dataplane.bpf.xdp import XdpAttacher, XdpMode

        with IPRoute() as ipr:
            for ifname in XdpAttacher(ipr, -1, XdpMode.OFF).detach_all():
                log.info("removed the bpf data path's XDP program from %s", ifname)
    except Exception as exc:
        log.warning("could not remove the bpf data path's XDP programs: %s", exc)
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
    in_place: Callable[[BpfConfig], str | None] | None = None,
) -> Dataplane:
    """Start the data path `mode` asks for. `bpf` and `userspace` raise on failure.
    `auto` falls back to userspace only when no kernel path was in place before it
    tried (then, whatever the failure, the kernel path cannot run here); it never
    tears down one that serves: a failed restart of one (other map sizes, bcc gone, a
    refused pin dir) keeps it serving and raises the error with its own fix. The steps
    default to this module's functions, looked up at call time (test seams)."""
    open_bpf = open_bpf or _open_bpf
    open_userspace = open_userspace or _open_userspace
    clear_bpf = clear_bpf or clear_bpf_leftovers
    clear_userspace = clear_userspace or clear_userspace_leftovers
    in_place = in_place or bpf_in_place
    if mode not in MODES:
        raise EbpflbError(f"unknown data path {mode!r}; one of {', '.join(MODES)}")
    if mode == "userspace":
        clear_bpf(bpf_config)
        return open_userspace(userspace_config)
    if mode == "bpf":
        dp = open_bpf(bpf_config)
        clear_userspace(userspace_config)
        return dp
    serving = in_place(bpf_config)  # before we try: what a start may not tear down
    try:
        dp = open_bpf(bpf_config)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any failure of the kernel path: bcc, compile, attach
        log.debug("the bpf data path failed", exc_info=True)
        if serving is not None:
            why = fallback_for(exc)
            raise DataplaneError(
                f"the bpf data path did not start: {why.reason}; the kernel path in place "
                f"({serving}) was left serving",
                fix=why.fix,
            ) from exc
        log.warning("%s", fallback_for(exc))
    else:
        clear_userspace(userspace_config)
        return dp
    clear_bpf(bpf_config)
    try:
        return open_userspace(userspace_config)
    except DataplaneError as exc:
        raise DataplaneError(f"neither data path can run here; userspace: {exc}") from exc
