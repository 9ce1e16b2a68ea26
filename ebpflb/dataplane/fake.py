"""An in-memory data path with the reference semantics of a plan (sync.plan.apply_to),
for tests of the sync and the agent that need neither root nor BPF."""

from __future__ import annotations

from ebpflb.sync.plan import FrontendKey, FrontendState, Plan, apply_to


class FakeDataplane:
    name = "fake"

    def __init__(self) -> None:
        self.state: dict[FrontendKey, FrontendState] = {}
        self.applied: list[Plan] = []
        self.closed = False
        self.fail_next: Exception | None = None

    def current(self) -> dict[FrontendKey, FrontendState]:
        return dict(self.state)

    def apply(self, plan: Plan) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.state = apply_to(self.state, plan)
        self.applied.append(plan)

    def housekeeping(self) -> None:
        pass

    def close(self, *, cleanup: bool = False) -> None:
        self.closed = True
        if cleanup:
            self.state = {}
