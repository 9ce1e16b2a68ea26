"""`ebpflb services|backends|conntrack|stats`: read the pinned maps directly, so they
work while the agent is down; where no maps are pinned, the userspace data path's
state file (published by a running agent). Same tables, same JSON keys.

`services` also lists the Services that are never load-balanced (headless,
ExternalName), which have no frontend in any data path, from the agent's status file
(the last one an agent published under --state-dir, if any), and every Service's DNS
name (``<name>.<namespace>.svc.<--cluster-domain>``), computed here from the name the
data path records: neither data path stores it, so both show it alike."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf.abi import DEFAULT_PIN_DIR
from ebpflb.dataplane.userspace.state import DEFAULT_STATE_DIR, STATE_FILE
from ebpflb.errors import EbpflbError
from ebpflb.model import DEFAULT_CLUSTER_DOMAIN, ServiceRef

if TYPE_CHECKING:
    from ebpflb.dataplane.bpf.inspect import BpfInspector
    from ebpflb.dataplane.userspace.state import UserspaceInspector

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON with stable keys.")]
PinDirOpt = Annotated[
    str | None,
    typer.Option(
        "--pin-dir",
        help=f"Where the agent pins its maps [default: {DEFAULT_PIN_DIR}].",
        show_default=False,
    ),
]
StateDirOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        help=f"The agent's run directory: its status and a userspace agent's "
        f"{STATE_FILE} [default: {DEFAULT_STATE_DIR}].",
        show_default=False,
    ),
]

_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _cluster_domain(value: str) -> str:
    """A DNS domain (``cluster.local``; a trailing dot allowed), lower-cased."""
    domain = value.strip().lower().rstrip(".")
    if len(domain) > 253 or not _DNS_NAME.fullmatch(domain):
        raise typer.BadParameter(f"{value!r} is not a DNS domain such as cluster.local")
    return domain


ClusterDomainOpt = Annotated[
    str,
    typer.Option(
        "--cluster-domain",
        help="The cluster's DNS domain, for the DNS NAME column and the dns_name key.",
        callback=_cluster_domain,
    ),
]


@dataclass
class _Agent:
    """The one agent a command shows: its tables, and its status when that is known to
    be the same agent's (else a default --state-dir could add another agent's rows)."""

    inspector: BpfInspector | UserspaceInspector
    status_dir: str | None
    which: str


def _status_of(state_dir: str) -> dict[str, Any] | None:
    from ebpflb.agent.status import read_status

    try:
        return read_status(state_dir)
    except EbpflbError:
        return None


def _agent(pin_dir: str | None, state_dir: str | None) -> _Agent:
    """The agent whose --state-dir is given (or the default one): its data path as its
    status says; with --pin-dir alone, the maps there and no status (nothing says which
    agent's status goes with them). Without a status: the pins when present, else the
    userspace state file, else the bpf error."""
    import os

    from ebpflb.dataplane.bpf.inspect import BpfInspector
    from ebpflb.dataplane.userspace.state import UserspaceInspector, state_path

    sdir = state_dir or DEFAULT_STATE_DIR
    status = _status_of(sdir) if pin_dir is None or state_dir is not None else None
    dataplane = status.get("dataplane") if status else None
    if pin_dir is None and dataplane == "userspace":
        return _Agent(UserspaceInspector(sdir), sdir, f"the userspace agent of {sdir}")
    recorded = status.get("pin_dir") if status else None  # an agent that publishes it
    pdir = pin_dir or (str(recorded) if recorded else DEFAULT_PIN_DIR)
    try:
        insp = BpfInspector(pdir)
    except EbpflbError:
        paired = pin_dir is None or state_dir is not None  # --pin-dir alone: no state dir
        if not paired or dataplane == "bpf" or not os.path.exists(state_path(sdir)):
            raise
        return _Agent(UserspaceInspector(sdir), sdir, f"the userspace agent of {sdir}")
    return _Agent(
        insp,
        sdir if status else None,
        f"the bpf maps pinned under {pdir}" + (f" (agent status in {sdir})" if status else ""),
    )


def _inspector(
    pin_dir: str | None, state_dir: str | None, *, json: bool
) -> BpfInspector | UserspaceInspector:
    agent = _agent(pin_dir, state_dir)
    if not json:
        typer.echo(f"# {agent.which}", err=True)
    return agent.inspector


@handle_errors
def services(
    json: JsonOpt = False,
    pin_dir: PinDirOpt = None,
    state_dir: StateDirOpt = None,
    cluster_domain: ClusterDomainOpt = DEFAULT_CLUSTER_DOMAIN,
) -> None:
    """Frontends, their backend counts and their Service's DNS name."""
    agent = _agent(pin_dir, state_dir)
    if not json:
        typer.echo(f"# {agent.which}", err=True)
    with agent.inspector as insp:
        views = insp.services()
    unbalanced = _unbalanced(agent.status_dir) if agent.status_dir else []
    if json:
        typer.echo(
            render.to_json(
                [
                    *(v.as_json(cluster_domain) for v in views),
                    *(_unbalanced_json(u, cluster_domain) for u in unbalanced),
                ]
            )
        )
    else:
        typer.echo(
            render.services_table(
                views,
                extra=[_unbalanced_row(u, cluster_domain) for u in unbalanced],
                cluster_domain=cluster_domain,
            )
        )


def _unbalanced(state_dir: str) -> list[dict[str, Any]]:
    """The never load-balanced Services the agent published; none without a status."""
    from ebpflb.agent.status import read_status

    try:
        items = read_status(state_dir).get("unbalanced")
    except EbpflbError:
        return []
    return [
        u for u in items or () if isinstance(u, dict) and {"service", "kind", "address"} <= u.keys()
    ]


def _dns_name(service: str, cluster_domain: str) -> str | None:
    """The DNS name of a Service the status file names as ``namespace/name``."""
    namespace, sep, name = service.partition("/")
    return ServiceRef(namespace, name).dns_name(cluster_domain) if sep and name else None


def _unbalanced_json(u: dict[str, Any], cluster_domain: str) -> dict[str, object]:
    """A row with the keys of every other row; no frontend, port or backends."""
    return {
        "id": None,
        "service": u["service"],
        "port_name": None,
        "protocol": None,
        "address": u["address"],
        "port": None,
        "frontend": None,
        "kind": u["kind"],
        "backends": 0,
        "active_backends": 0,
        "affinity_timeout": 0,
        "dns_name": _dns_name(u["service"], cluster_domain),
    }


def _unbalanced_row(u: dict[str, Any], cluster_domain: str) -> list[object]:
    """A table row: the address (None or the DNS name) where a frontend would be."""
    dns = _dns_name(u["service"], cluster_domain) or "-"
    return ["-", u["service"], u["kind"], u["address"], 0, 0, "-", dns]


@handle_errors
def backends(
    json: JsonOpt = False, pin_dir: PinDirOpt = None, state_dir: StateDirOpt = None
) -> None:
    """Backends of every frontend."""
    with _inspector(pin_dir, state_dir, json=json) as insp:
        views = insp.backends()
    typer.echo(
        render.to_json([v.as_json() for v in views]) if json else render.backends_table(views)
    )


@handle_errors
def conntrack(
    json: JsonOpt = False, pin_dir: PinDirOpt = None, state_dir: StateDirOpt = None
) -> None:
    """Tracked flows: client, frontend and the backend they are pinned to."""
    with _inspector(pin_dir, state_dir, json=json) as insp:
        views = insp.conntrack()
    typer.echo(
        render.to_json([v.as_json() for v in views]) if json else render.conntrack_table(views)
    )


@handle_errors
def stats(json: JsonOpt = False, pin_dir: PinDirOpt = None, state_dir: StateDirOpt = None) -> None:
    """Per-service packet and byte counters, and the data path's global counters."""
    with _inspector(pin_dir, state_dir, json=json) as insp:
        view = insp.stats()
    typer.echo(render.to_json(view.as_json()) if json else render.stats_table(view))
