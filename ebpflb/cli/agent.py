"""`ebpflb agent`: run the agent in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer

from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.userspace.state import DEFAULT_STATE_DIR
from ebpflb.errors import EbpflbError


class DataplaneChoice(StrEnum):
    auto = "auto"
    bpf = "bpf"
    userspace = "userspace"


def _split(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or []:
        out.extend(x for x in v.split(",") if x)
    return tuple(out)


@handle_errors
def agent(
    manifests: Annotated[str | None, typer.Option(help="Directory of Service/EndpointSlice "
                                                    "manifests (YAML or JSON).")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig of the cluster.")] = None,
    dataplane: Annotated[DataplaneChoice, typer.Option(help="Data path.")] = DataplaneChoice.auto,
    node_name: Annotated[str | None, typer.Option(help="This node's name.")] = None,
    pin_dir: Annotated[str, typer.Option(help="BPF filesystem dir for the pinned maps.")]
    = abi.DEFAULT_PIN_DIR,
    interfaces: Annotated[list[str] | None, typer.Option(
        help="Interfaces to attach to (repeat or comma-separate); default: every veth.")] = None,
    cleanup: Annotated[bool, typer.Option(help="On exit, detach and remove the pinned maps.")]
    = False,
    min_sync_interval: Annotated[float, typer.Option(help="Seconds between two syncs.")] = 0.05,
    max_services: Annotated[int, typer.Option(help="Service map size.")]
    = abi.DEFAULT_MAX_SERVICES,
    max_backends: Annotated[int, typer.Option(help="Backend map size.")]
    = abi.DEFAULT_MAX_BACKENDS,
    max_conntrack: Annotated[int, typer.Option(help="Conntrack map size.")]
    = abi.DEFAULT_MAX_CONNTRACK,
    state_dir: Annotated[str, typer.Option(help="Where the userspace data path publishes "
                                                "its state for the CLI.")]
    = DEFAULT_STATE_DIR,
    udp_idle_timeout: Annotated[float, typer.Option(help="Userspace data path: seconds "
                                                        "before an idle UDP session ends.")]
    = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the agent in the foreground (SIGTERM/SIGINT stop it; the bpf data path stays
    in place unless --cleanup is given)."""
    from ebpflb.agent import Agent, AgentConfig
    from ebpflb.sources.manifests import ManifestSource

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (manifests is None) == (kubeconfig is None):
        raise typer.BadParameter("give exactly one of --manifests DIR or --kubeconfig PATH")
    if kubeconfig is not None:
        raise EbpflbError("the Kubernetes API source (--kubeconfig) is not available yet; "
                          "use --manifests DIR")
    if min_sync_interval < 0:
        raise typer.BadParameter("--min-sync-interval must be >= 0")

    # Handlers first: a SIGTERM that arrives while the program compiles must still
    # end in an orderly stop (and --cleanup), not in death by signal.
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("ebpflb.agent").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    from ebpflb.dataplane.bpf.dataplane import BpfConfig
    from ebpflb.dataplane.choose import open_dataplane
    from ebpflb.dataplane.userspace.dataplane import UserspaceConfig

    assert manifests is not None
    source = ManifestSource(manifests, node_name=node_name)
    if udp_idle_timeout <= 0:
        raise typer.BadParameter("--udp-idle-timeout must be > 0")
    dp = open_dataplane(
        dataplane.value,
        bpf_config=BpfConfig(pin_dir=pin_dir, interfaces=_split(interfaces),
                             max_services=max_services, max_backends=max_backends,
                             max_conntrack=max_conntrack),
        userspace_config=UserspaceConfig(state_dir=state_dir,
                                         udp_idle_timeout=udp_idle_timeout))
    try:
        Agent(source, dp, AgentConfig(node_name=node_name, min_sync_interval=min_sync_interval)
              ).run(stop)
    finally:
        dp.close(cleanup=cleanup)
