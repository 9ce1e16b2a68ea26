"""The "drops" key of `ebpflb stats`: every reason of bpf/lib/drop_reasons.h, in its
order, on both data paths; the userspace path counts its own refusals there."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.telemetry import DROP_REASONS
from ebpflb.dataplane.userspace import state
from ebpflb.dataplane.userspace.proxy import COUNTERS, drops_of
from ebpflb.dataplane.view import ServiceStats, StatsView
from ebpflb.model import Frontend, FrontendKind, Protocol

ZEROS = dict.fromkeys(DROP_REASONS, 0)


def test_reasons_mirror_drop_reasons_h() -> None:
    by_code = sorted(abi.DropReason, key=lambda r: -r.value)
    assert [r.name.lower() for r in by_code] == list(DROP_REASONS)
    assert [-r.value for r in by_code] == list(range(1, len(DROP_REASONS) + 1))


def test_every_reason_is_present_whatever_was_counted() -> None:
    assert StatsView(()).as_json()["drops"] == ZEROS
    view = StatsView((), {"new_flow": 3}, {"source_range": 2})
    assert view.as_json() == {
        "services": [],
        "counters": {"new_flow": 3},
        "drops": ZEROS | {"source_range": 2},
    }
    assert list(view.as_json()["drops"]) == list(DROP_REASONS)  # type: ignore[call-overload]


def test_userspace_drops_are_its_refusals() -> None:
    counters = dict.fromkeys(COUNTERS, 0) | {
        "no_backend": 4,
        "source_range_drop": 1,
        "backend_missing": 9,
        "ct_full": 2,
    }
    # a failed connect tries the next backend and an evicted session makes room: no drop
    assert drops_of(counters) == {"no_backend": 4, "source_range": 1}


def test_stats_json_of_the_userspace_path_has_the_drops_key(tmp_path: Path) -> None:
    fe = Frontend(ipaddress.ip_address("10.96.0.10"), 80, Protocol.TCP, FrontendKind.CLUSTER_IP)
    counters = dict.fromkeys(COUNTERS, 0) | {"no_backend": 4}
    stats = StatsView((ServiceStats(3, fe, None, 1, 2, 3, 4),), counters, drops_of(counters))
    sd = tmp_path / "state"
    state.write_state(str(sd), state.snapshot([], [], [], stats))
    args = ["--pin-dir", str(tmp_path / "nopins"), "--state-dir", str(sd)]
    result = CliRunner().invoke(app, ["stats", "--json", *args])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out) == ["services", "counters", "drops"]
    assert out["counters"] == dict(sorted(counters.items()))  # unchanged beside it
    assert out["drops"] == ZEROS | {"no_backend": 4}
    result = CliRunner().invoke(app, ["stats", *args])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["DROP", "REASON", "COUNT"] in rows and ["no_backend", "4"] in rows
