"""`ebpflb services|backends|conntrack|stats`: read the pinned maps directly, so they
work while the agent is down; where no maps are pinned, the userspace data path's
state file (published by a running agent). Same tables, same JSON keys.

`services` also lists the Services that are never load-balanced (headless,
ExternalName), which have no frontend in any data path, from the agent's status file
(the last one an agent published under --state-dir, if any)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.dataplane.userspace.state import DEFAULT_STATE_DIR, STATE_FILE
from ebpflb.errors import EbpflbError

if TYPE_CHECKING:
    from ebpflb.dataplane.bpf.inspect import BpfInspector
    from ebpflb.dataplane.userspace.state import UserspaceInspector

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON with stable keys.")]
PinDirOpt = Annotated[str, typer.Option("--pin-dir", help="Where the agent pins its maps.")]
StateDirOpt = Annotated[str, typer.Option(
    "--state-dir", help=f"Where a userspace agent publishes {STATE_FILE}.")]


def _inspector(pin_dir: str, state_dir: str) -> BpfInspector | UserspaceInspector:
    """The bpf pins when present, else the userspace state file, else the bpf error."""
    import os

    from ebpflb.dataplane.bpf.inspect import BpfInspector
    from ebpflb.dataplane.userspace.state import UserspaceInspector, state_path

    try:
        return BpfInspector(pin_dir)
    except EbpflbError:
        if not os.path.exists(state_path(state_dir)):
            raise
    return UserspaceInspector(state_dir)


@handle_errors
def services(json: JsonOpt = False, pin_dir: PinDirOpt = DEFAULT_PIN_DIR,
             state_dir: StateDirOpt = DEFAULT_STATE_DIR) -> None:
    """Frontends and their backend counts."""
    with _inspector(pin_dir, state_dir) as insp:
        views = insp.services()
    unbalanced = _unbalanced(state_dir)
    if json:
        typer.echo(render.to_json([*(v.as_json() for v in views),
                                   *(_unbalanced_json(u) for u in unbalanced)]))
    else:
        typer.echo(render.services_table(views, extra=[_unbalanced_row(u)
                                                       for u in unbalanced]))


def _unbalanced(state_dir: str) -> list[dict[str, Any]]:
    """The never load-balanced Services the agent published; none without a status."""
    from ebpflb.agent.status import read_status

    try:
        items = read_status(state_dir).get("unbalanced")
    except EbpflbError:
        return []
    return [u for u in items or () if isinstance(u, dict)
            and {"service", "kind", "address"} <= u.keys()]


def _unbalanced_json(u: dict[str, Any]) -> dict[str, object]:
    """A row with the keys of every other row; no frontend, port or backends."""
    return {"id": None, "service": u["service"], "port_name": None, "protocol": None,
            "address": u["address"], "port": None, "frontend": None, "kind": u["kind"],
            "backends": 0, "active_backends": 0, "affinity_timeout": 0}


def _unbalanced_row(u: dict[str, Any]) -> list[object]:
    """A table row: the address (None or the DNS name) where a frontend would be."""
    return ["-", u["service"], u["kind"], u["address"], 0, 0, "-"]


@handle_errors
def backends(json: JsonOpt = False, pin_dir: PinDirOpt = DEFAULT_PIN_DIR,
             state_dir: StateDirOpt = DEFAULT_STATE_DIR) -> None:
    """Backends of every frontend."""
    with _inspector(pin_dir, state_dir) as insp:
        views = insp.backends()
    typer.echo(render.to_json([v.as_json() for v in views]) if json
               else render.backends_table(views))


@handle_errors
def conntrack(json: JsonOpt = False, pin_dir: PinDirOpt = DEFAULT_PIN_DIR,
              state_dir: StateDirOpt = DEFAULT_STATE_DIR) -> None:
    """Tracked flows: client, frontend and the backend they are pinned to."""
    with _inspector(pin_dir, state_dir) as insp:
        views = insp.conntrack()
    typer.echo(render.to_json([v.as_json() for v in views]) if json
               else render.conntrack_table(views))


@handle_errors
def stats(json: JsonOpt = False, pin_dir: PinDirOpt = DEFAULT_PIN_DIR,
          state_dir: StateDirOpt = DEFAULT_STATE_DIR) -> None:
    """Per-service packet and byte counters, and the data path's global counters."""
    with _inspector(pin_dir, state_dir) as insp:
        view = insp.stats()
    typer.echo(render.to_json(view.as_json()) if json else render.stats_table(view))
