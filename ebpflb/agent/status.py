"""The agent's own health, published for `ebpflb status`: `<state dir>/agent.json`,
rewritten atomically after every sync and once a second. It says what the maps alone
cannot: whether the source is in sync or stale (the API server is away and the data
path keeps serving the last known state), when the last sync ran and how long it took,
which Services were refused for lack of map room, and the Services that are never
load-balanced (headless, ExternalName), which have no frontend in the data path and
which `ebpflb services` lists from here.

    {"version": 1, "pid": ..., "written_at": <unix time>, "source": "kubernetes",
     "dataplane": "bpf", "synced": true, "stale": false, "stale_seconds": null,
     "syncs": 12, "full_syncs": 1, "last_sync_at": <unix time>,
     "last_sync_seconds": 0.001, "last_full_sync_seconds": 0.41, "frontends": 3,
     "backends": 9, "refused": {"ns/name": "why"}, "skipped": 0,
     "unbalanced": [{"service": "ns/name", "kind": "headless" | "externalname",
                     "address": "None" | <externalName>}],
     "nodeport_addresses": ["192.168.1.10"],
     "nodeport_address_source": "node-object" | "local-interfaces" | null,
     "nodeport_address_reason": "Node n1" | "no Node object named n1" | ... | null,
     "nodeport_addresses_filter": "10.0.0.0/8" | "primary" | null,
     "pin_dir": "/sys/fs/bpf/ebpflb" | null}

The NodePort addresses are those that serve NodePorts (and health checks, and source
NAT) after ``--nodeport-addresses`` (``nodeport_addresses_filter``, null when not
given) narrowed them; their source is null until the first full sync.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ebpflb.errors import EbpflbError
from ebpflb.statefile import pid_alive, remove_file, write_json_atomic

STATUS_FILE = "agent.json"
VERSION = 1


@dataclass(frozen=True)
class AgentStatus:
    pid: int
    source: str  # "manifests" | "kubernetes"
    dataplane: str  # "bpf" | "userspace"
    synced: bool  # the source has read everything once
    stale: bool  # the source is failing to follow its origin; last known state kept
    stale_seconds: float | None  # for how long, when stale
    syncs: int
    full_syncs: int
    last_sync_at: float | None  # unix time
    last_sync_seconds: float | None
    last_full_sync_seconds: float | None
    frontends: int
    backends: int
    refused: dict[str, str] = field(default_factory=dict)  # Service -> why it did not fit
    skipped: int = 0  # objects skipped as invalid (logged by name)
    # Services never load-balanced: {"service", "kind", "address"}, by Service.
    unbalanced: list[dict[str, str]] = field(default_factory=list)
    nodeport_addresses: list[str] = field(default_factory=list)  # after the filter
    nodeport_address_source: str | None = None  # "node-object" | "local-interfaces"
    nodeport_address_reason: str | None = None  # why that source, in words
    nodeport_addresses_filter: str | None = None  # --nodeport-addresses; None: every
    pin_dir: str | None = None  # the bpf data path's pins (inspection reads them there)

    def as_json(self) -> dict[str, Any]:
        return {"version": VERSION, "written_at": time.time(), **asdict(self)}


def status_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATUS_FILE)


def write_status(state_dir: str, status: AgentStatus) -> None:
    write_json_atomic(status_path(state_dir), status.as_json())


def remove_status(state_dir: str) -> None:
    remove_file(status_path(state_dir))


def read_status(state_dir: str) -> dict[str, Any]:
    """The published status plus ``running`` (its agent process is alive) and ``age``
    (seconds since it was written). Raises ``EbpflbError`` when there is none."""
    path = status_path(state_dir)
    try:
        with open(path) as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise EbpflbError(
            f"no agent status under {state_dir} (is an agent running with --state-dir {state_dir}?)"
        ) from None
    except (OSError, ValueError) as e:
        raise EbpflbError(f"cannot read {path}: {e}") from e
    if data.get("version") != VERSION:
        raise EbpflbError(f"{path}: unknown version {data.get('version')!r}")
    data["running"] = pid_alive(int(data.get("pid", 0)))
    data["age"] = max(0.0, time.time() - float(data.get("written_at", 0)))
    return data
