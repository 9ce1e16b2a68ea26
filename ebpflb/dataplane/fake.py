"""An in-memory data path with the reference semantics of a plan (plan.apply_to),
for tests of the sync and the agent that need neither root nor BPF. Optional capacities
refuse a plan whole, before applying anything, as the bpf map writer does."""

from __future__ import annotations

from ebpflb.dataplane.telemetry import TableFill, Telemetry
from ebpflb.errors import CapacityError
from ebpflb.model import Frontend, FrontendKey, Protocol
from ebpflb.plan import FrontendState, Plan, UpsertBackends, WriteService, apply_to


class FakeDataplane:
    name = "fake"
    applies_in_parts = False  # each read copies everything held

    def __init__(
        self,
        *,
        max_frontends: int | None = None,
        max_backends: int | None = None,
        protocols: frozenset[Protocol] = frozenset(Protocol),
    ) -> None:
        self.protocols = protocols
        self.reloads = 0
        self.state: dict[FrontendKey, FrontendState] = {}
        self.applied: list[Plan] = []
        self.closed = False
        self.fail_next: Exception | None = None
        self.max_frontends = max_frontends
        self.max_backends = max_backends
        self.counters: dict[str, int] = {}  # what telemetry() reports
        self.tables: list[TableFill] = []

    def current(self) -> dict[FrontendKey, FrontendState]:
        return dict(self.state)

    def apply(self, plan: Plan) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self._check_capacity(plan)
        self.state = apply_to(self.state, plan)
        self.applied.append(plan)

    def _check_capacity(self, plan: Plan) -> None:
        """Like the map writer: count what the plan adds before its removals (which come
        last), in one pass, and name every frontend that does not fit."""
        frontends = len(self.state)
        backends = sum(len(st.backends) for st in self.state.values())
        over: list[Frontend] = []
        for op in plan.ops:
            if isinstance(op, WriteService) and op.state.frontend.key not in self.state:
                if self.max_frontends is not None and frontends + 1 > self.max_frontends:
                    over.append(op.state.frontend)
                else:
                    frontends += 1
            elif isinstance(op, UpsertBackends):
                held = self.state.get(op.frontend.key)
                have = {b.key for b in held.backends} if held is not None else set()
                new = sum(1 for b in op.backends if b.key not in have)
                if self.max_backends is not None and backends + new > self.max_backends:
                    over.append(op.frontend)
                else:
                    backends += new
        if over:
            raise CapacityError(
                f"full: cannot add {over[0]} (and {len(over) - 1} more)",
                frontend=over[0],
                frontends=tuple(dict.fromkeys(over)),
            )

    def telemetry(self) -> Telemetry:
        """What a test set in ``counters`` and ``tables``; conntrack entries = 0."""
        return Telemetry(dict(self.counters), tuple(self.tables))

    def reload(self) -> None:
        """The state is the truth already (a test may have changed it behind our back)."""
        self.reloads += 1

    def housekeeping(self) -> None:
        pass

    def close(self, *, cleanup: bool = False) -> None:
        self.closed = True
        if cleanup:
            self.state = {}
