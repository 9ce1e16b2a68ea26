"""Every exception ebpflb raises on purpose. The CLI turns any of them into one line
and exit status 1.

Each error carries its own fix (``fix``: a class default, or given where it is raised),
so whoever reports it (the CLI, `--dataplane auto`'s fallback line, doctor) says what to
do without guessing from the message's words."""

from __future__ import annotations


class EbpflbError(Exception):
    """Base of all ebpflb errors: the message says what failed, ``fix`` what to do."""

    fix: str = ""

    def __init__(self, message: str = "", *, fix: str | None = None) -> None:
        super().__init__(message)
        if fix is not None:
            self.fix = fix


class InvalidObjectError(EbpflbError):
    """A Kubernetes object could not be translated; the message names the object."""


class SourceError(EbpflbError):
    """A source (manifest directory, API server) could not be read."""


class DataplaneError(EbpflbError):
    """The data path could not be set up or written."""


class AttachError(DataplaneError):
    """The program could not be attached to an interface's tc hook."""

    fix = (
        "attaching to tc needs CAP_NET_ADMIN and a clsact qdisc it may add; check "
        "`tc qdisc show` and `ebpflb doctor`"
    )


class BpfUnavailableError(DataplaneError):
    """BPF cannot run here at all (no bcc, no privileges, no compiler, no bpffs); the
    message says why. The one kind of failure `--dataplane auto` falls back on."""

    fix = "run `ebpflb doctor` to see which requirement of the bpf data path fails"


class BccMissingError(BpfUnavailableError):
    """bcc (python3-bpfcc) is not importable."""

    fix = (
        "apt-get install python3-bpfcc, and run ebpflb from a venv made from "
        "/usr/bin/python3 with --system-site-packages (make setup does both)"
    )


class PrivilegeError(BpfUnavailableError):
    """This process may not load BPF programs or attach them."""

    fix = "run the agent as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"


class CompileError(BpfUnavailableError):
    """The program did not compile or load (headers, kernel version, verifier)."""

    fix = (
        "the kernel path needs Linux >= 5.10 and its headers under "
        "/lib/modules/$(uname -r)/build (make setup links them); `ebpflb doctor` "
        "shows which check fails"
    )


class BpffsError(BpfUnavailableError):
    """No BPF filesystem for the pins."""

    fix = "mount a BPF filesystem (mount -t bpf bpf /sys/fs/bpf) or pass --pin-dir on one"


class PinDirError(DataplaneError):
    """The pin directory is not safe to use (owner, mode, symlink); its pins are left."""

    fix = (
        "use a --pin-dir owned by root with mode 0700 (the agent creates it so); "
        "the one found was left as it is"
    )


class MapMismatchError(DataplaneError):
    """A pinned map under one of ebpflb's names has another type, key or value size."""

    fix = "remove the pins (or stop the agent with --cleanup) and let the agent recreate them"


class MapGeometryError(DataplaneError):
    """The pinned maps were made with other sizes or layouts than this agent asks for."""

    fix = (
        "run the agent with the sizes the maps were made with, or stop it with "
        "--cleanup to recreate them (tracked connections are lost)"
    )


class CapacityError(DataplaneError):
    """A change would overflow a map; it was refused whole."""

    fix = "raise --max-services / --max-backends, or remove Services"

    def __init__(
        self, message: str, *, frontend: object = None, frontends: tuple[object, ...] = ()
    ) -> None:
        super().__init__(message)
        self.frontend = frontend  # the model.Frontend whose change did not fit, if known
        # Every frontend whose change did not fit, in plan order, when the data path
        # checked the whole plan in one pass (so a caller drops them all at once).
        self.frontends = frontends or ((frontend,) if frontend is not None else ())


class LabError(EbpflbError):
    """The network-namespace lab could not be built or torn down."""
