"""`ebpflb explain FRONTEND --client ADDRESS:PORT`: what the kernel path does with that
client's next packet to the frontend, and why, read from the pinned maps (see
ebpflb.dataplane.bpf.explain). Exit status 0 with an answer, 1 with `error: ...` when
no maps are pinned, 2 for a malformed argument."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.model import Protocol


def _endpoint(text: str, what: str) -> tuple[ipaddress.IPv4Address, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
        return ipaddress.IPv4Address(host), number
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an IPv4 ADDRESS:PORT", param_hint=what) from None


@handle_errors
def explain(
    frontend: Annotated[
        str,
        typer.Argument(help="The frontend: ADDRESS:PORT, or ADDRESS:PORT/UDP (TCP when left out)."),
    ],
    client: Annotated[str, typer.Option(help="The client, ADDRESS:PORT.")],
    pin_dir: Annotated[str, typer.Option(help="Where the agent pins its maps.")] = DEFAULT_PIN_DIR,
    json: Annotated[bool, typer.Option("--json", help="Print JSON with stable keys.")] = False,
) -> None:
    """Which backend the client's next packet to FRONTEND goes to on the kernel path,
    and why: conntrack, source ranges, affinity, Maglev or random, source NAT."""
    from ebpflb.dataplane.bpf.explain import explain as run
    from ebpflb.dataplane.bpf.maps import BpfMaps

    address, _, proto = frontend.partition("/")
    try:
        protocol = Protocol((proto or "TCP").upper())
    except ValueError:
        raise typer.BadParameter(
            f"protocol {proto!r} is not TCP, UDP or SCTP", param_hint="FRONTEND"
        ) from None
    front = _endpoint(address, "FRONTEND")
    source = _endpoint(client, "--client")
    with BpfMaps(pin_dir) as maps:
        result = run(maps, front, protocol, source)
    if json:
        typer.echo(render.to_json(result.as_json()))
        return
    typer.echo(
        f"{result.client} -> {result.frontend}: {result.decision}"
        + (f" -> {result.backend}" if result.backend else "")
    )
    for step in result.steps:
        typer.echo(f"  - {step}")
