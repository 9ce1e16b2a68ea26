"""`ebpflb explain FRONTEND --client ADDRESS:PORT` (IPv6: `[ADDRESS]:PORT`): what the
kernel path does with that client's next packet to the frontend, and why, read from
the pinned maps (see ebpflb.dataplane.bpf.explain). Exit status 0 with an answer, 1
with `error: ...` when no maps are pinned, 2 for a malformed argument."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.model import IPAddress, Protocol


def parse_endpoint(text: str) -> tuple[IPAddress, int]:
    """``ADDRESS:PORT`` or, for IPv6, ``[ADDRESS]:PORT`` (as the tables print them);
    ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        address: IPAddress = ipaddress.IPv6Address(host[1:-1])
    else:
        address = ipaddress.IPv4Address(host)  # a bare IPv6 address is ambiguous
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(text)
    return address, number


def _endpoint(text: str, what: str) -> tuple[IPAddress, int]:
    try:
        return parse_endpoint(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not ADDRESS:PORT (IPv4) or [ADDRESS]:PORT (IPv6)", param_hint=what
        ) from None


@handle_errors
def explain(
    frontend: Annotated[
        str,
        typer.Argument(
            help="The frontend: ADDRESS:PORT or [IPV6-ADDRESS]:PORT, then /UDP or /SCTP "
            "(TCP when left out)."
        ),
    ],
    client: Annotated[str, typer.Option(help="The client, ADDRESS:PORT or [IPV6-ADDRESS]:PORT.")],
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
    if front[0].version != source[0].version:
        raise typer.BadParameter(
            f"the client {client} and the frontend {address} are of different address families",
            param_hint="--client",
        )
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
