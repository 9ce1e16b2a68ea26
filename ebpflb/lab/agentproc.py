"""The agent as a process inside a lab's node namespace, for the demo and the tests.

It is started with netns.spawn (nsenter --net), so it stays in the host's mount
namespace and its pins land on the host's BPF filesystem, where the CLI and a
restarted agent find them. With ``ip_netns_exec=True`` it is started as an engineer
would by hand, under ``ip netns exec``: a private mount namespace with /sys remounted,
so no /sys/fs/bpf and no cgroup2 of the host's are visible to it; its --pin-dir must
then be on a BPF filesystem mounted outside /sys beforehand (see DESIGN.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from ebpflb.errors import LabError
from ebpflb.lab import netns


class AgentProcess:
    def __init__(
        self,
        node_ns: str,
        *,
        manifests: str | Path | None = None,
        kubeconfig: str | Path | None = None,
        pin_dir: str,
        log_path: str | Path,
        extra_args: Sequence[str] = (),
        ip_netns_exec: bool = False,
    ) -> None:
        if (manifests is None) == (kubeconfig is None):
            raise ValueError("give exactly one of manifests or kubeconfig")
        if ip_netns_exec and os.path.abspath(pin_dir).startswith("/sys/"):
            raise ValueError(
                f"pin dir {pin_dir}: under ip netns exec /sys is not the "
                "host's; give one on a bpffs mounted elsewhere (e.g. /run)"
            )
        self.ip_netns_exec = ip_netns_exec
        self.node_ns = node_ns
        self.source_args = (
            ("--manifests", str(manifests))
            if manifests is not None
            else ("--kubeconfig", str(kubeconfig))
        )
        self.pin_dir = pin_dir
        self.log_path = Path(log_path)
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    def start(self) -> AgentProcess:
        argv = [
            sys.executable,
            "-m",
            "ebpflb",
            "agent",
            *self.source_args,
            "--pin-dir",
            self.pin_dir,
            "--min-sync-interval",
            "0",
            *self.extra_args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        if self.ip_netns_exec:  # ip execs the agent in place: the PID is the agent's
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.node_ns, *argv],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        else:
            self.proc = netns.spawn(
                self.node_ns,
                argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Until this run of the agent has finished its first sync."""

        def ready() -> bool:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return b"ready: first sync done" in f.read()

        self.wait_for(ready, timeout=timeout, what="the agent's first sync")

    def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 30.0,
        what: str = "the agent to sync",
    ) -> None:
        """Poll `predicate` until true; fail with the agent's log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LabError(f"agent exited while waiting for {what}:\n{self.log_text()[-3000:]}")
            try:
                if predicate():
                    return
            except Exception:  # maps not pinned yet, etc.
                pass
            time.sleep(0.05)
        raise LabError(f"timed out waiting for {what}:\n{self.log_text()[-3000:]}")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to clean up (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._close_log()

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def services_synced(pin_dir: str, frontends: set[str]) -> Callable[[], bool]:
    """A predicate: the pinned maps hold exactly these frontends ("ip:port/PROTO")."""
    from ebpflb.dataplane.bpf.inspect import BpfInspector

    def check() -> bool:
        with BpfInspector(pin_dir) as insp:
            return {str(v.frontend) for v in insp.services()} == frontends

    return check
