"""`ebpflb agent`: validate the options into a RunConfig, then run_agent until
SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer

from ebpflb import maglev
from ebpflb.agent.nodeports import PortRange
from ebpflb.cli.errors import handle_errors
from ebpflb.dataplane.bpf import abi
from ebpflb.statefile import DEFAULT_STATE_DIR


class DataplaneChoice(StrEnum):
    auto = "auto"
    bpf = "bpf"
    userspace = "userspace"


class LbAlgorithm(StrEnum):
    RANDOM = "random"
    MAGLEV = "maglev"


class XdpChoice(StrEnum):
    AUTO = "auto"  # natively on physical NICs whose driver supports it
    NATIVE = "native"
    GENERIC = "generic"
    OFF = "off"


class SocketLbMode(StrEnum):
    PODS = "pods"  # this node's pods' sockets and the node's own
    HOST = "host"  # the node's own sockets only (pods go through tc)
    OFF = "off"


def _split(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or []:
        out.extend(x for x in v.split(",") if x)
    return tuple(out)


def _source_choice(manifests: str | None, kubeconfig: str | None) -> bool:
    """Check the source options; returns whether the in-cluster configuration is used
    (neither option, in a pod, as a DaemonSet runs)."""
    in_cluster = (
        manifests is None and kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    )
    if manifests is not None and kubeconfig is not None:
        raise typer.BadParameter("give one of --manifests DIR or --kubeconfig PATH, not both")
    if manifests is None and kubeconfig is None and not in_cluster:
        raise typer.BadParameter(
            "give --manifests DIR or --kubeconfig PATH (or run in a "
            "pod, where the in-cluster configuration is used)"
        )
    return in_cluster


def _dns_options(binds: list[str] | None, domain: str) -> tuple[tuple[str, int], ...]:
    """Check --dns-bind and --cluster-domain; the (host, port) pairs to listen on."""
    labels = domain.strip(".").split(".")
    if not all(0 < len(x) <= 63 and x.replace("-", "").isalnum() for x in labels):
        raise typer.BadParameter(f"{domain!r} is not a DNS domain", param_hint="--cluster-domain")
    from ebpflb.dns.server import parse_dns_bind

    try:
        return tuple(dict.fromkeys(parse_dns_bind(b) for b in binds or ()))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--dns-bind") from None


@handle_errors
def agent(
    manifests: Annotated[
        str | None,
        typer.Option(help="Directory of Service/EndpointSlice manifests (YAML or JSON)."),
    ] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig of the cluster.")] = None,
    dataplane: Annotated[DataplaneChoice, typer.Option(help="Data path.")] = DataplaneChoice.auto,
    node_name: Annotated[str | None, typer.Option(help="This node's name.")] = None,
    pin_dir: Annotated[
        str, typer.Option(help="BPF filesystem dir for the pinned maps.")
    ] = abi.DEFAULT_PIN_DIR,
    interfaces: Annotated[
        list[str] | None,
        typer.Option(
            help="Interfaces to attach to (repeat or comma-separate); default: every veth "
            "and uplink (a NIC, bond or VLAN with an IPv4 address; VXLAN, Geneve)."
        ),
    ] = None,
    cleanup: Annotated[
        bool, typer.Option(help="On exit, detach and remove the pinned maps.")
    ] = False,
    min_sync_interval: Annotated[float, typer.Option(help="Seconds between two syncs.")] = 0.05,
    socket_lb: Annotated[
        SocketLbMode,
        typer.Option(
            help="bpf data path: translate sockets at connect()/sendmsg() with cgroup hooks, "
            "as kube-proxy's OUTPUT rules and Cilium's socket-LB do: 'pods' those of this "
            "node's pods (no per-packet rewrite) and of the node's own namespace; 'host' "
            "the node's own only (host-network pods, node processes); 'off' none."
        ),
    ] = SocketLbMode.HOST,
    no_socket_lb: Annotated[
        bool, typer.Option("--no-socket-lb", help="Same as --socket-lb off.")
    ] = False,
    xdp: Annotated[
        XdpChoice,
        typer.Option(
            help="bpf data path: XDP on the uplinks for NodePort, LoadBalancer and external "
            "traffic from outside (tc carries what XDP passes). 'auto': natively on "
            "physical NICs (and bonds) whose driver supports it, tc only on virtual "
            "uplinks (veth, bridge, VXLAN/Geneve, dummy), whose frames from local senders "
            "may carry partial checksums that XDP cannot fix up; 'native' or 'generic' "
            "on every uplink (you assert that they deliver complete checksums, as a NIC "
            "from a wire does); 'off': none, and removes an earlier agent's."
        ),
    ] = XdpChoice.AUTO,
    lb_algorithm: Annotated[
        LbAlgorithm,
        typer.Option(
            help="How a new flow chooses its backend: at random (as kube-proxy), or by Maglev "
            "consistent hashing (every node picks the same backend for a flow; adding or "
            "removing a backend moves about 1/N of the flows)."
        ),
    ] = LbAlgorithm.RANDOM,
    maglev_table_size: Annotated[
        int,
        typer.Option(
            help="Slots of each frontend's Maglev table, a prime from "
            f"{', '.join(map(str, maglev.TABLE_SIZES))}: at least 100x the backends of a "
            "Service for an even spread."
        ),
    ] = maglev.DEFAULT_TABLE_SIZE,
    sync_period: Annotated[
        float,
        typer.Option(
            help="Seconds between two resyncs that read back the data path and repair any "
            "difference (0: never)."
        ),
    ] = 300.0,
    max_services: Annotated[
        int | None,
        typer.Option(
            help="Service map size (frontends). Default: the pinned maps' size, else "
            f"{abi.DEFAULT_MAX_SERVICES}."
        ),
    ] = None,
    max_backends: Annotated[
        int | None,
        typer.Option(
            help="Backend map size (backends, and slots). Default: the pinned maps' size, "
            f"else {abi.DEFAULT_MAX_BACKENDS}."
        ),
    ] = None,
    max_conntrack: Annotated[
        int | None,
        typer.Option(
            help="Conntrack map size. Default: the pinned maps' size, else "
            f"{abi.DEFAULT_MAX_CONNTRACK}."
        ),
    ] = None,
    state_dir: Annotated[
        str,
        typer.Option(
            help="The agent's run directory: its status and "
            "the userspace data path's state for the CLI; "
            "socket-LB mounts cgroup2 at cgroupv2 under it "
            "when no cgroup v2 is visible."
        ),
    ] = DEFAULT_STATE_DIR,
    udp_idle_timeout: Annotated[
        float, typer.Option(help="Userspace data path: seconds before an idle UDP session ends.")
    ] = 30.0,
    zone: Annotated[
        str | None,
        typer.Option(
            help="This node's zone for topology-aware routing; default: its Node's "
            "topology.kubernetes.io/zone label."
        ),
    ] = None,
    nodeport_addresses: Annotated[
        str | None,
        typer.Option(
            help="Node addresses that serve NodePorts and health checks: comma-separated "
            "CIDRs, or 'primary' (the node's first InternalIP); default: every one."
        ),
    ] = None,
    nodeport_range: Annotated[
        str,
        typer.Option(
            help="The NodePort range, reserved against ephemeral ports in this network "
            "namespace (net.ipv4.ip_local_reserved_ports)."
        ),
    ] = "30000-32767",
    healthz_bind_address: Annotated[
        str,
        typer.Option(
            help="HOST:PORT of the proxier health server (/healthz, /livez), as kube-proxy's; "
            "empty or port 0: off."
        ),
    ] = "0.0.0.0:10256",
    healthz_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a queued change may wait to be programmed before /healthz and "
            "/livez answer 503; default: 2 x --sync-period (kube-proxy's rule), at most "
            "60 s (60 s with --sync-period 0)."
        ),
    ] = None,
    metrics_bind_address: Annotated[
        str,
        typer.Option(
            help="HOST:PORT of the Prometheus metrics server (/metrics), as kube-proxy's; "
            "empty or port 0: off."
        ),
    ] = "127.0.0.1:10249",
    dns_bind: Annotated[
        list[str] | None,
        typer.Option(
            help="ADDR[:PORT] ([V6]:PORT) where the agent answers DNS for the cluster domain "
            "(Services' A/AAAA, SRV, CNAME; UDP and TCP; port 53 by default); repeat for "
            "more addresses. Default: off (in a cluster, CoreDNS answers)."
        ),
    ] = None,
    cluster_domain: Annotated[
        str, typer.Option(help="The cluster's DNS domain, as kubelet's --cluster-domain.")
    ] = "cluster.local",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the agent in the foreground (SIGTERM/SIGINT stop it; the bpf data path stays
    in place unless --cleanup is given)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if maglev_table_size not in maglev.TABLE_SIZES:
        raise typer.BadParameter(
            f"must be one of {', '.join(map(str, maglev.TABLE_SIZES))}",
            param_hint="--maglev-table-size",
        )
    maglev_size = maglev_table_size if lb_algorithm is LbAlgorithm.MAGLEV else 0
    if sync_period < 0:
        raise typer.BadParameter("--sync-period must be >= 0")
    if min_sync_interval < 0:
        raise typer.BadParameter("--min-sync-interval must be >= 0")
    if udp_idle_timeout <= 0:
        raise typer.BadParameter("--udp-idle-timeout must be > 0")
    from ebpflb.agent.nodeports import NodePortAddresses

    try:
        addresses = NodePortAddresses.parse(nodeport_addresses)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--nodeport-addresses") from None
    try:
        port_range = PortRange.parse(nodeport_range)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--nodeport-range") from None
    if zone is not None and not zone.strip():
        raise typer.BadParameter("must not be empty", param_hint="--zone")
    from ebpflb.httpserve import parse_bind_address

    try:
        healthz_at = parse_bind_address(healthz_bind_address)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--healthz-bind-address") from None
    try:
        metrics_at = parse_bind_address(metrics_bind_address)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--metrics-bind-address") from None
    if healthz_timeout is not None and healthz_timeout <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--healthz-timeout")

    dns_at = _dns_options(dns_bind, cluster_domain)
    in_cluster = _source_choice(manifests, kubeconfig)
    from ebpflb.agent.config import AgentConfig, RunConfig
    from ebpflb.agent.run import run_agent
    from ebpflb.dataplane.bpf.dataplane import BpfConfig
    from ebpflb.dataplane.userspace.dataplane import UserspaceConfig

    config = RunConfig(
        manifests=manifests,
        kubeconfig=kubeconfig,
        in_cluster=in_cluster,
        dataplane=dataplane.value,
        cleanup=cleanup,
        bpf=BpfConfig(
            pin_dir=pin_dir,
            interfaces=_split(interfaces),
            max_services=max_services,
            max_backends=max_backends,
            max_conntrack=max_conntrack,
            maglev_table_size=maglev_size,
            socket_lb=SocketLbMode.OFF.value if no_socket_lb else socket_lb.value,
            xdp=xdp.value,
            state_dir=state_dir,
        ),
        userspace=UserspaceConfig(
            state_dir=state_dir, udp_idle_timeout=udp_idle_timeout, maglev_table_size=maglev_size
        ),
        agent=AgentConfig(
            node_name=node_name,
            min_sync_interval=min_sync_interval,
            sync_period=sync_period,
            state_dir=state_dir,
            zone=zone,
            nodeport_addresses=addresses,
            nodeport_range=port_range,
            healthz_address=healthz_at,
            metrics_address=metrics_at,
            healthz_timeout=healthz_timeout,
            dns_addresses=dns_at,
            cluster_domain=cluster_domain.strip(".").lower(),
        ),
    )

    # Handlers first: a SIGTERM that arrives while the program compiles must still
    # end in an orderly stop (and --cleanup), not in death by signal.
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("ebpflb.agent").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run_agent(config, stop)
