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
