"""ebpflb.lab.checks judged without a lab: how probe output becomes a verdict, and which
checks run where (the cluster-only ones never run on the netns lab)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ebpflb.lab import checks

SUBJECT = checks.Subject(
    service="demo/echo",
    nodes=("node-1",),
    node_addresses={"node-1": "192.168.50.1"},
    cluster_ip="10.96.7.10",
    tcp_port=80,
    udp_port=53,
    node_port=30777,
    lb_ip="192.168.60.20",
    backends=frozenset({"pod-1", "pod-2", "pod-3", "pod-4"}),
    dns_name="echo.demo.svc",
)


def _probe(
    answers: dict[str, int],
    *,
    errors: Sequence[str] = (),
    count: int | None = None,
    sources: Sequence[str] = (),
) -> checks.Result:
    n = count if count is not None else sum(answers.values()) + len(errors)
    return checks.Result(
        0,
        json.dumps(
            {
                "count": n,
                "answers": answers,
                "errors": list(errors),
                "sources": list(sources),
                "addresses": [],
            }
        ),
    )


@pytest.mark.parametrize(
    ("result", "source", "ok", "why"),
    [
        (_probe({"pod-1": 10, "pod-3": 10}), None, True, "answered"),
        (_probe({"pod-1": 20}), None, False, "no balancing"),
        (_probe({"pod-1": 3}), None, True, "answered"),  # 3 requests: one backend is likely
        (_probe({"pod-1": 9, "pod-9": 1}), None, False, "not backends"),
        (_probe({"pod-1": 9}, errors=["TimeoutError: timed out"]), None, False, "1 failed"),
        (
            _probe({"pod-1": 10, "pod-2": 10}, sources=["10.244.0.11:9090"]),
            "10.96.7.10:53",
            False,
            "replies from",
        ),
        (
            _probe({"pod-1": 10, "pod-2": 10}, sources=["10.96.7.10:53"]),
            "10.96.7.10:53",
            True,
            "answered",
        ),
        (checks.Result(1, "", "exec failed"), None, False, "probe failed"),
        (checks.Result(0, "garbage"), None, False, "probe failed"),
    ],
)
def test_judge_spread(result: checks.Result, source: str | None, ok: bool, why: str) -> None:
    verdict = checks._judge_spread("x", result, SUBJECT, want_source=source)
    assert (verdict.ok, why in verdict.detail) == (ok, True), verdict


class Recorder:
    """An adapter that answers every probe well and records where it ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    def _answer(self, argv: Sequence[str]) -> checks.Result:
        if argv[0] == "ebpflb":
            rows = [
                {"service": "demo/echo", "frontend": fe, "active_backends": 4}
                for fe in ("10.96.7.10:80/TCP", "10.96.7.10:53/UDP", "192.168.60.20:80/TCP")
            ]
            return checks.Result(0, json.dumps(rows))
        if argv[4] == "resolve":
            return checks.Result(
                0,
                json.dumps({"count": 1, "answers": {}, "errors": [], "addresses": ["10.96.7.10"]}),
            )
        if argv[4] == "connect":
            return checks.Result(0, json.dumps({"count": 3, "answers": {}, "errors": []}))
        src = [f"10.96.7.10:{argv[6]}"] if argv[4] == "udp" else []
        return _probe({"pod-1": 10, "pod-2": 10}, sources=src)

    def in_pod(self, node: str, argv: Sequence[str], *, timeout: float) -> checks.Result:
        self.calls.append(("pod", node, tuple(argv)))
        return self._answer(argv)

    def on_node(self, node: str, argv: Sequence[str], *, timeout: float) -> checks.Result:
        self.calls.append(("node", node, tuple(argv)))
        return self._answer(argv)

    def outside(self, argv: Sequence[str], *, timeout: float) -> checks.Result:
        self.calls.append(("outside", "", tuple(argv)))
        return self._answer(argv)


def test_cluster_only_checks_run_only_on_a_cluster() -> None:
    lab = checks.run_checks(Recorder(), SUBJECT, cluster=False)
    cluster = checks.run_checks(Recorder(), SUBJECT, cluster=True)
    assert lab.ok and cluster.ok
    only = {"cluster DNS from a pod on node-1", "kubernetes.default from a pod on node-1"}
    assert set(lab.left_out) == only and not only & set(lab.by_name())
    assert only <= set(cluster.by_name()) and not cluster.left_out
    assert lab.text().endswith(f"{len(lab.results)} passed, 0 failed")


def test_a_check_that_raises_is_a_failure_not_a_crash() -> None:
    class Broken(Recorder):
        def on_node(self, node: str, argv: Sequence[str], *, timeout: float) -> checks.Result:
            raise RuntimeError("no agent pod on node-1")

    report = checks.run_checks(Broken(), SUBJECT, cluster=False)
    assert not report.ok
    (failed,) = report.failed()
    assert failed.name == "ebpflb services on node-1" and "no agent pod" in failed.detail
