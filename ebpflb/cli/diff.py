"""`ebpflb diff`: what a sync would add, change and remove in the pinned maps, computed
from the source and the maps as they are, without touching either."""

from __future__ import annotations

from typing import Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf import abi
from ebpflb.errors import EbpflbError
from ebpflb.sources.base import Snapshot


@handle_errors
def diff(
    manifests: Annotated[str | None, typer.Option(help="Manifest directory.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig of the cluster.")] = None,
    node_name: Annotated[str | None, typer.Option(help="This node's name.")] = None,
    pin_dir: Annotated[str, typer.Option(help="Where the agent pins its maps.")]
    = abi.DEFAULT_PIN_DIR,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    exit_code: Annotated[bool, typer.Option(
        "--exit-code", help="Exit 1 when there are changes (like git diff).")] = False,
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the API server's lists (--kubeconfig).")] = 30.0,
) -> None:
    """Dry run: print the plan a sync would apply to the pinned maps."""
    from ebpflb.dataplane.bpf.maps import BpfMaps, pins_present, read_state
    from ebpflb.plan import desired_frontends
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
    result = translate(snap.services, snap.slices, node_name=node_name, node_zone=zone,
                       node_addresses=addrs)
    for err in (*snap.errors, *result.errors):
        typer.echo(f"skipped: {err}", err=True)
    if pins_present(pin_dir):
        with BpfMaps(pin_dir) as maps:
            current = read_state(maps).frontends
    else:
        typer.echo(f"note: no maps pinned under {pin_dir}; everything would be added", err=True)
        current = {}
    plan = plan_diff(current, desired_frontends(result.state))
    if json:
        typer.echo(render.to_json(plan.as_json()))
    else:
        for op in plan.ops:
            typer.echo(str(op))
        typer.echo(f"{plan.summary()} ({len(plan)} operations)")
    if exit_code and plan:
        raise typer.Exit(1)


def _from_manifests(manifests: str, node_name: str | None) -> Snapshot:
    from ebpflb.sources.manifests import ManifestSource

    return ManifestSource(manifests, node_name=node_name).load()


def _from_kubernetes(kubeconfig: str | None, node_name: str | None, timeout: float
                     ) -> Snapshot:
    from ebpflb.sources.kube import KubeSource

    source = KubeSource(kubeconfig=kubeconfig, node_name=node_name)
    source.start()
    try:
        if not source.wait_synced(timeout):
            raise EbpflbError(f"the API server in {kubeconfig} did not list Services, "
                              f"EndpointSlices and Nodes within {timeout:g}s")
        return source.load()
    finally:
        source.close()
