"""The one place that calls Dataplane.apply: diff the desired state against what the
data path holds, apply the plan, log one line.

A plan that would overflow a map is refused by the data path before it writes
anything. The syncer then refuses the Service whose change did not fit, whole (every
operation on any of its frontends), and applies the rest: that Service keeps what the
data path already held for it, and every other Service still gets its changes. The
caller retries refused Services at later syncs, so they apply once room is made."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ebpflb.dataplane.base import Dataplane
from ebpflb.errors import CapacityError
from ebpflb.model import DesiredState, Frontend, FrontendKey, ServiceRef
from ebpflb.plan import FrontendState, Op, Plan, op_frontend
from ebpflb.sync.diff import diff, diff_state

log = logging.getLogger(__name__)

MAX_REFUSAL_ROUNDS = 8


@dataclass(frozen=True)
class SyncResult:
    plan: Plan  # what was applied
    frontends: int
    seconds: float
    refused: Mapping[ServiceRef, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # Service -> why it did not fit


class Syncer:
    def __init__(
        self, dataplane: Dataplane, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.dataplane = dataplane
        self.clock = clock

    def plan(self, desired: DesiredState, touched: Collection[FrontendKey] | None = None) -> Plan:
        """The plan to `desired`; with `touched`, only those frontends are compared
        (the incremental path: a change to one Service costs one Service's work)."""
        current = self.dataplane.current()
        if touched is None:
            return diff_state(current, desired)
        have = {k: current[k] for k in touched if k in current}
        want = {
            k: FrontendState.from_entry(desired.entries[k]) for k in touched if k in desired.entries
        }
        return diff(have, want)

    def plan_in_parts(
        self, parts: Iterable[DesiredState], *, desired: Callable[[FrontendKey], bool]
    ) -> Plan:
        """The plan to a desired state given in parts with no frontend in two (each
        part may be dropped once planned): the writes of each part, then the removal of
        every frontend held that ``desired`` says no part has."""
        current = self.dataplane.current()
        ops: list[Op] = []
        for part in parts:
            ops += diff_state(current, part, deletes=False).ops
        gone = {k: st for k, st in current.items() if not desired(k)}
        return Plan(tuple(ops + list(diff(gone, {}).ops)))

    def sync(
        self, desired: DesiredState, touched: Collection[FrontendKey] | None = None
    ) -> SyncResult:
        """Apply the plan to `desired`, less the Services that do not fit. Raises on
        any other data path failure (then the caller resyncs everything later)."""
        start = self.clock()
        plan = self.plan(desired, touched)

        def owner(key: FrontendKey) -> ServiceRef | None:
            entry = desired.entries.get(key)
            return entry.port_name.service if entry is not None else None

        return self.apply(plan, owner=owner, frontends=len(desired.entries), start=start)

    def apply(
        self,
        plan: Plan,
        *,
        owner: Callable[[FrontendKey], ServiceRef | None],
        frontends: int,
        start: float | None = None,
    ) -> SyncResult:
        """Apply `plan`, less the Services that do not fit (``owner``: each desired
        frontend's Service). Raises on any other data path failure."""
        start = self.clock() if start is None else start
        refused: dict[ServiceRef, str] = {}
        # Each round drops every Service the data path named at once, and dropping only
        # frees room: two rounds suffice; the bound only guards a data path that names
        # frontends it then accepts.
        for _ in range(MAX_REFUSAL_ROUNDS):
            if not plan:
                break
            try:
                self.dataplane.apply(plan)
                break
            except CapacityError as exc:
                refs = {self._owner(fe, owner) for fe in exc.frontends}
                if not refs or None in refs or refs <= set(refused):
                    raise
                why = str(exc)
                for ref in refs - set(refused):
                    assert ref is not None
                    refused[ref] = why
                plan = plan.without(self._keys_of(set(refused), plan, owner))
                log.debug("refused %d Services: %s", len(refs), exc)  # the caller logs them
        else:
            raise CapacityError(
                f"the plan still does not fit after refusing {len(refused)} Services"
            )
        elapsed = self.clock() - start
        result = SyncResult(plan, frontends, elapsed, MappingProxyType(refused))
        if plan:
            log.info(
                "sync: %d frontends; %s (%d ops) in %.1f ms",
                result.frontends,
                plan.summary(),
                len(plan),
                elapsed * 1e3,
            )
        return result

    def _owner(
        self, frontend: object, owner: Callable[[FrontendKey], ServiceRef | None]
    ) -> ServiceRef | None:
        if not isinstance(frontend, Frontend):
            return None
        ref = owner(frontend.key)
        if ref is not None:
            return ref
        held = self.dataplane.current().get(frontend.key)
        return held.port_name.service if held is not None else None

    def _keys_of(
        self,
        refs: Collection[ServiceRef],
        plan: Plan,
        owner: Callable[[FrontendKey], ServiceRef | None],
    ) -> set[FrontendKey]:
        """The frontends in `plan` that belong to any of `refs`, as desired or as held
        (one pass over the plan)."""
        frontends = {op_frontend(op) for op in plan.ops}
        return {fe.key for fe in frontends if self._owner(fe, owner) in refs}
