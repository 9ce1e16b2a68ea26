"""The agent's loop: waits for the source, coalesces changes (a minimum interval between
syncs), runs a sync (``syncstep``), retries a failed one with capped backoff, repairs the
data path every ``sync_period`` (read back, then a full sync), runs data path upkeep and
publishes the status file. The loop never raises.

The operational endpoints (``opsserver``) report on the loop: ``healthz`` learns when
a change is queued and when the data path is fully in sync again (a refused Service
keeps a change pending), ``metrics`` the duration and kind of every sync, the object
changes, and the EndpointSlices each sync programmed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.healthcheck import HealthCheckServer
from ebpflb.agent.healthz import ProxyHealth, default_health_timeout, node_eligible
from ebpflb.agent.metrics import AgentGauges, AgentMetrics
from ebpflb.agent.opsserver import OpsServers
from ebpflb.agent.status import AgentStatus, write_status
from ebpflb.agent.syncstep import SyncStep
from ebpflb.dataplane.base import Dataplane
from ebpflb.dns.server import dns_server
from ebpflb.model import ServiceRef
from ebpflb.plan import Plan
from ebpflb.rtnetlink import Interface, interfaces
from ebpflb.sources.base import Changes, Snapshot, Source
from ebpflb.sources.tracker import slice_owner
from ebpflb.sync.syncer import SyncResult

log = logging.getLogger("ebpflb.agent")


class Agent:
    def __init__(
        self,
        source: Source,
        dataplane: Dataplane,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        local_interfaces: Callable[[], Sequence[Interface]] = interfaces,
    ) -> None:
        self.source = source
        self.dataplane = dataplane
        self.config = config
        self.clock = clock
        self.health = HealthCheckServer(healthy=self._healthy)
        self.proxy_health = ProxyHealth(
            config.healthz_timeout
            if config.healthz_timeout is not None
            else default_health_timeout(config.sync_period),
            clock=clock,
        )
        self.proxy_health.queued()  # the initial state waits to be programmed
        self.metrics = AgentMetrics()
        self.dns = dns_server(config)  # None unless --dns-bind
        self.sync = SyncStep(
            source,
            dataplane,
            config,
            clock=clock,
            local_interfaces=local_interfaces,
            health=self.health,
            on_load=self._loaded,
            on_changes=self._took,
        )
        self.metrics.attach(dataplane, self._gauges)
        self._ops = OpsServers(
            self.proxy_health,
            self.metrics,
            healthz_at=config.healthz_address,
            metrics_at=config.metrics_address,
        )
        self._initial_counted = False
        self._loaded_slices: Sequence[dict[str, Any]] = ()  # of the last full load
        self._changed_refs: set[ServiceRef] = set()  # of the running partial sync
        self._dirty = True
        self._last_sync = float("-inf")
        self._retry_at = float("-inf")
        self._backoff = 0.0
        self._next_housekeeping = float("-inf")
        self._next_resync = float("inf")  # set by the first full sync
        self._repairing = False  # the pending full sync is a periodic resync
        # The last sync's figures; its plan is dropped once logged (a first sync's plan
        # holds every frontend's operations: ~30 MiB at 100,000 Services, in-process).
        self.last_result: SyncResult | None = None
        self.last_sync_at: float | None = None  # wall clock
        self.syncs = 0

    @property
    def refused(self) -> MappingProxyType[ServiceRef, str]:
        """Services whose change did not fit in the maps, and why (retried every sync)."""
        return MappingProxyType(self.sync.refused)

    @property
    def full_syncs(self) -> int:
        return self.sync.full_syncs

    def sync_once(self) -> SyncResult:
        """One sync now (see SyncStep.run); raises on failure."""
        result = self.sync.run()
        if self.sync.retry_refused:
            self._dirty = True  # room was made: retry the refused at the next sync
        return result

    def _healthy(self) -> bool:
        """For health checks: the agent has synced, and its last sync did not fail."""
        return self.syncs > 0 and self._backoff == 0.0

    # --- health and metrics bookkeeping ---------------------------------------------

    def _loaded(self, snap: Snapshot) -> None:
        """A full load: the slices this sync programs, this node's eligibility, and
        (once) the initial objects as changes, as kube-proxy counts their adds."""
        self._loaded_slices = snap.slices
        if self.dns is not None:
            self.dns.load(snap.services, snap.slices)
        self.proxy_health.set_node_eligible(node_eligible(snap.nodes, self.config.node_name))
        if not self._initial_counted:
            self._initial_counted = True
            self.metrics.changes(services=len(snap.services), slices=len(snap.slices))

    def _took(self, changes: Changes) -> None:
        self.metrics.changes(services=changes.service_objects, slices=changes.slice_objects)
        self._changed_refs = set(changes.services) | set(self.sync.refused)
        if self.dns is not None:
            self.dns.changed(
                {
                    r: (self.source.service(r), tuple(self.source.slices_of(r)))
                    for r in changes.services
                }
            )
        if changes.nodes:
            self.proxy_health.set_node_eligible(
                node_eligible(self.source.nodes(), self.config.node_name)
            )

    def _queued(self) -> None:
        self.proxy_health.queued()
        self.metrics.queued()

    def _synced(self, seconds: float, *, full: bool) -> None:
        """A sync succeeded: everything queued is programmed unless a Service was
        refused (its change stays pending for the health check)."""
        complete = not self.sync.refused
        self.proxy_health.synced(complete=complete)
        if not complete:
            self.proxy_health.queued()
        if full:
            slices: Sequence[dict[str, Any]] = self._loaded_slices
            if self.sync.refused:
                slices = [
                    s
                    for s in slices
                    if ServiceRef(s.get("metadata", {}).get("namespace", ""), slice_owner(s) or "")
                    not in self.sync.refused
                ]
        else:
            slices = [
                s
                for ref in self._changed_refs
                if ref not in self.sync.refused
                for s in self.source.slices_of(ref)
            ]
        self.metrics.synced(seconds, full=full, complete=complete, slices=slices)
        self._loaded_slices = ()

    def _gauges(self) -> AgentGauges:
        """For a scrape (on the metrics server's thread: reads only)."""
        stale_since = self.source.stale_since
        return AgentGauges(
            dataplane=self.dataplane.name,
            refused_services=len(self.sync.refused),
            frontends=self.sync.translator.frontends,
            backends=self.sync.translator.backends,
            stale_seconds=0.0 if stale_since is None else max(0.0, self.clock() - stale_since),
        )

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
            if self.sync.local_addresses_changed():
                self._dirty = True
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
        self.sync.full_due = True
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
        full = self.full_syncs > full_syncs
        if full and self.config.sync_period > 0:
            self._next_resync = began + self.config.sync_period
        self._synced(self.clock() - began, full=full)
        if self._repairing:
            self._repairing = False
            applied = self.last_result.applied
            if applied:
                log.warning(
                    "resync: the data path differed from the desired state; "
                    "repaired %d frontends (%d added, %d changed, %d removed)",
                    applied.added + applied.changed + applied.removed,
                    applied.added,
                    applied.changed,
                    applied.removed,
                )
        if self.syncs == 1:
            log.info("ready: first sync done (%d frontends)", self.last_result.frontends)
        if self.last_result.plan:
            self.last_result = dataclasses.replace(self.last_result, plan=Plan())
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
            last_full_sync_seconds=self.sync.last_full_sync_seconds,
            frontends=self.sync.translator.frontends,
            backends=self.sync.translator.backends,
            refused={str(ref): why for ref, why in self.sync.refused.items()},
            skipped=len(self.sync.logged_errors),
            unbalanced=self.sync.side.unbalanced_json(),
            **self.sync.nodeports_status(),
            pin_dir=self.config.pin_dir,
        )

    def run(self, stop: threading.Event) -> None:
        log.info(
            "agent running on the %s data path, source: %s", self.dataplane.name, self.source.kind
        )
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
        if self.dns is not None:
            self.dns.close()
        self._ops.close()
