"""bench.testrun on a small scale: every packet kind of both families takes its
intended path (the bench raises otherwise: verdict or counter wrong) and is timed, and
the IPv6 rows sit beside the IPv4 ones with their ratio."""

from __future__ import annotations

import pytest

from bench import testrun as bench_testrun
from bench.testrun import FAMILIES, TESTRUN_KINDS

pytestmark = pytest.mark.root


def test_both_families_timed_on_the_same_maps() -> None:
    tr = bench_testrun.testrun_cost((2,), 20)
    for rows in (tr["scales"], tr["scales6"]):
        row = rows["2"]
        assert row["frontends"] == 2 * 4 + 2  # dual-stack TCP+UDP, a drop Service per family
        for kind in TESTRUN_KINDS:
            assert row[kind]["ns_per_packet"] > 0
    assert set(tr["v6_over_v4"]["2"]) == set(TESTRUN_KINDS)
    text = bench_testrun.testrun_table(tr)
    assert all(family in text for family in FAMILIES) and "v6/v4" in text
    # the empty program's figure, printed beside the rows it is part of
    assert 0 < tr["floor_ns"] < tr["scales"]["2"]["new_flow"]["ns_per_packet"]
    assert "empty program" in text


def test_every_scale_starts_from_an_empty_conntrack_table() -> None:
    """The second scale's rows are timed on a table emptied of the first one's flows
    (else its new flows would meet a fuller table, and differ by more than Services)."""
    tr = bench_testrun.testrun_cost((2, 3), 20)
    for rows in (tr["scales"], tr["scales6"]):
        assert [rows[n]["conntrack_at_start"] for n in ("2", "3")] == [0, 0]


def test_the_issue_baseline_is_timed_beside_todays_program() -> None:
    """bench.testrun_baseline exports the issue's tree from git and times it and today's
    program alternately: each side's every kind is a real figure (each tree's bench
    raises when a packet took the wrong path), and the ratios are today's over it."""
    from bench import testrun_baseline as tb

    result = tb.compare(tb.BASELINE_REV, rounds=2, count=20)
    for side in ("baseline", "current"):
        assert len(result["runs"][side]) == 2
        assert all(result["medians"][side][k] > 0 for k in tb.KINDS)
    for k in tb.KINDS:
        assert result["ratios"][k] == round(
            result["medians"]["current"][k] / result["medians"]["baseline"][k], 3
        )
    text = tb.table(result)
    assert "new_flow" in text and "ct_hit" in text and "target" in text


def test_an_unknown_baseline_revision_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    from bench import testrun_baseline as tb

    with pytest.raises(RuntimeError, match="not in"):
        tb.export_tree("0" * 40, Path(str(tmp_path)))


def test_the_cold_bucket_bench_times_every_layout_against_the_empty_program() -> None:
    """bench.ctmemory: each variant is a figure of its own, the extras and ratios are
    computed from them, and the small arrays really are outside vmalloc (else its
    "direct map" row would time 4 KiB pages again)."""
    from bench import ctmemory

    result = ctmemory.measure(rounds=2, count=50)
    ns, extra = result["ns_per_run"], result["ns_over_empty"]
    assert set(ns) == set(ctmemory.VARIANTS) and all(v > 0 for v in ns.values())
    for variant in ("array", "direct", "overlap"):
        assert extra[variant] == ns[variant] - ns["empty"]
        assert result["ratio_to_array"][variant] == round(
            extra[variant] / max(1.0, extra["array"]), 2
        )
    assert result["direct_arrays_kmalloced"] is True
