"""The JSON files an agent publishes under its state directory for the CLI (its status,
the userspace data path's tables): written atomically, removed quietly, and checked
for a live writer."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

# --state-dir's default: the agent's run directory (its status, the userspace data
# path's tables, the NodePorts it reserved, socket-LB's own cgroup2 mount if it needs one)
DEFAULT_STATE_DIR = "/run/ebpflb"


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the new one, never half."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (the agent that wrote a state file)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
