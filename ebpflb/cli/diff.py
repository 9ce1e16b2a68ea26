"""`ebpflb diff`: what a sync would add, change and remove in the pinned maps, computed
from the source and the maps as they are, without touching either.

Exit status as `git diff`: 0, or with --exit-code 0 for no changes and 1 for changes;
2 for an error (one line), since 1 means changes here. With --exit-code an object the
plan had to leave out (invalid, skipped) is also 2: the plan is not the whole source,
so "no changes" cannot be told.

An invalid edit of a manifest object whose Service the pinned maps serve is shown as
the agent treats it: named once, and its Service left as served (``lastgood``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer

from ebpflb.cli import render
from ebpflb.dataplane.bpf import abi
from ebpflb.errors import EbpflbError
from ebpflb.sources.base import Snapshot

P = ParamSpec("P")
R = TypeVar("R")
EXIT_CHANGES = 1
EXIT_ERROR = 2


def _errors_exit_2(fn: Callable[P, R]) -> Callable[P, R]:
    """The CLI's one-line error, with diff's status for it (2, not 1)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EbpflbError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_ERROR) from exc

    return wrapper


@_errors_exit_2
def diff(
    manifests: Annotated[str | None, typer.Option(help="Manifest directory.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig of the cluster.")] = None,
    node_name: Annotated[str | None, typer.Option(help="This node's name.")] = None,
    pin_dir: Annotated[
        str, typer.Option(help="Where the agent pins its maps.")
    ] = abi.DEFAULT_PIN_DIR,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code",
            help="Exit 0 for no changes, 1 for changes, 2 for an error or "
            "skipped objects (like git diff).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the API server's lists (--kubeconfig).")
    ] = 30.0,
) -> None:
    """Dry run: print the plan a sync would apply to the pinned maps."""
    from ebpflb.dataplane.bpf.maps import BpfMaps, pins_present, read_state
    from ebpflb.plan import desired_frontends
    from ebpflb.sources.lastgood import Held, held_by_agent
    from ebpflb.sources.topology import node_zone
    from ebpflb.sources.translate import node_addresses, translate
    from ebpflb.sync.diff import diff as plan_diff

    if (manifests is None) == (kubeconfig is None):
        raise typer.BadParameter("give exactly one of --manifests DIR or --kubeconfig PATH")
    if manifests is not None:
        snap = _from_manifests(manifests, node_name)
    else:
        from ebpflb.sources.kube import default_node_name

        node_name = default_node_name(node_name)  # as the agent does
        snap = _from_kubernetes(kubeconfig, node_name, timeout)
    addrs = node_addresses(snap.nodes, node_name) if node_name else ()
    zone = node_zone(snap.nodes, node_name) if node_name else None
    result = translate(
        snap.services,
        snap.slices,
        node_name=node_name,
        node_zone=zone,
        node_addresses=addrs,
        # The families the Node object shows; without one, both (a dry run cannot see
        # the agent's interfaces).
        node_families=frozenset(a.version for a in addrs) or None,
    )
    if pins_present(pin_dir):
        with BpfMaps(pin_dir) as maps:
            current = read_state(maps).frontends
    else:
        typer.echo(f"note: no maps pinned under {pin_dir}; everything would be added", err=True)
        current = {}
    # An invalid edit of a served manifest object: the agent keeps what it serves.
    held = (
        held_by_agent(snap.services + snap.slices, {s.port_name.service for s in current.values()})
        if manifests is not None
        else Held()
    )
    skipped = (
        *snap.errors,
        *held.lines,
        *(e for e in result.errors if (e.kind, e.namespace, e.name) not in held.objects),
    )
    for err in skipped:
        typer.echo(f"skipped: {err}", err=True)
    desired = {
        k: v
        for k, v in desired_frontends(result.state).items()
        if v.port_name.service not in held.services
    }
    desired |= {k: v for k, v in current.items() if v.port_name.service in held.services}
    plan = plan_diff(current, desired)
    if json:
        typer.echo(render.to_json(plan.as_json()))
    else:
        for op in plan.ops:
            typer.echo(str(op))
        typer.echo(f"{plan.summary()} ({len(plan)} operations)")
    if exit_code and skipped:
        typer.echo(
            f"error: {len(skipped)} object(s) skipped (above): the plan leaves them out", err=True
        )
        raise typer.Exit(EXIT_ERROR)
    if exit_code and plan:
        raise typer.Exit(EXIT_CHANGES)


def _from_manifests(manifests: str, node_name: str | None) -> Snapshot:
    from ebpflb.sources.manifests import ManifestSource

    return ManifestSource(manifests, node_name=node_name).load()


def _from_kubernetes(kubeconfig: str | None, node_name: str | None, timeout: float) -> Snapshot:
    from ebpflb.sources.kube import KubeSource

    source = KubeSource(kubeconfig=kubeconfig, node_name=node_name)
    source.start()
    try:
        if not source.wait_synced(timeout):
            raise EbpflbError(
                f"the API server in {kubeconfig} did not list Services, "
                f"EndpointSlices and Nodes within {timeout:g}s"
            )
        return source.load()
    finally:
        source.close()
