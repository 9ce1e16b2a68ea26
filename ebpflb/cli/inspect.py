"""`ebpflb services|backends|conntrack|stats`: read the pinned maps directly, so they
work while the agent is down; where no maps are pinned, the userspace data path's
state file (published by a running agent). Same tables, same JSON keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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
    typer.echo(render.to_json([v.as_json() for v in views]) if json
               else render.services_table(views))


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
