"""`ebpflb diff` against real pinned maps: prints the plan, touches nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.plan import desired_frontends
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate
from ebpflb.sync.diff import diff

from .conftest import MAX_BACKENDS, MAX_SERVICES, Maps

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_diff_reports_the_change_and_leaves_the_maps_alone(
    maps: Maps, pin_dir: str, tmp_path: Path
):
    snap = ManifestSource(EXAMPLES).load()
    state = translate(snap.services, snap.slices).state
    with BpfMaps(pin_dir) as bmaps:
        writer = MapWriter(bmaps, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS)
        writer.apply(diff({}, desired_frontends(state)))
        before = read_state(bmaps).frontends

    same = CliRunner().invoke(
        app, ["diff", "--manifests", str(EXAMPLES), "--pin-dir", pin_dir, "--json", "--exit-code"]
    )
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["ops"] == []

    changed = tmp_path / "m"
    shutil.copytree(EXAMPLES, changed)
    web = changed / "web.yaml"
    web.write_text(web.read_text().replace("10.244.0.13", "10.244.0.99"))
    result = CliRunner().invoke(
        app, ["diff", "--manifests", str(changed), "--pin-dir", pin_dir, "--json", "--exit-code"]
    )
    assert result.exit_code == 1, result.output
    plan = json.loads(result.stdout)
    assert (plan["added"], plan["changed"], plan["removed"]) == (0, 2, 0)
    ops = {(o["op"], o["frontend"]) for o in plan["ops"]}
    assert ("remove_backends", "10.96.0.10:80/TCP") in ops
    assert ("upsert_backends", "10.96.0.10:53/UDP") in ops
    with BpfMaps(pin_dir) as bmaps:
        assert read_state(bmaps).frontends == before  # a dry run
