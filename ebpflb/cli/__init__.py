"""The `ebpflb` command: a thin layer that validates options and calls one function.
One module per command group, mounted here."""

from __future__ import annotations

import typer

from ebpflb.cli import agent as _agent
from ebpflb.cli import diff as _diff
from ebpflb.cli import doctor as _doctor
from ebpflb.cli import env as _env
from ebpflb.cli import explain as _explain
from ebpflb.cli import inspect as _inspect
from ebpflb.cli import status as _status
from ebpflb.cli.lab import app as lab_app

app = typer.Typer(
    name="ebpflb",
    help="eBPF-accelerated Kubernetes service load balancer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(_agent.agent)
app.command()(_inspect.services)
app.command()(_inspect.backends)
app.command()(_inspect.conntrack)
app.command()(_inspect.stats)
app.command()(_status.status)
app.command()(_doctor.doctor)
app.command()(_diff.diff)
app.command()(_explain.explain)
app.command()(_env.env)
app.add_typer(lab_app, name="lab")


def main() -> None:
    app()
