"""The CLI's contract: exit codes, one-line errors, JSON keys."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from ebpflb.agent.status import AgentStatus, write_status
from ebpflb.cli import app
from ebpflb.cli.render import table

runner = CliRunner()


def test_inspection_without_pins_is_one_line_and_exit_1(tmp_path):
    for cmd in ("services", "backends", "conntrack", "stats"):
        result = runner.invoke(app, [cmd, "--pin-dir", str(tmp_path)])
        assert result.exit_code == 1, (cmd, result.output)
        lines = [x for x in result.output.splitlines() if x]
        assert len(lines) == 1 and lines[0].startswith("error: no ebpflb maps pinned under")


def test_doctor_json_has_stable_keys():
    result = runner.invoke(app, ["doctor", "--json"])
    report = json.loads(result.output)
    assert set(report) == {"dataplane", "reason", "checks"}
    assert {c["name"] for c in report["checks"]} >= {
        "privileges",
        "kernel",
        "bcc",
        "kernel headers",
    }
    for check in report["checks"]:  # socket_lb adds the cgroup2 it would use, its links
        extra = {"cgroup2", "pinned_links"} if check["name"] == "socket_lb" else set()
        assert set(check) == {"name", "ok", "required", "detail", "fix"} | extra
    socket_lb = next(c for c in report["checks"] if c["name"] == "socket_lb")
    assert set(socket_lb["cgroup2"]) == {"path", "mount", "visible"}
    assert report["dataplane"] in {"bpf", "userspace", "none"}
    assert result.exit_code == (0 if report["dataplane"] != "none" else 1)


def test_agent_needs_exactly_one_source(tmp_path):
    outside_a_pod = {"KUBERNETES_SERVICE_HOST": ""}
    assert runner.invoke(app, ["agent"], env=outside_a_pod).exit_code == 2
    both = runner.invoke(app, ["agent", "--manifests", str(tmp_path), "--kubeconfig", "x"])
    assert both.exit_code == 2


def test_agent_rejects_an_unknown_dataplane(tmp_path):
    result = runner.invoke(app, ["agent", "--manifests", str(tmp_path), "--dataplane", "dpdk"])
    assert result.exit_code == 2


def test_unreadable_kubeconfig_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "kc"
    result = runner.invoke(app, ["agent", "--kubeconfig", str(missing)])
    lines = [x for x in result.output.splitlines() if x]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot load kubeconfig {missing}")


STATUS_KEYS = {
    "version",
    "written_at",
    "pid",
    "source",
    "dataplane",
    "synced",
    "stale",
    "stale_seconds",
    "syncs",
    "full_syncs",
    "last_sync_at",
    "last_sync_seconds",
    "last_full_sync_seconds",
    "frontends",
    "backends",
    "refused",
    "skipped",
    "unbalanced",
    "running",
    "age",
    "nodeport_addresses",
    "nodeport_address_source",
    "nodeport_address_reason",
    "nodeport_addresses_filter",
    "pin_dir",
}


def _status(pid: int, **overrides: object) -> AgentStatus:
    fields: dict[str, object] = dict(
        pid=pid,
        source="kubernetes",
        dataplane="bpf",
        synced=True,
        stale=False,
        stale_seconds=None,
        syncs=3,
        full_syncs=1,
        last_sync_at=1.0,
        last_sync_seconds=0.002,
        last_full_sync_seconds=0.4,
        frontends=2,
        backends=6,
    )
    fields.update(overrides)
    return AgentStatus(**fields)  # type: ignore[arg-type]


def test_status_of_a_running_agent(tmp_path):
    write_status(
        str(tmp_path),
        _status(
            os.getpid(), stale=True, stale_seconds=12.0, refused={"demo/big": "backend map full"}
        ),
    )
    result = runner.invoke(app, ["status", "--json", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == STATUS_KEYS
    assert data["running"] and data["stale"] and data["refused"] == {"demo/big": "backend map full"}
    text = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert text.exit_code == 0
    assert "STALE for 12s" in text.output and "demo/big: backend map full" in text.output


def test_status_of_a_dead_agent_or_none_exits_1(tmp_path):
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: no agent status under")
    write_status(str(tmp_path), _status(2**22 + 1))  # above the largest pid_max: never alive
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1 and "not running" in result.output


def test_table_aligns_columns():
    assert table(["A", "BB"], [["xyz", 1], ["q", 22]]).splitlines() == [
        "A    BB",
        "xyz  1",
        "q    22",
    ]


def test_status_of_an_agent_whose_source_never_answered(tmp_path):
    write_status(
        str(tmp_path),
        _status(os.getpid(), synced=False, stale=True, stale_seconds=7.0, syncs=0, full_syncs=0),
    )
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "starting" in result.output and "unreachable for 7s" in result.output


def test_doctor_says_which_cgroup2_socket_lb_would_use(monkeypatch, tmp_path):
    from ebpflb import doctor
    from ebpflb.dataplane.bpf import cgroup

    # As root first (CAP_SYS_ADMIN, which a mount needs), whoever runs the test.
    monkeypatch.setattr(doctor, "_effective_caps", lambda: 1 << doctor.CAP_SYS_ADMIN)
    here = cgroup.choose_cgroup2(str(tmp_path))
    ok = doctor.check_socket_lb(str(tmp_path))
    assert ok.name == "socket_lb" and not ok.required and ok.ok
    assert ok.as_json()["cgroup2"] == here.as_json()
    assert here.path in ok.detail

    monkeypatch.setattr(
        cgroup,
        "read_mountinfo",
        lambda path=cgroup.MOUNTINFO: "1 0 0:1 / / rw - ext4 /dev/vda rw\n",
    )
    missing = doctor.check_socket_lb(str(tmp_path))
    own = str(tmp_path / "cgroupv2")
    assert missing.ok and f"would mount one at {own}" in missing.detail
    assert missing.as_json()["cgroup2"] == {"path": own, "mount": True, "visible": None}

    monkeypatch.setattr(doctor, "_effective_caps", lambda: 0)
    unprivileged = doctor.check_socket_lb(str(tmp_path))
    assert not unprivileged.ok and f"mount -t cgroup2 none {own}" in unprivileged.fix
    result = runner.invoke(app, ["doctor", "--json", "--state-dir", str(tmp_path)])
    socket_lb = next(c for c in json.loads(result.output)["checks"] if c["name"] == "socket_lb")
    assert socket_lb["cgroup2"]["path"] == own and not socket_lb["ok"]


def test_an_error_is_one_line_with_its_own_fix():
    from ebpflb.cli.errors import one_line
    from ebpflb.errors import EbpflbError, MapGeometryError

    assert one_line(MapGeometryError("maps differ\nsecond line")) == (
        f"error: maps differ second line; fix: {MapGeometryError.fix}"
    )
    said = EbpflbError("no room; raise --max-services", fix="raise --max-services")
    assert one_line(said) == "error: no room; raise --max-services"
    assert one_line(EbpflbError("plain")) == "error: plain"


def test_doctor_says_the_userspace_path_needs_nft():
    from ebpflb.doctor import check_userspace

    check = check_userspace(nft="")
    assert not check.ok and "nftables" in check.fix and not check.required
