"""`ebpflb_drops_total{reason}` on /metrics: the "drops" of `ebpflb stats --json`."""

from __future__ import annotations

from ebpflb.dataplane.telemetry import DROP_REASONS


def test_metrics_export_the_drops_by_reason() -> None:
    from ebpflb.agent.metrics import telemetry_metrics
    from ebpflb.dataplane.telemetry import Telemetry

    fams = {
        m.name: m for m in telemetry_metrics(Telemetry({"no_backend": 5}, drops={"no_backend": 2}))
    }
    samples = {(s.name, s.labels["reason"]): s.value for s in fams["ebpflb_drops"].samples}
    assert samples == {
        ("ebpflb_drops_total", r): (2 if r == "no_backend" else 0) for r in DROP_REASONS
    }
    # the counter of the same name keeps its own series and value
    (old,) = fams["ebpflb_datapath_drops"].samples
    assert (old.labels, old.value) == ({"reason": "no_backend"}, 5)
