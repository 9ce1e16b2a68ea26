"""An edit that makes a live manifest object invalid keeps its last good version (as
the API server would have refused the edit), on the agent with the fake data path."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest

from ebpflb.agent.config import AgentConfig
from ebpflb.agent.runner import Agent
from ebpflb.agent.status import read_status
from ebpflb.dataplane.fake import FakeDataplane
from ebpflb.sources.lastgood import KEPT, LastGood, problems
from ebpflb.sources.manifests import ManifestSource

SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: {port}, targetPort: 8080}}]
"""

SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"""

GOOD_IP = "10.96.0.10"
NOTHING = "0 added, 0 changed, 0 removed (0 operations)\n"


def put(path: Path, text: str) -> None:
    """Replace a file atomically, as writers should (a new inode: always noticed)."""
    tmp = path.with_name("." + path.name)
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


def put_service(d: Path, *, ip: str = GOOD_IP, port: object = 80) -> None:
    put(d / "web.yaml", SERVICE.format(ip=ip, port=port))


def put_slice(d: Path, addresses: list[str]) -> None:
    eps = "\n".join(f"  - addresses: [{a!r}]" for a in addresses)
    put(d / "web-slice.yaml", SLICE.format(endpoints=eps))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, d: Path) -> None:
        self.dp = FakeDataplane()
        self.clock = Clock()
        self.state_dir = d.parent / "state"
        self.agent = Agent(
            ManifestSource(d),
            self.dp,
            AgentConfig(min_sync_interval=1.0, state_dir=str(self.state_dir)),
            clock=self.clock,
        )

    def step(self) -> None:
        self.clock.t += 1.0
        self.agent.step()

    def served(self) -> dict[str, list[str]]:
        return {f"{k[0]}:{k[1]}": [str(a) for a, _ in v.slots] for k, v in self.dp.state.items()}

    def skipped(self) -> int:
        count: int = read_status(str(self.state_dir))["skipped"]
        return count


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    d = tmp_path / "m"
    d.mkdir()
    put_service(d)
    put_slice(d, ["10.244.0.11", "10.244.0.12"])
    r = Rig(d)
    r.step()
    assert r.served() == {"10.96.0.10:80": ["10.244.0.11", "10.244.0.12"]}
    return r


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"ip": "10.96.0.1O"}, "spec.clusterIP '10.96.0.1O' is not an IP address"),
        ({"port": 80000}, "spec.ports[0]: port 80000 is out of range 1-65535"),
    ],
)
def test_an_invalid_edit_keeps_the_live_service_until_fixed_or_removed(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture, edit: dict[str, object], field: str
) -> None:
    d = tmp_path / "m"
    caplog.set_level(logging.INFO)
    put_service(d, **edit)  # type: ignore[arg-type]
    rig.step()
    rig.step()  # a second sync does not log it again
    assert rig.served() == {"10.96.0.10:80": ["10.244.0.11", "10.244.0.12"]}
    lines = [w for w in warnings(caplog) if "demo/web" in w]
    assert len(lines) == 1, warnings(caplog)
    assert field in lines[0] and KEPT in lines[0] and "web.yaml" in lines[0]
    assert rig.skipped() == 1

    put_service(d, ip="10.96.0.20", port=81)  # fixed, and a real change
    rig.step()
    assert rig.served() == {"10.96.0.20:81": ["10.244.0.11", "10.244.0.12"]}
    assert rig.skipped() == 0

    (d / "web.yaml").unlink()
    rig.step()
    assert rig.served() == {}


def test_an_invalid_endpoint_address_keeps_the_last_good_backends(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "m"
    put_slice(d, ["10.244.0.11", "10.244.0.1two"])
    rig.step()
    assert rig.served() == {"10.96.0.10:80": ["10.244.0.11", "10.244.0.12"]}
    lines = [w for w in warnings(caplog) if "demo/web-1" in w]
    assert len(lines) == 1 and "'10.244.0.1two' is not an IP address" in lines[0], lines
    put_slice(d, ["10.244.0.13"])
    rig.step()
    assert rig.served() == {"10.96.0.10:80": ["10.244.0.13"]}


def test_a_second_bad_edit_still_keeps_the_first_good_version(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "m"
    put_service(d, port=80000)
    rig.step()
    put_service(d, ip="10.96.0.1O", port=81)
    rig.step()
    assert rig.served() == {"10.96.0.10:80": ["10.244.0.11", "10.244.0.12"]}
    assert any("10.96.0.1O" in w and KEPT in w for w in warnings(caplog))


def test_a_brand_new_invalid_service_is_skipped_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    put_service(d, ip="10.96.0.1O")
    r = Rig(d)
    r.step()
    assert r.served() == {}
    lines = [w for w in warnings(caplog) if "demo/web" in w]
    assert len(lines) == 1 and "Service skipped" in lines[0], lines
    put_service(d)  # fixed
    r.step()
    assert list(r.served()) == ["10.96.0.10:80"]


def test_last_good_rechecks_only_new_versions_and_serves_a_revert() -> None:
    """Unit level: identity decides what is re-checked; a revert is served as written."""
    good = {
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"clusterIP": GOOD_IP, "ports": [{"port": 80}]},
    }
    bad = {**good, "spec": {"clusterIP": GOOD_IP, "ports": [{"port": 0}]}}
    key = ("Service", "demo", "web")
    lg = LastGood()
    assert lg.choose(key, good) == (good, None)
    served, why = lg.choose(key, bad)
    assert served is good and why is not None and "port 0 is out of range" in why
    assert lg.choose(key, bad) == (good, why)  # the same dict: the same answer
    revert = {**good}
    assert lg.choose(key, revert) == (revert, None)
    lg.forget_except([])
    assert lg.choose(key, bad) == (bad, None)  # brand new again: passed on as written


def test_problems_names_the_field_without_the_consequence() -> None:
    svc = {
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.96.0.1O", "ports": [{"port": 80}]},
    }
    assert problems(svc) == ("spec.clusterIP '10.96.0.1O' is not an IP address",)
    assert problems({"kind": "Node", "metadata": {"name": "n1"}}) == ()


class _Maps:
    """Stands in for the pinned maps in `ebpflb diff`: holds what the agent serves."""

    def __init__(self, _pin_dir: str) -> None: ...

    def __enter__(self) -> _Maps:
        return self

    def __exit__(self, *exc: object) -> None: ...


def test_diff_shows_the_last_good_version_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from ebpflb.cli import app
    from ebpflb.dataplane.bpf import maps
    from ebpflb.plan import desired_frontends
    from ebpflb.sources.translate import translate

    d = tmp_path / "m"
    d.mkdir()
    put_service(d)
    put_slice(d, ["10.244.0.11"])
    snap = ManifestSource(d).load()
    served = desired_frontends(translate(snap.services, snap.slices).state)
    monkeypatch.setattr(maps, "pins_present", lambda _pin_dir: True)
    monkeypatch.setattr(maps, "BpfMaps", _Maps)
    monkeypatch.setattr(maps, "read_state", lambda _maps: SimpleNamespace(frontends=served))

    def diff() -> tuple[int, str, str]:
        out = CliRunner().invoke(app, ["diff", "--manifests", str(d), "--exit-code"])
        return out.exit_code, out.stdout, out.stderr

    assert diff() == (0, NOTHING, "")
    put_service(d, ip="10.96.0.1O")
    put_slice(d, ["10.244.0.1two"])
    code, out, err = diff()
    assert (code, out) == (2, NOTHING)
    assert err.count("skipped:") == 2, err
    assert (
        f"skipped: Service demo/web: spec.clusterIP '10.96.0.1O' is not an IP address; {KEPT}"
    ) in err
    assert "EndpointSlice demo/web-1: endpoints[0]: address '10.244.0.1two'" in err
    put_service(d, port=81)  # valid edits: planned as usual
    put_slice(d, ["10.244.0.12"])
    code, out, _ = diff()
    assert (code, out.splitlines()[-1]) == (1, "1 added, 0 changed, 1 removed (3 operations)")


def test_a_restarted_agent_keeps_the_version_it_held(tmp_path: Path) -> None:
    """The typo is still in the directory when the agent restarts: the new agent serves
    the version the old one held (read from the store under its state dir), not the
    typo taken as a new object (which would remove the Service). Fixing the file
    applies it and empties the store."""
    d = tmp_path / "m"
    d.mkdir()
    put_service(d)
    put_slice(d, ["10.244.0.11"])
    store = str(tmp_path / "state" / "last-good.json")

    clock = Clock()

    def agent() -> tuple[Agent, FakeDataplane]:
        dp = FakeDataplane()
        source = ManifestSource(d, last_good_store=store)
        return Agent(source, dp, AgentConfig(min_sync_interval=1.0), clock=clock), dp

    def step(a: Agent) -> None:
        clock.t += 1.0
        a.step()

    first, _ = agent()
    step(first)
    put_service(d, ip="10.96.0.1O")
    step(first)
    assert os.path.exists(store)
    first.close()

    second, dp = agent()  # a restart: the maps are read back empty here
    step(second)
    assert [str(k[0]) for k in dp.state] == [GOOD_IP]
    assert second.status().skipped == 1
    put_service(d, ip="10.96.0.20")
    step(second)
    assert [str(k[0]) for k in dp.state] == ["10.96.0.20"]
    assert not os.path.exists(store)


def test_without_a_store_a_restart_takes_the_typo_for_a_new_object(tmp_path: Path) -> None:
    """What the store is for: the same restart without one loses the Service."""
    d = tmp_path / "m"
    d.mkdir()
    put_service(d, ip="10.96.0.1O")
    put_slice(d, ["10.244.0.11"])
    dp = FakeDataplane()
    Agent(ManifestSource(d), dp, AgentConfig()).step()
    assert dp.state == {}
