"""`ebpflb env NAMESPACE`: the Service environment variables kubelet injects into a pod
of NAMESPACE (``sources.envvars`` says how kubelet builds them), so that a process
started by hand (in the lab, say) sees what a pod would.

The Services come from a source, as for `ebpflb diff` (--manifests DIR or --kubeconfig
PATH): neither the pinned maps nor the agent's status keep a Service's port order
(the first port names ``<NAME>_PORT`` and ``<NAME>_SERVICE_PORT``) nor which of a
dual-stack Service's ClusterIPs is the primary, so the running agent cannot answer."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from ebpflb.cli import render
from ebpflb.cli.errors import handle_errors


@handle_errors
def env(
    namespace: Annotated[str, typer.Argument(help="The pod's namespace.", metavar="NAMESPACE")],
    manifests: Annotated[str | None, typer.Option(help="Manifest directory.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig of the cluster.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
    service_links: Annotated[
        bool,
        typer.Option(
            help="As the pod's spec.enableServiceLinks: without it, only the "
            "default/kubernetes Service's variables."
        ),
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the API server's lists (--kubeconfig).")
    ] = 30.0,
) -> None:
    """Print the variables kubelet injects into a pod of NAMESPACE for the Services
    (NAME_SERVICE_HOST, NAME_PORT_80_TCP_ADDR, ...), as NAME=value lines for a shell
    (set -a; eval "$(ebpflb env ...)") or, with --json, one object. Needs --manifests
    DIR or --kubeconfig PATH: the running agent keeps neither the order of a Service's
    ports nor its primary ClusterIP."""
    from ebpflb.cli.diff import _from_kubernetes, _from_manifests
    from ebpflb.sources.envvars import service_env

    if (manifests is None) == (kubeconfig is None):
        raise typer.BadParameter("give exactly one of --manifests DIR or --kubeconfig PATH")
    if not namespace:
        raise typer.BadParameter("the namespace is empty", param_hint="NAMESPACE")
    if manifests is not None:
        snap = _from_manifests(manifests, None)
    else:
        snap = _from_kubernetes(kubeconfig, None, timeout)
    result = service_env(snap.services, namespace, service_links=service_links)
    for err in (*snap.errors, *result.errors):
        typer.echo(f"skipped: {err}", err=True)
    if json:
        typer.echo(render.to_json(result.variables))
        return
    for name, value in result.variables.items():
        typer.echo(f"{name}={shlex.quote(value)}")
    if not result.variables:
        typer.echo(f"note: no Service with a ClusterIP reaches namespace {namespace}", err=True)
