"""Fixtures for the lab tests: every lab built here has a unique name and is torn
down in the fixture's finalizer, with an atexit fallback for an interrupted run."""

from __future__ import annotations

import atexit
import functools
import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from ebpflb.errors import LabError
from ebpflb.lab import build, layout


@pytest.fixture(scope="session", autouse=True)
def _no_stale_default_status() -> Iterator[None]:
    """Agents that the tests start without --state-dir publish to the default one, and
    one killed (SIGKILL tests) leaves its status behind, naming pins the test removed:
    `ebpflb services` on this machine would then point at them. Remove what this
    session's agents left there (written since it began, by a process now gone)."""
    import json
    import time

    from ebpflb.agent.status import status_path
    from ebpflb.statefile import DEFAULT_STATE_DIR

    began = time.time()
    yield
    path = status_path(DEFAULT_STATE_DIR)
    try:
        with open(path) as f:
            data = json.load(f)
        pid, written = int(data["pid"]), float(data["written_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if written >= began and not os.path.exists(f"/proc/{pid}"):
        os.unlink(path)


def unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)[:5]


def _require_root() -> None:
    """A guard for fixtures that build labs: tests/conftest.py already stops a run whose
    root tests cannot run, so this only fails a test that needs root unmarked."""
    if os.geteuid() != 0:
        pytest.fail("needs root: creates network namespaces; mark the test `root`")


def _down_quietly(name: str) -> None:
    try:
        build.down(name)
    except LabError as exc:  # pragma: no cover - reported, not raised, at exit
        print(f"lab {name} teardown failed: {exc}")


@pytest.fixture(scope="session")
def lab() -> Iterator[layout.Lab]:
    """A three-pod lab shared by the session."""
    name = unique_lab_name()
    fallback = functools.partial(_down_quietly, name)
    atexit.register(fallback)
    try:
        yield build.up(layout.LabSpec(name, pods=3))
    finally:
        build.down(name)
        atexit.unregister(fallback)


@pytest.fixture
def lab_names() -> Iterator[Callable[[], str]]:
    """Hands out unique lab names; every lab built under one is removed afterwards."""
    fallbacks: list[Callable[[], None]] = []

    def make() -> str:
        name = unique_lab_name()
        fallbacks.append(functools.partial(_down_quietly, name))
        atexit.register(fallbacks[-1])
        return name

    yield make
    for fallback in fallbacks:
        fallback()
        atexit.unregister(fallback)


def kernel_counters(pin_dir: str) -> dict[str, int]:
    """`ebpflb stats --json`'s global counters of the kernel path pinned at pin_dir."""
    import json

    from typer.testing import CliRunner

    from ebpflb.cli import app

    out = CliRunner().invoke(app, ["stats", "--json", "--pin-dir", pin_dir])
    assert out.exit_code == 0, out.output
    counters: dict[str, int] = json.loads(out.output)["counters"]
    return counters


# Every node shape a user's cluster may have (ebpflb.lab.podnet): Service-feature lab
# tests run on each.
CNIS = ["routed", "bridge"]
