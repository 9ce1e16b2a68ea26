"""``ebpflb lab up|down|status``: build, remove and inspect the network-namespace lab.

Thin: each command validates its options, calls one function of
``ebpflb.lab.build`` and prints the result; an EbpflbError becomes one line on
stderr and exit status 1. The lab is imported on use, so ``ebpflb --help`` stays light.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors

if TYPE_CHECKING:
    from ebpflb.lab.layout import Lab, Pod

app = typer.Typer(
    help="A lab of network namespaces (nodes, backend pods with servers, clients) "
    "on this machine; nothing is added to the root namespace.",
    no_args_is_help=True,
)


class CniShape(StrEnum):
    """The lab's node shapes (ebpflb.lab.podnet.Cni, repeated here so that `--help`
    does not import the lab)."""

    routed = "routed"
    bridge = "bridge"


NameOpt = Annotated[str, typer.Option("--name", help="Lab name: 1-8 lowercase letters and digits.")]


@app.command()
@handle_errors
def up(
    name: NameOpt = "ebpflb",
    pods: Annotated[int, typer.Option("--pods", help="Backend pods per node.")] = 3,
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            help="Nodes (1-4); with 2 or more they share an underlay "
            "192.168.50.0/24 with two clients outside the cluster.",
        ),
    ] = 1,
    cni: Annotated[
        CniShape,
        typer.Option(
            "--cni",
            help="How pods are plugged in: routed (veths as L3 hops, as Calico) or "
            "bridge (veths on bridge cni0 holding the gateway, and with 2+ nodes a VXLAN "
            "overlay flannel.1, as flannel).",
            case_sensitive=False,
        ),
    ] = CniShape.routed,
    ipv6: Annotated[
        bool,
        typer.Option(
            "--ipv6",
            help="Dual-stack: every namespace also gets IPv6 (pods fd00:10:244:<node-1>::/64, "
            "underlay fd00:192:168:50::/64, load-balancer range fd00:192:168:60::/64).",
        ),
    ] = False,
) -> None:
    """Build the lab (or keep it, if it already exists as asked) and start the pods'
    servers."""
    from ebpflb.lab import build, layout
    from ebpflb.lab.podnet import Cni

    lab = build.up(layout.LabSpec(name, pods, nodes, Cni(cni.value), ipv6))
    shape = f"{lab.cni} pods{', dual-stack' if lab.ipv6 else ''}"
    if len(lab.nodes) == 1:
        typer.echo(f"lab {lab.name} is up ({shape}): node {lab.node_ns}, client {_ips(lab.client)}")
    else:
        typer.echo(
            f"lab {lab.name} is up ({shape}): {len(lab.nodes)} nodes on underlay {lab.underlay_ns}"
        )
        typer.echo(_nodes_table(lab))
    typer.echo(_pods_table(lab))
    typer.echo(f"manifests {lab.state_dir / 'manifests'}")


@app.command()
@handle_errors
def down(name: NameOpt = "ebpflb") -> None:
    """Stop the pods' servers and delete every namespace of the lab."""
    from ebpflb.lab import build

    build.down(name)
    typer.echo(f"lab {name} is down")


@app.command()
@handle_errors
def status(
    name: NameOpt = "ebpflb",
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the lab's namespaces, nodes, pods and whether their servers run; exit 1 when
    the lab does not exist."""
    from ebpflb.lab import build

    lab = build.status(name)
    if lab is None:
        left = build.leftovers(name)
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
    typer.echo(
        f"pods    {lab.cni}"
        + (f" on bridge {lab.bridge}" if lab.bridge else "")
        + (f", overlay {lab.overlay}" if lab.overlay else "")
        + (", dual-stack (IPv4 and IPv6)" if lab.ipv6 else "")
    )
    if len(lab.nodes) == 1:
        typer.echo(f"node    {lab.node_ns}  veths {' '.join(lab.host_ifnames)}")
        typer.echo(f"client  {lab.client.netns}  {_ips(lab.client)}  via {lab.client.host_ifname}")
    else:
        typer.echo(f"underlay  {lab.underlay_ns}")
        typer.echo(_nodes_table(lab))
        typer.echo(
            render.table(
                ["OUTSIDE", "NETNS", "IP", "BRIDGE PORT"],
                [[o.name, o.netns, _ips(o), o.host_ifname] for o in lab.outside],
            )
        )
    typer.echo(_pods_table(lab))


def _ips(pod: Pod) -> str:
    """A pod's addresses, IPv4 then IPv6 ("10.244.0.11 fd00:10:244::b")."""
    return " ".join(str(a) for a in pod.addresses)


def _nodes_table(lab: Lab) -> str:
    rows = [
        [n.name, n.netns, " ".join(map(str, n.underlay_addresses)) or "-",
         " ".join(str(c) for c in (n.pod_cidr, n.pod_cidr6) if c is not None), n.zone,
         f"{n.client.netns} {_ips(n.client)}", " ".join(lab.node_ifnames(n.index))]
        for n in lab.nodes
    ]  # fmt: skip
    return render.table(["NODE", "NETNS", "ADDRESS", "POD CIDR", "ZONE", "CLIENT", "IFACES"], rows)


def _pods_table(lab: Lab) -> str:
    alive = lab.servers_alive()
    multi = len(lab.nodes) > 1
    rows = [
        [p.name, p.netns, _ips(p), p.host_ifname, *([f"node-{p.node}"] if multi else []),
         lab.server_pids.get(p.name, "-"), "running" if alive[p.name] else "NOT RUNNING"]
        for p in lab.pods
    ]  # fmt: skip
    headers = ["POD", "NETNS", "IP", "VETH", *(["NODE"] if multi else []), "PID", "SERVER"]
    return render.table(headers, rows)
