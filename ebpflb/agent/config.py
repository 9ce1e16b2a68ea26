"""The agent's configuration, validated by the CLI before the agent starts: the loop's
tunables (``AgentConfig``) and everything ``run_agent`` wires up (``RunConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ebpflb.agent.nodeports import (
    DEFAULT_NODEPORT_RANGE,
    EVERY_NODE_ADDRESS,
    NodePortAddresses,
    PortRange,
)

if TYPE_CHECKING:
    from ebpflb.dataplane.bpf.dataplane import BpfConfig
    from ebpflb.dataplane.userspace.dataplane import UserspaceConfig


@dataclass(frozen=True)
class AgentConfig:
    node_name: str | None = None
    min_sync_interval: float = 0.05  # seconds between two syncs (kube-proxy's min-sync-period)
    poll_interval: float = 0.1  # longest wait for a change, and for a stop request
    housekeeping_interval: float = 1.0
    # Seconds between two resyncs that read back what the data path holds and repair
    # any difference (kube-proxy's --sync-period); 0: never.
    sync_period: float = 300.0
    max_backoff: float = 30.0
    state_dir: str | None = None  # where agent.json is published; None: not published
    # The proxier health and metrics endpoints, (host, port); None: not served.
    healthz_address: tuple[str, int] | None = None
    metrics_address: tuple[str, int] | None = None
    healthz_timeout: float | None = None  # None: healthz.default_health_timeout(sync_period)
    zone: str | None = None  # this node's zone; None: its Node's topology label
    nodeport_addresses: NodePortAddresses = EVERY_NODE_ADDRESS
    nodeport_range: PortRange = DEFAULT_NODEPORT_RANGE
    # Seconds between two reads of this node's interface addresses while NodePorts use
    # them (no Node object lists any).
    local_refresh: float = 5.0
    pin_dir: str | None = None  # published in the status file, for the inspection commands
    # The cluster-domain DNS answerer (ebpflb.dns): (host, port) it listens on, UDP and
    # TCP; empty: off (the default; in a cluster CoreDNS answers).
    dns_addresses: tuple[tuple[str, int], ...] = ()
    cluster_domain: str = "cluster.local"


@dataclass(frozen=True)
class RunConfig:
    """One agent process: where its objects come from, which data path serves them,
    and what to leave behind. Exactly one of ``manifests`` and ``kubeconfig``, or
    ``in_cluster``."""

    bpf: BpfConfig = field(default_factory=lambda: _bpf_config())
    userspace: UserspaceConfig = field(default_factory=lambda: _userspace_config())
    agent: AgentConfig = field(default_factory=AgentConfig)
    manifests: str | None = None  # a directory of manifests
    kubeconfig: str | None = None  # a cluster's kubeconfig
    in_cluster: bool = False  # the in-cluster configuration (a DaemonSet's pod)
    dataplane: str = "auto"  # auto | bpf | userspace
    cleanup: bool = False  # on exit, detach and remove the pinned maps


def _bpf_config() -> BpfConfig:
    from ebpflb.dataplane.bpf.dataplane import BpfConfig

    return BpfConfig()


def _userspace_config() -> UserspaceConfig:
    from ebpflb.dataplane.userspace.dataplane import UserspaceConfig

    return UserspaceConfig()
