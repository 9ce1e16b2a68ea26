"""The one place that calls Dataplane.apply: diff the desired state against what the
data path holds, apply the plan, log one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ebpflb.dataplane.base import Dataplane
from ebpflb.model import DesiredState
from ebpflb.sync.plan import FrontendKey, FrontendState, Plan, desired_frontends, diff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    plan: Plan
    frontends: int
    backends: int
    seconds: float


class Syncer:
    def __init__(self, dataplane: Dataplane, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.dataplane = dataplane
        self.clock = clock

    def plan(self, desired: DesiredState,
             touched: Collection[FrontendKey] | None = None) -> Plan:
        """The plan to `desired`; with `touched`, only those frontends are compared
        (the incremental path: a change to one Service costs one Service's work)."""
        current = self.dataplane.current()
        if touched is None:
            return diff(current, desired_frontends(desired))
        have = {k: current[k] for k in touched if k in current}
        want = {k: FrontendState.from_entry(desired.entries[k])
                for k in touched if k in desired.entries}
        return diff(have, want)

    def sync(self, desired: DesiredState,
             touched: Collection[FrontendKey] | None = None) -> SyncResult:
        start = self.clock()
        plan = self.plan(desired, touched)
        if plan:
            self.dataplane.apply(plan)
        elapsed = self.clock() - start
        backends = sum(len(e.backends) for e in desired.entries.values())
        result = SyncResult(plan, len(desired.entries), backends, elapsed)
        if plan:
            log.info("sync: %d frontends, %d backends; %s (%d ops) in %.1f ms",
                     result.frontends, backends, plan.summary(), len(plan), elapsed * 1e3)
        return result
