"""The agent: wiring only. Source -> translate -> syncer -> data path, in one loop that
polls the source, coalesces changes (a minimum interval between syncs), retries a
failed sync with capped backoff, and runs data path upkeep. The loop never raises."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ebpflb.dataplane.base import Dataplane
from ebpflb.sources.manifests import Snapshot
from ebpflb.sources.translate import node_addresses, translate
from ebpflb.sync.syncer import Syncer, SyncResult

log = logging.getLogger(__name__)


class Source(Protocol):
    def poll(self) -> bool: ...

    def load(self) -> Snapshot: ...


@dataclass(frozen=True)
class AgentConfig:
    node_name: str | None = None
    min_sync_interval: float = 0.05  # seconds between two syncs (kube-proxy's min-sync-period)
    poll_interval: float = 0.1
    housekeeping_interval: float = 1.0
    max_backoff: float = 30.0


class Agent:
    def __init__(self, source: Source, dataplane: Dataplane, config: AgentConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.dataplane = dataplane
        self.config = config
        self.clock = clock
        self.syncer = Syncer(dataplane, clock=clock)
        self._dirty = True
        self._last_sync = float("-inf")
        self._retry_at = float("-inf")
        self._backoff = 0.0
        self._next_housekeeping = float("-inf")
        self._logged_errors: frozenset[str] = frozenset()
        self.last_result: SyncResult | None = None
        self.syncs = 0

    def _log_errors(self, messages: list[str]) -> None:
        current = frozenset(messages)
        for msg in sorted(current - self._logged_errors):
            log.warning("skipped: %s", msg)
        self._logged_errors = current

    def sync_once(self) -> SyncResult:
        """Read the source, translate and sync; raises on failure."""
        snap = self.source.load()
        addrs = node_addresses(snap.nodes, self.config.node_name) if self.config.node_name else ()
        result = translate(snap.services, snap.slices, node_name=self.config.node_name,
                           node_addresses=addrs)
        self._log_errors([str(e) for e in snap.errors] + [str(e) for e in result.errors])
        return self.syncer.sync(result.state)

    def step(self) -> None:
        now = self.clock()
        try:
            if self.source.poll():
                self._dirty = True
        except Exception as exc:
            log.error("source: %s", exc)
        if self._dirty and now >= self._retry_at and (
            now - self._last_sync >= self.config.min_sync_interval
        ):
            self._dirty = False
            self._last_sync = now
            try:
                self.last_result = self.sync_once()
                self.syncs += 1
                self._backoff = 0.0
                if self.syncs == 1:
                    log.info("ready: first sync done (%d frontends)",
                             self.last_result.frontends)
            except Exception as exc:
                # Keep what the data path holds, and retry the whole sync later.
                self._backoff = min(self.config.max_backoff, max(0.5, self._backoff * 2))
                self._retry_at = now + self._backoff
                self._dirty = True
                log.error("sync failed (retrying in %.1fs): %s", self._backoff, exc)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.config.housekeeping_interval
            try:
                self.dataplane.housekeeping()
            except Exception as exc:
                log.error("housekeeping: %s", exc)

    def run(self, stop: threading.Event) -> None:
        log.info("agent running on the %s data path", self.dataplane.name)
        while not stop.is_set():
            self.step()
            stop.wait(self.config.poll_interval)
