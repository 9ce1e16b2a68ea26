"""Compiling in a child process, so the agent never holds bcc's compiler in memory.

bcc links LLVM/clang: importing it and compiling once leaves ~130 MB in the process
for its whole life. The agent only needs the loaded program's fd, so a short-lived
child (`python -m ebpflb.dataplane.bpf.isolated`) compiles and loads the program,
which also creates or reuses the pinned maps, and pins the program at a temporary path.
The agent takes an fd from that pin and removes it; the child's memory goes with it.
``start_isolated`` returns while the child compiles (seconds of CPU on another core),
so a restarting agent reads back its pinned maps meanwhile (see dataplane).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys

from ebpflb import errors
from ebpflb.dataplane.bpf.loader import PROGRAM_NAME, SOCK_PROGRAMS, compile_program
from ebpflb.dataplane.bpf.syscall import obj_get, obj_pin
from ebpflb.errors import BpfUnavailableError, DataplaneError

COMPILE_TIMEOUT = 180.0
_EXIT_UNAVAILABLE = 3
EGRESS_SUFFIX = "_egress"


class PinnedProgram:
    """The tc program as an fd the agent owns; close() drops it (filters keep theirs)."""

    def __init__(
        self, fd: int, name: str, egress_fd: int, sock_fds: dict[str, int] | None = None
    ) -> None:
        self.fd = fd
        self.egress_fd = egress_fd
        self.sock_fds = sock_fds or {}  # loader.SOCK_PROGRAMS name -> fd
        self.name = name

    def close(self) -> None:
        for fd in (self.fd, self.egress_fd, *self.sock_fds.values()):
            if fd >= 0:
                os.close(fd)
        self.fd = self.egress_fd = -1
        self.sock_fds = {}


def load_isolated(
    *, pin_dir: str, max_services: int, max_backends: int, max_conntrack: int
) -> PinnedProgram:
    """compile_program() in a child process; errors come back as the same exceptions."""
    return start_isolated(
        pin_dir=pin_dir,
        max_services=max_services,
        max_backends=max_backends,
        max_conntrack=max_conntrack,
    ).wait()


def start_isolated(
    *, pin_dir: str, max_services: int, max_backends: int, max_conntrack: int
) -> IsolatedLoad:
    """Start compile_program() in a child process and return at once: the caller may
    work meanwhile (a restarting agent reads back its pinned maps) and then ``wait()``."""
    # bpffs refuses names with a dot; the pin lives only until the agent holds an fd.
    pin = os.path.join(pin_dir, f"ebpflb_prog_{os.getpid()}_{secrets.token_hex(3)}")
    args = {
        "pin_dir": pin_dir,
        "max_services": max_services,
        "max_backends": max_backends,
        "max_conntrack": max_conntrack,
        "prog_pin": pin,
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        raise BpfUnavailableError(f"could not run the BPF compiler process: {exc}") from exc
    return IsolatedLoad(proc, pin)


class IsolatedLoad:
    """A compiler child under way; ``wait()`` for its program (or its error)."""

    def __init__(self, proc: subprocess.Popen[str], pin: str) -> None:
        self.proc = proc
        self.pin = pin

    def wait(self, timeout: float = COMPILE_TIMEOUT) -> PinnedProgram:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise BpfUnavailableError(f"could not run the BPF compiler process: {exc}") from exc
        done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, stderr)
        if done.returncode != 0:
            raise _child_error(done)
        pin = self.pin
        paths = [pin, pin + EGRESS_SUFFIX, *(pin + _sock_suffix(n) for n in SOCK_PROGRAMS)]
        fds: list[int] = []
        try:
            for path in paths:
                fds.append(obj_get(path))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise DataplaneError(
                f"cannot open the loaded program at {pin}: {exc.strerror}"
            ) from exc
        finally:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return PinnedProgram(
            fds[0], PROGRAM_NAME, fds[1], dict(zip(SOCK_PROGRAMS, fds[2:], strict=True))
        )

    def kill(self) -> None:
        """Stop the child (the caller failed meanwhile) and remove what it pinned."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        for suffix in ("", EGRESS_SUFFIX, *(_sock_suffix(n) for n in SOCK_PROGRAMS)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin + suffix)


def _child_error(proc: subprocess.CompletedProcess[str]) -> DataplaneError:
    """The error the compiler process reported, as the class it raised (so its fix
    travels with it); a crash is a plain DataplaneError with its stderr."""
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        cls = getattr(errors, str(report["error"]), None)
        if isinstance(cls, type) and issubclass(cls, DataplaneError):
            return cls(str(report["message"]), fix=str(report["fix"]))
    except (ValueError, IndexError, KeyError, TypeError):
        pass
    message = proc.stdout.strip() or proc.stderr.strip()[-4000:] or f"exit {proc.returncode}"
    if proc.returncode == _EXIT_UNAVAILABLE:
        return BpfUnavailableError(message)
    return DataplaneError(f"the BPF compiler process failed: {message}")


def _sock_suffix(name: str) -> str:
    return "_" + name.removeprefix("ebpflb_")


def _child(raw: str) -> int:
    args = json.loads(raw)
    pin = args.pop("prog_pin")
    try:
        program = compile_program(**args)
    except DataplaneError as exc:  # the parent raises the same class, with its fix
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "fix": exc.fix}))
        return _EXIT_UNAVAILABLE if isinstance(exc, BpfUnavailableError) else 1
    obj_pin(program.fd, pin)
    obj_pin(program.egress_fd, pin + EGRESS_SUFFIX)
    for name, fd in program.sock_fds.items():
        obj_pin(fd, pin + _sock_suffix(name))
    program.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
