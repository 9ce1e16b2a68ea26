"""The data path's read-back is frozen once the data path is open: the first young
collection afterwards must not walk (and promote) every state it built."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from ebpflb.agent import run
from ebpflb.agent.config import RunConfig
from ebpflb.dataplane import choose

BUILT = 20_000


class _HeldDataplane:
    name = "fake"

    def __init__(self) -> None:
        # as a read-back builds them: tracked containers, made with collections off
        self.states = [{"frontend": i, "backends": [i, i + 1]} for i in range(BUILT)]
        self.enabled_while_built = gc.isenabled()


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_open_dataplane_held_freezes_the_read_back(
    monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    def fake_open(mode: str, **_kwargs: Any) -> _HeldDataplane:
        assert mode == "userspace"
        return _HeldDataplane()

    monkeypatch.setattr(choose, "open_dataplane", fake_open)
    before = gc.get_freeze_count()
    dp: Any = run.open_dataplane_held(RunConfig(dataplane="userspace", manifests="/nonexistent"))
    assert isinstance(dp, _HeldDataplane)
    assert not dp.enabled_while_built
    # every state and its list went to the permanent generation: 2 per frontend
    assert gc.get_freeze_count() >= before + 2 * BUILT
    young = gc.get_objects(generation=0)
    assert not any(obj is dp.states[0] for obj in young)
    assert gc.isenabled()
