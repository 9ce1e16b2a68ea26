"""The CLI's contract: exit codes, one-line errors, JSON keys."""

from __future__ import annotations

import json

from typer.testing import CliRunner

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
    assert {c["name"] for c in report["checks"]} >= {"privileges", "kernel", "bcc",
                                                     "kernel headers"}
    for check in report["checks"]:
        assert set(check) == {"name", "ok", "required", "detail", "fix"}
    assert report["dataplane"] in {"bpf", "userspace", "none"}
    assert result.exit_code == (0 if report["dataplane"] != "none" else 1)


def test_agent_needs_exactly_one_source(tmp_path):
    assert runner.invoke(app, ["agent"]).exit_code == 2
    both = runner.invoke(app, ["agent", "--manifests", str(tmp_path), "--kubeconfig", "x"])
    assert both.exit_code == 2


def test_agent_rejects_an_unknown_dataplane(tmp_path):
    result = runner.invoke(app, ["agent", "--manifests", str(tmp_path), "--dataplane", "dpdk"])
    assert result.exit_code == 2


def test_unavailable_source_says_so(tmp_path):
    result = runner.invoke(app, ["agent", "--kubeconfig", str(tmp_path / "kc")])
    assert result.exit_code == 1 and "not available yet" in result.output


def test_table_aligns_columns():
    assert table(["A", "BB"], [["xyz", 1], ["q", 22]]).splitlines() == [
        "A    BB", "xyz  1", "q    22"]
