"""`ebpflb doctor`: which data path would run here, and why."""

from __future__ import annotations

from typing import Annotated

import typer

from ebpflb.cli import render
from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.statefile import DEFAULT_STATE_DIR


def doctor(
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    state_dir: Annotated[
        str,
        typer.Option(
            help="The agent's --state-dir: where it would mount what is missing (cgroup2 for "
            "socket-LB)."
        ),
    ] = DEFAULT_STATE_DIR,
    pin_dir: Annotated[
        str, typer.Option(help="The agent's --pin-dir: where its socket-LB links may be pinned.")
    ] = DEFAULT_PIN_DIR,
) -> None:
    """Check the kernel, bcc, headers and privileges; say which data path would run
    (exit 0 when one can: bpf, or the userspace fallback)."""
    from ebpflb.doctor import run_checks

    report = run_checks(state_dir=state_dir, pin_dir=pin_dir)
    if json:
        typer.echo(render.to_json(report.as_json()))
    else:
        rows = [
            ["ok" if c.ok else ("WARN" if not c.required else "FAIL"), c.name, c.detail, c.fix]
            for c in report.checks
        ]
        typer.echo(render.table(["", "CHECK", "DETAIL", "FIX"], rows))
        typer.echo(f"\ndataplane: {report.dataplane} ({report.reason})")
    if not report.runnable:
        raise typer.Exit(1)
