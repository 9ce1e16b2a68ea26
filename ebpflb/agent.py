"""The agent: wiring only. Source -> translate -> syncer -> data path, in one loop that
waits for the source, coalesces changes (a minimum interval between syncs), retries a
failed sync with capped backoff, and runs data path upkeep. The loop never raises.

Syncs are incremental, as in kube-proxy: the first sync (and any sync after a failure,
a change of this node's addresses or zone, or a frontend moving between Services)
translates everything and compares every frontend; every other sync re-translates only
the Services the source reports as changed and compares only their frontends, so one
event costs one Service's work however many Services there are.

NodePorts open on this node's Node object's addresses, or on its own interfaces'
addresses when it has no Node object or its Node lists none (``nodeaddrs``); the
interfaces are read again every ``local_refresh`` seconds while they are in use, and
a change of either set is a full sync. Which set is in use is logged when it changes
and published in the status file.

Beside the data path, each translation feeds the side systems (``sidetables``): the
health-check listeners (``healthcheck``), the Services never load-balanced (published
in the status file for ``ebpflb services``), and the frontends the data path cannot
serve (SCTP on the bpf data path), which are left out of what it is given.

The operational endpoints (``opsserver``) report on the loop: ``healthz`` learns when
a change is queued and when the data path is fully in sync again (a refused Service
keeps a change pending), ``metrics`` the duration and kind of every sync, the object
changes, and the EndpointSlices each sync programmed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ebpflb.dataplane.base import Dataplane
from ebpflb.gcpause import freeze_survivors, no_full_collections, trim_heap
from ebpflb.healthcheck import WILDCARD, HealthCheck, HealthCheckServer
from ebpflb.healthz import ProxyHealth, default_health_timeout, node_eligible
from ebpflb.metrics import AgentGauges, AgentMetrics
from ebpflb.model import (
    IPAddress,
    ServiceRef,
)
from ebpflb.nodeaddrs import AddressSource, NodePortChoice, choose, own_addresses
from ebpflb.nodeports import (
    DEFAULT_NODEPORT_RANGE,
    EVERY_NODE_ADDRESS,
    NodePortAddresses,
    PortRange,
)
from ebpflb.opsserver import OpsServers
from ebpflb.plan import DeleteService, Plan, RemoveBackends
from ebpflb.rtnetlink import Interface, interfaces
from ebpflb.sidetables import SideTables
from ebpflb.sources.base import Changes, Snapshot, Source
from ebpflb.sources.incremental import IncrementalTranslator, NeedsRebuild
from ebpflb.sources.topology import node_zone
from ebpflb.sources.tracker import slice_owner
from ebpflb.sources.translate import ObjectError
from ebpflb.status import AgentStatus, write_status
from ebpflb.sync.syncer import Syncer, SyncResult

log = logging.getLogger(__name__)


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


class Agent:
    def __init__(self, source: Source, dataplane: Dataplane, config: AgentConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 local_interfaces: Callable[[], Sequence[Interface]] = interfaces) -> None:
        self.source = source
        self.dataplane = dataplane
        self.config = config
        self.clock = clock
        self.syncer = Syncer(dataplane, clock=clock)
        self.translator = IncrementalTranslator(node_name=config.node_name,
                                                node_zone=config.zone)
        self.health = HealthCheckServer(healthy=self._healthy)
        self.proxy_health = ProxyHealth(
            config.healthz_timeout if config.healthz_timeout is not None
            else default_health_timeout(config.sync_period), clock=clock)
        self.proxy_health.queued()  # the initial state waits to be programmed
        self.metrics = AgentMetrics()
        self.metrics.attach(dataplane, self._gauges)
        self._ops = OpsServers(self.proxy_health, self.metrics,
                               healthz_at=config.healthz_address,
                               metrics_at=config.metrics_address)
        self._initial_counted = False
        self._loaded_slices: Sequence[dict[str, Any]] = ()  # of the last full load
        self._changed_refs: set[ServiceRef] = set()  # of the running partial sync
        self._side = SideTables(dataplane, config.nodeport_range)
        self._health_pushed: tuple[tuple[HealthCheck, ...], tuple[str, ...]] | None = None
        self._full = True  # the next sync translates and compares everything
        self._dirty = True
        self._last_sync = float("-inf")
        self._retry_at = float("-inf")
        self._backoff = 0.0
        self._next_housekeeping = float("-inf")
        self._next_resync = float("inf")  # set by the first full sync
        self._repairing = False  # the pending full sync is a periodic resync
        self._logged_errors: frozenset[str] = frozenset()
        self._refused: dict[ServiceRef, str] = {}
        self._translate_errors: tuple[ObjectError, ...] = ()
        self._local_interfaces = local_interfaces
        self._local: tuple[IPAddress, ...] = ()  # this node's interface addresses
        self._local_read_at = float("-inf")
        self._local_failed = False
        self.nodeports: NodePortChoice | None = None  # None until the first full sync
        self.last_full_sync_seconds: float | None = None
        self.last_result: SyncResult | None = None
        self.last_sync_at: float | None = None  # wall clock
        self.syncs = 0
        self.full_syncs = 0

    @property
    def refused(self) -> MappingProxyType[ServiceRef, str]:
        """Services whose change did not fit in the maps, and why (retried every sync)."""
        return MappingProxyType(self._refused)

    # --- one sync --------------------------------------------------------------------

    def sync_once(self) -> SyncResult:
        """Sync what changed (everything when a full sync is due); raises on failure,
        after which the next sync is a full one."""
        try:
            # The one place that pauses full GC collections (see gcpause): a sync
            # creates tens of long-lived objects per Service, in translate, plan and
            # writer alike, and the pure modules must not change process-wide state.
            with no_full_collections():
                result = self._full_sync() if self._full else self._incremental_sync()
        except Exception:
            self._full = True
            raise
        self._note_refusals(result)
        return result

    def _full_sync(self) -> SyncResult:
        start = self.clock()
        if self.config.sync_period > 0:
            self._next_resync = start + self.config.sync_period
        snap = self.source.load()
        self._loaded(snap)
        choice, zone = self._node_view(snap.nodes)
        self._note_nodeports(choice)
        self.translator.node_addresses, self.translator.node_zone = choice.addresses, zone
        update = self.translator.rebuild(snap.services, snap.slices)
        self._translate_errors = update.errors
        self._log_errors([*snap.errors, *update.errors])
        self._side.rebuild(update.state)
        self._push_health()
        result = self.syncer.sync(self._side.served(update.state))
        freeze_survivors()  # see gcpause: no full collection walks them afterwards
        self._full = False
        self.full_syncs += 1
        # Read, translate, plan and write: the whole of a full sync, not just the write.
        self.last_full_sync_seconds = self.clock() - start
        trim_heap()  # the previous translation and the list responses are garbage now
        return result

    def _incremental_sync(self) -> SyncResult:
        changes = self.source.take_changes()
        self._took(changes)
        if changes.nodes and (self._node_view(self.source.nodes())
                              != (self.nodeports, self.translator.node_zone)):
            log.info("this node's addresses or zone changed: full sync")
            return self._full_sync()
        refs = set(changes.services) | set(self._refused)
        if not refs:
            self._log_errors([*changes.errors, *self._translate_errors])
            return SyncResult(Plan(), len(self.translator.state.entries), 0.0)
        try:
            update = self.translator.update(
                refs, service_of=self.source.service, slices_of=self.source.slices_of)
        except NeedsRebuild:
            log.debug("a frontend moved between Services: full sync")
            return self._full_sync()
        self._translate_errors = update.errors
        self._log_errors([*changes.errors, *update.errors])
        self._side.update(update, refs)
        self._push_health()
        return self.syncer.sync(self._side.served(update.state), update.touched)

    def _node_view(self, nodes: Sequence[dict[str, Any]]
                   ) -> tuple[NodePortChoice, str | None]:
        """This node's NodePort addresses (as --nodeport-addresses selects them) and its
        zone (--zone, else its Node's label)."""
        name = self.config.node_name
        choice = choose(nodes, name, self._local_addresses(),
                        self.config.nodeport_addresses)
        return choice, self.config.zone or (node_zone(nodes, name) if name else None)

    def _local_addresses(self) -> tuple[IPAddress, ...]:
        """This node's own interface addresses, read at most every ``local_refresh``
        seconds; the last ones known when they cannot be read."""
        now = self.clock()
        if now - self._local_read_at >= self.config.local_refresh:
            self._local_read_at = now
            try:
                self._local = own_addresses(self._local_interfaces())
                self._local_failed = False
            except OSError as exc:
                if not self._local_failed:
                    log.warning("cannot read this node's interface addresses: %s", exc)
                self._local_failed = True
        return self._local

    def _note_nodeports(self, choice: NodePortChoice) -> None:
        """Log when the NodePort addresses' source changes (and the first time they come
        from the interfaces); remember the choice."""
        before, self.nodeports = self.nodeports, choice
        if before is not None and before.source is choice.source:
            return
        shown = ", ".join(map(str, choice.addresses)) or "none"
        narrowed = ("" if self.config.nodeport_addresses.every
                    else f" (--nodeport-addresses {self.config.nodeport_addresses})")
        if choice.source is AddressSource.LOCAL_INTERFACES:
            log.info("%s: NodePorts are served on this node's interface addresses%s: %s",
                     choice.why, narrowed, shown)
        elif before is not None:
            log.info("NodePorts are served on the addresses of %s again%s: %s", choice.why,
                     narrowed, shown)

    def _check_local_addresses(self) -> None:
        """While NodePorts use the interfaces' addresses: a change of them is a full
        sync (an address added by DHCP, an uplink that came up late)."""
        if self.nodeports is None or self.nodeports.source is not AddressSource.LOCAL_INTERFACES:
            return
        before = self._local
        if self._local_addresses() != before:  # the same tuple until a read is due
            log.info("this node's interface addresses changed (%s): full sync",
                     ", ".join(map(str, self._local)) or "none")
            self._full = True
            self._dirty = True

    def _healthy(self) -> bool:
        """For health checks: the agent has synced, and its last sync did not fail."""
        return self.syncs > 0 and self._backoff == 0.0

    def _push_health(self) -> None:
        checks = self._side.health_checks()
        addresses: tuple[str, ...] = (
            (WILDCARD,) if self.config.nodeport_addresses.every
            else tuple(str(a) for a in self.translator.node_addresses))
        if (checks, addresses) != self._health_pushed:
            self._health_pushed = (checks, addresses)
            self.health.update(checks, addresses)

    def _log_errors(self, errors: Iterable[object]) -> None:
        current = frozenset(str(e) for e in errors)
        for msg in sorted(current - self._logged_errors):
            log.warning("skipped: %s", msg)
        self._logged_errors = current

    # --- health and metrics bookkeeping ---------------------------------------------

    def _loaded(self, snap: Snapshot) -> None:
        """A full load: the slices this sync programs, this node's eligibility, and
        (once) the initial objects as changes, as kube-proxy counts their adds."""
        self._loaded_slices = snap.slices
        self.proxy_health.set_node_eligible(node_eligible(snap.nodes, self.config.node_name))
        if not self._initial_counted:
            self._initial_counted = True
            self.metrics.changes(services=len(snap.services), slices=len(snap.slices))

    def _took(self, changes: Changes) -> None:
        self.metrics.changes(services=changes.service_objects, slices=changes.slice_objects)
        self._changed_refs = set(changes.services) | set(self._refused)
        if changes.nodes:
            self.proxy_health.set_node_eligible(
                node_eligible(self.source.nodes(), self.config.node_name))

    def _queued(self) -> None:
        self.proxy_health.queued()
        self.metrics.queued()

    def _synced(self, seconds: float, *, full: bool) -> None:
        """A sync succeeded: everything queued is programmed unless a Service was
        refused (its change stays pending for the health check)."""
        complete = not self._refused
        self.proxy_health.synced(complete=complete)
        if not complete:
            self.proxy_health.queued()
        if full:
            slices: Sequence[dict[str, Any]] = self._loaded_slices
            if self._refused:
                slices = [s for s in slices if ServiceRef(
                    s.get("metadata", {}).get("namespace", ""), slice_owner(s) or "")
                    not in self._refused]
        else:
            slices = [s for ref in self._changed_refs if ref not in self._refused
                      for s in self.source.slices_of(ref)]
        self.metrics.synced(seconds, full=full, complete=complete, slices=slices)
        self._loaded_slices = ()

    def _gauges(self) -> AgentGauges:
        """For a scrape (on the metrics server's thread: reads only)."""
        stale_since = self.source.stale_since
        return AgentGauges(
            dataplane=self.dataplane.name, refused_services=len(self._refused),
            frontends=len(self.translator.state.entries), backends=self.translator.backends,
            stale_seconds=0.0 if stale_since is None else max(0.0, self.clock() - stale_since))

    def _note_refusals(self, result: SyncResult) -> None:
        for ref, why in sorted(result.refused.items()):
            if ref not in self._refused:
                log.error("refused Service %s: %s; it keeps what the data path held", ref, why)
        for ref in sorted(set(self._refused) - set(result.refused)):
            log.info("Service %s now fits and is applied", ref)
        self._refused = dict(result.refused)
        if self._refused and any(isinstance(op, RemoveBackends | DeleteService)
                                 for op in result.plan.ops):
            self._dirty = True  # room was made: retry the refused at the next sync

    # --- the loop ----------------------------------------------------------------------

    def step(self) -> float:
        """Sync if due, run upkeep if due; returns how long the loop may wait."""
        now = self.clock()
        synced = self._source_synced()
        try:
            if synced and self.source.poll():
                self._dirty = True
                self._queued()
        except Exception as exc:
            log.error("source: %s", exc)
        if synced and now >= self._next_resync:
            self._resync()
        due = max(self._retry_at, self._last_sync + self.config.min_sync_interval)
        if synced and self._dirty and now >= due:
            self._sync_now(now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.config.housekeeping_interval
            self._check_local_addresses()
            self._housekeeping()
        wait = self.config.poll_interval
        if self._dirty and synced:
            due = max(self._retry_at, self._last_sync + self.config.min_sync_interval)
            wait = min(wait, max(0.0, due - self.clock()))
        return wait

    def _resync(self) -> None:
        """The periodic repair: read back what the data path holds, then a full sync
        compares it with the desired state and writes any difference."""
        self._next_resync = float("inf")  # the full sync sets the next one
        self._repairing = True
        try:
            self.dataplane.reload()
        except Exception as exc:
            log.error("resync: cannot read back the data path: %s", exc)
        self._full = True
        self._dirty = True

    def _source_synced(self) -> bool:
        try:
            return bool(self.source.synced)
        except Exception as exc:
            log.error("source: %s", exc)
            return False

    def _sync_now(self, now: float) -> None:
        self._dirty = False
        self._last_sync = now
        began, full_syncs = self.clock(), self.full_syncs
        try:
            self.last_result = self.sync_once()
        except Exception as exc:
            # Keep what the data path holds, and retry with a full sync later.
            self._backoff = min(self.config.max_backoff, max(0.5, self._backoff * 2))
            self._retry_at = now + self._backoff
            self._dirty = True
            log.error("sync failed (retrying in %.1fs): %s", self._backoff, exc)
            return
        self.syncs += 1
        self.last_sync_at = time.time()
        self._backoff = 0.0
        self._synced(self.clock() - began, full=self.full_syncs > full_syncs)
        if self._repairing:
            self._repairing = False
            plan = self.last_result.plan
            if plan:
                log.warning("resync: the data path differed from the desired state; "
                            "repaired %d frontends (%d added, %d changed, %d removed)",
                            plan.added + plan.changed + plan.removed, plan.added,
                            plan.changed, plan.removed)
        if self.syncs == 1:
            log.info("ready: first sync done (%d frontends)", self.last_result.frontends)
        self._publish()

    def _housekeeping(self) -> None:
        try:
            self.dataplane.housekeeping()
        except Exception as exc:
            log.error("housekeeping: %s", exc)
        self._publish()

    def _publish(self) -> None:
        if self.config.state_dir is None:
            return
        try:
            write_status(self.config.state_dir, self.status())
        except OSError as exc:
            log.warning("cannot write the status file under %s: %s", self.config.state_dir, exc)

    def status(self) -> AgentStatus:
        result = self.last_result
        stale_since = self.source.stale_since
        return AgentStatus(
            pid=os.getpid(),
            source=self.source.kind,
            dataplane=self.dataplane.name,
            synced=self._source_synced(),
            stale=bool(self.source.stale),
            stale_seconds=None if stale_since is None else self.clock() - stale_since,
            syncs=self.syncs,
            full_syncs=self.full_syncs,
            last_sync_at=self.last_sync_at,
            last_sync_seconds=result.seconds if result is not None else None,
            last_full_sync_seconds=self.last_full_sync_seconds,
            frontends=len(self.translator.state.entries),
            backends=self.translator.backends,
            refused={str(ref): why for ref, why in self._refused.items()},
            skipped=len(self._logged_errors),
            unbalanced=self._side.unbalanced_json(),
            **self._nodeports_status(),
        )

    def _nodeports_status(self) -> dict[str, Any]:
        choice = self.nodeports
        option = self.config.nodeport_addresses
        return {
            "nodeport_addresses": ([str(a) for a in choice.addresses if a.version == 4]
                                   if choice is not None else []),
            "nodeport_address_source": choice.source.value if choice is not None else None,
            "nodeport_address_reason": choice.why if choice is not None else None,
            "nodeport_addresses_filter": None if option.every else str(option),
        }

    def run(self, stop: threading.Event) -> None:
        log.info("agent running on the %s data path, source: %s", self.dataplane.name,
                 self.source.kind)
        self._ops.start()
        try:
            while not stop.is_set():
                wait = self.step()
                if self._dirty or not self._source_synced():
                    stop.wait(wait)  # a change is already pending: don't spin on the event
                else:
                    self.source.changed.wait(wait)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the side systems (the health-check listeners); the data path is the
        caller's."""
        self.health.close()
        self._ops.close()

