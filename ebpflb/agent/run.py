"""``run_agent``: one agent process from a validated ``RunConfig``: open the source and
the data path, reserve the NodePort range, run the loop until ``stop`` is set, and
leave the node as the configuration asks (the bpf data path stays in place unless
``cleanup``). The CLI validates its options and calls this; nothing else wires."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from dataclasses import replace

from ebpflb.agent.config import RunConfig
from ebpflb.agent.nodeports import PortRange, ReservedPorts
from ebpflb.agent.runner import Agent
from ebpflb.agent.status import remove_status
from ebpflb.dataplane.base import Dataplane
from ebpflb.gcpause import freeze_survivors, no_collections
from ebpflb.sources.base import Source
from ebpflb.statefile import remove_file

log = logging.getLogger("ebpflb.agent")

# How long a thread running Python holds the GIL while another waits for it (CPython's
# default is 5 ms). The agent's other threads wait on sockets: every read of a list
# page or watch event needs the GIL back, and against a busy thread (reading back the
# pinned maps, a full sync) each waited up to the whole interval. At 100,000 Services
# the relists of a restarting agent, beside its read-back, took 14-23 s instead of 5-8.
SWITCH_INTERVAL = 0.0005  # seconds

RESERVED_RECORD = "reserved-ports"  # under the state dir: the ports this agent reserved
LAST_GOOD_FILE = "last-good.json"  # under the state dir: manifest versions held


def run_agent(config: RunConfig, stop: threading.Event) -> None:
    """Run until ``stop`` is set; raises an EbpflbError when the agent cannot start."""
    raise_open_files_limit()
    sys.setswitchinterval(SWITCH_INTERVAL)
    source, node_name = open_source(config)
    agent_config = replace(config.agent, node_name=node_name)
    try:
        dp = open_dataplane_held(config)
        state_dir = config.userspace.state_dir
        reserved = reserve(
            ReservedPorts(record=os.path.join(state_dir, RESERVED_RECORD)),
            agent_config.nodeport_range,
        )
        try:
            pins = config.bpf.pin_dir if dp.name == "bpf" else None
            Agent(source, dp, replace(agent_config, pin_dir=pins)).run(stop)
        finally:
            # NodePorts stay served by a bpf data path left in place: keep them reserved.
            if config.cleanup or dp.name != "bpf":
                release(reserved)
            dp.close(cleanup=config.cleanup)
            if config.cleanup:
                remove_status(state_dir)
                remove_file(os.path.join(state_dir, LAST_GOOD_FILE))
    finally:
        source.close()


def open_dataplane_held(config: RunConfig) -> Dataplane:
    """The data path the configuration names, and what it read back kept out of the
    collector's sight. Reading back the pinned maps builds a state per frontend (some
    ten objects each), all of which survive: no collection runs meanwhile, and they
    are frozen afterwards (see gcpause). Unfrozen, the first young collection after
    the read walked them all to promote them: at a restart on 100,000 Services, 1.4 s
    between the read-back and the first sync."""
    from ebpflb.dataplane.choose import open_dataplane

    with no_collections():
        dp = open_dataplane(
            config.dataplane, bpf_config=config.bpf, userspace_config=config.userspace
        )
        freeze_survivors()
    return dp


def open_source(config: RunConfig) -> tuple[Source, str | None]:
    """The source the configuration names, started, and the node name to use (a
    cluster source defaults it from the environment or the host name)."""
    node_name = config.agent.node_name
    if config.manifests is not None:
        from ebpflb.sources.manifests import ManifestSource

        store = (
            os.path.join(config.agent.state_dir, LAST_GOOD_FILE) if config.agent.state_dir else None
        )
        return ManifestSource(
            config.manifests, node_name=node_name, last_good_store=store
        ), node_name
    from ebpflb.sources.kube import KubeSource, default_node_name

    node_name = default_node_name(node_name)
    source = KubeSource(
        kubeconfig=config.kubeconfig, in_cluster=config.in_cluster, node_name=node_name
    )
    source.start()
    return source, node_name


def reserve(ports: ReservedPorts, port_range: PortRange) -> ReservedPorts | None:
    """Reserve the NodePort range against ephemeral ports, as kube-proxy does; an agent
    that cannot (no privileges) still runs, and says so."""
    try:
        ports.reserve(port_range)
    except OSError as exc:
        log.warning(
            "cannot reserve the NodePort range %s in %s: %s; a local socket may "
            "take a NodePort as its ephemeral port",
            port_range,
            ports.path,
            exc,
        )
        return None
    if ports.added:
        log.info("reserved the NodePort range %s against ephemeral ports", port_range)
    return ports


def release(ports: ReservedPorts | None) -> None:
    if ports is None:
        return
    try:
        ports.release()
    except OSError as exc:
        log.warning("cannot release the NodePort range in %s: %s", ports.path, exc)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open descriptors to the hard one (systemd's default soft
    limit is 1,024, which a busy node's health-check clients alone can exceed; the
    unit's LimitNOFILE sets the hard one). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.info("open-files limit raised from %d to %d", soft, hard)
        return hard
    return soft
