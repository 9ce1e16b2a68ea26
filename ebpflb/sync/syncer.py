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
from ebpflb.plan import DeleteService, FrontendState, Op, Plan, RemoveBackends, op_frontend
from ebpflb.sync.diff import diff, diff_state

log = logging.getLogger(__name__)

MAX_REFUSAL_ROUNDS = 8


@dataclass(frozen=True)
class Applied:
    """What a sync applied, counted: a full sync written in parts keeps no plan."""

    ops: int = 0
    added: int = 0
    changed: int = 0  # frontends that stay but whose service entry or backends change
    removed: int = 0
    frees: bool = False  # it removed backends or frontends: room was made

    @classmethod
    def of(cls, plan: Plan) -> Applied:
        if not plan:
            return cls()
        frees = any(isinstance(op, RemoveBackends | DeleteService) for op in plan.ops)
        return cls(len(plan), plan.added, plan.changed, plan.removed, frees)

    def __add__(self, other: Applied) -> Applied:
        """Of two plans with no frontend in both."""
        return Applied(
            self.ops + other.ops,
            self.added + other.added,
            self.changed + other.changed,
            self.removed + other.removed,
            self.frees or other.frees,
        )

    def __bool__(self) -> bool:
        return self.ops > 0

    def summary(self) -> str:
        return f"{self.added} added, {self.changed} changed, {self.removed} removed"


@dataclass(frozen=True)
class SyncResult:
    plan: Plan  # what was applied; empty when written in parts (see ``applied``)
    frontends: int
    seconds: float
    refused: Mapping[ServiceRef, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # Service -> why it did not fit
    applied: Applied = Applied()  # what was applied, counted


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

    def sync_in_parts(
        self,
        parts: Iterable[DesiredState],
        *,
        owner: Callable[[FrontendKey], ServiceRef | None],
        frontends: Callable[[], int],
        write_each: bool = True,
    ) -> SyncResult:
        """A full sync of a desired state given in parts with no frontend in two: each
        part planned against what the data path holds and written (less the Services
        that do not fit) before the next part is made, then the removal of every
        frontend held that no part has (``owner`` None: known once every part is);
        ``frontends`` counts the frontends desired that the data path serves.

        Only one part's plan is alive at a time: at 100,000 Services, one plan of
        everything kept ~30 MiB of operations alive while the data path's own state was
        made among them (agent RSS after a first sync 570 -> 531 MB, bench stand-in).
        Each part is ordered as a whole plan is (backends before the service entry that
        points at them), and removals still come last.

        ``write_each`` False: the parts' plans are written at once, after the last part,
        for a data path whose every write costs what it holds, not what it is given
        (the userspace proxy re-derives its whole state at each)."""
        start = self.clock()
        refused: dict[ServiceRef, str] = {}
        applied = Applied()
        held: list[Op] = []  # without write_each
        for part in parts:
            plan = diff_state(self.dataplane.current(), part, deletes=False)
            if write_each:
                applied += Applied.of(self._apply(plan, owner, refused))
            else:
                held += plan.ops
            del plan
        current = self.dataplane.current()
        if write_each and not refused and len(current) == frontends():
            gone = Plan()  # it holds every frontend desired and written: nothing else
        else:  # a look-up per frontend held (a Python hash of its address each)
            gone = diff({k: st for k, st in current.items() if owner(k) is None}, {})
        if write_each:
            applied += Applied.of(self._apply(gone, owner, refused))
            return self._result(Plan(), frontends(), start, refused, applied)
        plan = self._apply(Plan((*held, *gone.ops)), owner, refused)
        del held
        return self._result(plan, frontends(), start, refused, Applied.of(plan))

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

        refused: dict[ServiceRef, str] = {}
        plan = self._apply(plan, owner, refused)
        return self._result(plan, len(desired.entries), start, refused, Applied.of(plan))

    def _apply(
        self,
        plan: Plan,
        owner: Callable[[FrontendKey], ServiceRef | None],
        refused: dict[ServiceRef, str],
    ) -> Plan:
        """Apply `plan`, less the Services that do not fit (``owner``: each desired
        frontend's Service), adding them to ``refused``; returns what was applied.
        Raises on any other data path failure."""
        before = set(refused)
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
                plan = plan.without(self._keys_of(set(refused) - before, plan, owner))
                log.debug("refused %d Services: %s", len(refs), exc)  # the caller logs them
        else:
            raise CapacityError(
                f"the plan still does not fit after refusing {len(refused)} Services"
            )
        return plan

    def _result(
        self,
        plan: Plan,
        frontends: int,
        start: float,
        refused: dict[ServiceRef, str],
        applied: Applied,
    ) -> SyncResult:
        elapsed = self.clock() - start
        result = SyncResult(plan, frontends, elapsed, MappingProxyType(refused), applied)
        if applied:
            log.info(
                "sync: %d frontends; %s (%d ops) in %.1f ms",
                frontends,
                applied.summary(),
                applied.ops,
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
