"""`ebpflb status`: the agent's own health from its status file: which source and data
path it runs, whether the source is in sync or stale (the API server is away and the
last known state keeps serving), the last sync, the NodePort addresses and where they
come from, and Services refused for lack of room.
Exit status 0 when a running agent published it; 1 otherwise (no file, or the agent
that wrote it is gone)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.statefile import DEFAULT_STATE_DIR


@handle_errors
def status(
    json: Annotated[bool, typer.Option("--json", help="Print JSON with stable keys.")] = False,
    state_dir: Annotated[
        str, typer.Option("--state-dir", help="Where the agent publishes agent.json.")
    ] = DEFAULT_STATE_DIR,
) -> None:
    """The agent's health: source in sync or stale, last sync, refused Services."""
    from ebpflb.agent.status import read_status

    data = read_status(state_dir)
    typer.echo(render.to_json(data) if json else status_text(data))
    if not data["running"]:
        raise typer.Exit(1)


def status_text(d: dict[str, Any]) -> str:
    if not d["running"]:
        state = f"not running (pid {d['pid']} gone; status written {d['age']:.0f}s ago)"
    elif not d["synced"]:
        state = "starting: waiting for the source's first full read"
        if d["stale"]:
            state += f" (the source has been unreachable for {d['stale_seconds'] or 0:.0f}s)"
    elif d["stale"]:
        state = (
            f"STALE for {d['stale_seconds'] or 0:.0f}s: the source is unreachable; "
            "the data path keeps the last synced state"
        )
    else:
        state = "in sync"
    last = "-" if d["last_sync_seconds"] is None else f"{d['last_sync_seconds'] * 1e3:.1f} ms"
    full = (
        "-"
        if d["last_full_sync_seconds"] is None
        else f"{d['last_full_sync_seconds'] * 1e3:.1f} ms"
    )
    rows = [
        ["agent", f"pid {d['pid']}, {state}"],
        ["source", d["source"]],
        ["dataplane", d["dataplane"]],
        ["frontends", d["frontends"]],
        ["backends", d["backends"]],
        ["syncs", f"{d['syncs']} ({d['full_syncs']} full)"],
        ["last sync", last],
        ["last full sync", full],
        ["nodeport addresses", nodeport_text(d)],
        ["skipped objects", d["skipped"]],
    ]
    rows += [["refused", f"{ref}: {why}"] for ref, why in sorted(d["refused"].items())]
    return render.table(["", ""], rows).split("\n", 1)[1]


SOURCES = {"node-object": "from the Node object", "local-interfaces": "from this node's interfaces"}


def nodeport_text(d: dict[str, Any]) -> str:
    """``192.168.1.10 (from this node's interfaces: no Node object named n1;
    --nodeport-addresses 192.168.0.0/16)``; "-" before the first sync (or from an agent
    that does not publish it)."""
    source = d.get("nodeport_address_source")
    if source is None:
        return "-"
    why = [SOURCES.get(source, source)]
    if d.get("nodeport_address_reason") and source != "node-object":
        why[0] += f": {d['nodeport_address_reason']}"
    if d.get("nodeport_addresses_filter"):
        why.append(f"--nodeport-addresses {d['nodeport_addresses_filter']}")
    return f"{', '.join(d.get('nodeport_addresses') or []) or 'none'} ({'; '.join(why)})"
