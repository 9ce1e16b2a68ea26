"""``ebpflb lab up|down|status``: build, remove and inspect the network-namespace lab.

Thin: each command validates its options, calls one function of
``ebpflb.lab.topology`` and prints the result; an EbpflbError becomes one line on
stderr and exit status 1. The lab is imported on use, so ``ebpflb --help`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors

if TYPE_CHECKING:
    from ebpflb.lab.topology import Lab

app = typer.Typer(
    help="A lab of network namespaces (a node, backend pods with servers, a client) "
    "on this machine; nothing is added to the root namespace.",
    no_args_is_help=True,
)

NameOpt = Annotated[
    str, typer.Option("--name", help="Lab name: 1-8 lowercase letters and digits.")
]


@app.command()
@handle_errors
def up(
    name: NameOpt = "ebpflb",
    pods: Annotated[int, typer.Option("--pods", help="Number of backend pods.")] = 3,
) -> None:
    """Build the lab (or keep it, if it already exists as asked) and start the pods'
    servers."""
    from ebpflb.lab import topology

    lab = topology.up(topology.LabSpec(name, pods))
    typer.echo(f"lab {lab.name} is up: node {lab.node_ns}, client {lab.client.ip}")
    typer.echo(_pods_table(lab))


@app.command()
@handle_errors
def down(name: NameOpt = "ebpflb") -> None:
    """Stop the pods' servers and delete every namespace of the lab."""
    from ebpflb.lab import topology

    topology.down(name)
    typer.echo(f"lab {name} is down")


@app.command()
@handle_errors
def status(
    name: NameOpt = "ebpflb",
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the lab's namespaces, pods and whether their servers run; exit 1 when the
    lab does not exist."""
    from ebpflb.lab import topology

    lab = topology.status(name)
    if lab is None:
        left = topology.leftovers(name)
        hint = f"; half-built, run `ebpflb lab down --name {name}`" if left else ""
        typer.echo(f"error: lab {name} does not exist{hint}", err=True)
        raise typer.Exit(1)
    if json:
        data = {
            **lab.to_json(),
            "state_dir": str(lab.state_dir),
            "namespaces": lab.namespaces,
            "servers_alive": lab.servers_alive(),
        }
        typer.echo(render.to_json(data))
        return
    typer.echo(f"lab {lab.name}  (state in {lab.state_dir})")
    typer.echo(f"node    {lab.node_ns}  veths {' '.join(lab.host_ifnames)}")
    typer.echo(f"client  {lab.client.netns}  {lab.client.ip}  via {lab.client.host_ifname}")
    typer.echo(_pods_table(lab))


def _pods_table(lab: Lab) -> str:
    alive = lab.servers_alive()
    rows = [
        [p.name, p.netns, p.ip, p.host_ifname, lab.server_pids.get(p.name, "-"),
         "running" if alive[p.name] else "NOT RUNNING"]
        for p in lab.pods
    ]  # fmt: skip
    return render.table(["POD", "NETNS", "IP", "VETH", "PID", "SERVER"], rows)
