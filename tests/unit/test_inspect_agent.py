"""An inspection command shows one agent's state and says which: --pin-dir alone does
not mix in the rows of whatever agent published its status under the default
--state-dir, and --state-dir of a userspace agent shows that agent, not pins found at
the default --pin-dir. BpfInspector is a stand-in: no pins are needed to choose."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.cli import inspect as cli_inspect
from ebpflb.dataplane.bpf import inspect as bpf_inspect
from ebpflb.dataplane.userspace import state
from ebpflb.dataplane.view import ServiceView, StatsView
from ebpflb.model import Frontend, Protocol, ServicePortName, ServiceRef
from ebpflb.statefile import write_json_atomic


def _view(name: str, ip: str) -> ServiceView:
    fe = Frontend(ipaddress.ip_address(ip), 80, Protocol.TCP)
    return ServiceView(1, fe, ServicePortName(ServiceRef("demo", name), "http", Protocol.TCP), 1, 1)


class _Pins:
    """The maps of one pin dir: a Service named after it."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir

    def __enter__(self) -> _Pins:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def services(self) -> list[ServiceView]:
        return [_view(f"pins-{os.path.basename(self.pin_dir)}", "10.96.0.1")]


def _status(state_dir: Path, dataplane: str, unbalanced: str) -> None:
    import time

    write_json_atomic(
        str(state_dir / "agent.json"),
        {
            "version": 1,
            "pid": os.getpid(),
            "written_at": time.time(),
            "dataplane": dataplane,
            "unbalanced": [
                {"service": f"demo/{unbalanced}", "kind": "headless", "address": "None"}
            ],
        },
    )


@pytest.fixture
def agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setattr(bpf_inspect, "BpfInspector", _Pins)
    default_state, user_state = tmp_path / "run-ebpflb", tmp_path / "user"
    default_state.mkdir()
    user_state.mkdir()
    _status(default_state, "bpf", "of-the-default-agent")  # a bpf agent on the defaults
    _status(user_state, "userspace", "of-the-userspace-agent")
    state.write_state(
        str(user_state),
        state.snapshot([_view("userspace-svc", "10.96.0.2")], [], [], StatsView(())),
    )
    monkeypatch.setattr(cli_inspect, "DEFAULT_STATE_DIR", str(default_state))
    monkeypatch.setattr(cli_inspect, "DEFAULT_PIN_DIR", str(tmp_path / "default-pins"))
    return {"default": default_state, "user": user_state, "root": tmp_path}


def _services(*args: str) -> tuple[set[str], str]:
    result = CliRunner().invoke(app, ["services", "--json", *args])
    assert result.exit_code == 0, result.output
    import json

    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return {r["service"] for r in rows}, result.stderr


def test_pin_dir_alone_shows_those_maps_and_no_other_agents_rows(agents: dict[str, Path]):
    rows, _ = _services("--pin-dir", str(agents["root"] / "other"))
    assert rows == {"demo/pins-other"}


def test_state_dir_of_a_userspace_agent_shows_that_agent(agents: dict[str, Path]):
    rows, _ = _services("--state-dir", str(agents["user"]))
    assert rows == {"demo/userspace-svc", "demo/of-the-userspace-agent"}


def test_the_defaults_show_the_default_agent(agents: dict[str, Path]):
    rows, _ = _services()
    assert rows == {"demo/pins-default-pins", "demo/of-the-default-agent"}


def test_the_table_says_which_agent(agents: dict[str, Path]):
    result = CliRunner().invoke(app, ["services", "--state-dir", str(agents["user"])])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"# the userspace agent of {agents['user']}"]


def test_state_dir_of_a_bpf_agent_finds_its_own_pin_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A bpf agent run with another --pin-dir publishes it; --state-dir alone then reads
    those pins, not the default ones."""
    from ebpflb.agent.config import AgentConfig
    from ebpflb.agent.runner import Agent
    from ebpflb.dataplane.fake import FakeDataplane
    from ebpflb.sources.manifests import ManifestSource

    monkeypatch.setattr(bpf_inspect, "BpfInspector", _Pins)
    monkeypatch.setattr(cli_inspect, "DEFAULT_PIN_DIR", str(tmp_path / "default-pins"))
    (tmp_path / "m").mkdir()
    state_dir = tmp_path / "state"
    dp = FakeDataplane()
    dp.name = "bpf"
    Agent(
        ManifestSource(tmp_path / "m"),
        dp,
        AgentConfig(state_dir=str(state_dir), pin_dir=str(tmp_path / "its-pins")),
    ).step()
    shown, _ = _services("--state-dir", str(state_dir))
    assert shown == {"demo/pins-its-pins"}
