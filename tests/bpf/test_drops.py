"""The one exit of the tc program counts every drop by reason in ebpflb_drops (index
-DROP_*), once, and nothing else: a packet table of each drop reason a test can reach,
and of verdicts that are not drops (pass, translate, refuse by redirect).

Not reachable here: DROP_CT_FULL (an LRU map update does not fail for want of room),
DROP_WRITE (a rewrite helper fails only on a packet the parser refused already), and
DROP_NAT_PORT_FULL (its 16 tries among 4536 ports would need more conntrack entries
than the test maps hold)."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ebpflb.dataplane.bpf import abi
from tests.bpf import packets as pk
from tests.bpf.conftest import TC_ACT_OK, TC_ACT_SHOT, Maps, RunFn

pytestmark = pytest.mark.root

TC_ACT_REDIRECT = 7
CLIENT = "10.0.0.5"
SVC_IP = "10.96.0.10"
LB_IP = "192.168.60.10"
BACKENDS = {1: ("10.0.1.1", 8080), 2: ("10.0.1.2", 8080)}
FLOW = pk.Flow(pk.TCP, CLIENT, SVC_IP, 40000, 80)
LB_FLOW = pk.Flow(pk.TCP, CLIENT, LB_IP, 40000, 80)


def _service(
    maps: Maps, addr: str, backends: dict[int, tuple[str, int]], flags: int = abi.SvcFlag.CLUSTERIP
) -> None:
    maps.add_service(1, addr, 80, pk.TCP, backends)
    maps.svc4.update(
        abi.Lb4Key(abi.pack_ip4(addr), abi.htons(80), pk.TCP),
        abi.Lb4Service(1, len(backends), flags),
    )


def empty_local(maps: Maps) -> None:
    """A frontend left without endpoints by externalTrafficPolicy: Local: dropped."""
    _service(maps, SVC_IP, {}, abi.SvcFlag.NODEPORT | abi.SvcFlag.DROP_EMPTY)


def empty(maps: Maps) -> None:
    _service(maps, SVC_IP, {})


def missing_backend(maps: Maps) -> None:
    maps.set_slots(1, [99])
    maps.set_count(1, SVC_IP, 80, pk.TCP, 1)


def source_ranges(maps: Maps) -> None:
    _service(maps, LB_IP, BACKENDS, abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES)
    maps.src_ranges.update(
        abi.SrcRange4Key(32 + 24, 1, abi.pack_ip4("192.168.50.0")), ctypes.c_uint8(1)
    )


def healthy(maps: Maps) -> None:
    _service(maps, SVC_IP, BACKENDS)


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Maps], None]
    frame: bytes
    verdict: int
    drops: dict[str, int]  # ebpflb_drops after the packet, by reason (zeros left out)


CASES = [
    Case("no-backend-local-policy", empty_local, pk.frame(FLOW), TC_ACT_SHOT, {"no_backend": 1}),
    # a refusal quotes an IP header without options: one with options is dropped
    # (reject.h), which no counter saw before the one exit
    Case(
        "no-backend-refusal-impossible",
        empty,
        pk.frame(FLOW, options=bytes([1] * 4)),
        TC_ACT_SHOT,
        {"no_backend": 1},
    ),
    Case("backend-missing", missing_backend, pk.frame(FLOW), TC_ACT_SHOT, {"backend_missing": 1}),
    Case("source-range", source_ranges, pk.frame(LB_FLOW), TC_ACT_SHOT, {"source_range": 1}),
    # not drops: counted nowhere in ebpflb_drops
    Case("translated", healthy, pk.frame(FLOW), TC_ACT_OK, {}),
    Case(
        "not-a-service",
        healthy,
        pk.frame(pk.Flow(pk.TCP, CLIENT, "10.0.0.99", 1, 80)),
        TC_ACT_OK,
        {},
    ),
    Case("fragment", healthy, pk.frame(FLOW, b"a" * 16, more_fragments=True), TC_ACT_OK, {}),
    Case("refused-by-icmp", empty, pk.frame(FLOW), TC_ACT_REDIRECT, {}),
    Case(
        "source-range-admitted",
        source_ranges,
        pk.frame(pk.Flow(pk.TCP, "192.168.50.7", LB_IP, 40000, 80)),
        TC_ACT_OK,
        {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_drop_counted_once_by_reason(case: Case, maps: Maps, run: RunFn) -> None:
    case.setup(maps)
    assert run(case.frame).retval == case.verdict
    assert maps.drop_counts() == case.drops


def test_drops_add_up_per_reason(maps: Maps, run: RunFn) -> None:
    empty_local(maps)
    for sport in range(3):
        run(pk.frame(pk.Flow(pk.TCP, CLIENT, SVC_IP, 40000 + sport, 80)))
    assert maps.drop_counts() == {"no_backend": 3}
    # the global event counter that says the same keeps its meaning
    assert maps.gstat_value(abi.GlobalStat.NO_BACKEND) == 3


def test_every_reason_has_a_slot_in_the_map(maps: Maps) -> None:
    assert maps.drops.info.max_entries == abi.DROP_MAX
    assert all(0 < -r < abi.DROP_MAX for r in abi.DropReason)


def test_stats_cli_shows_the_drops_by_reason(maps: Maps, run: RunFn) -> None:
    """`ebpflb stats --json` reads ebpflb_drops from the pins: a "drops" key beside the
    existing ones, every reason present; the table shows them too."""
    from typer.testing import CliRunner

    from ebpflb.cli import app

    empty_local(maps)
    run(pk.frame(FLOW))
    missing_backend(maps)
    run(pk.frame(FLOW))
    run(pk.frame(pk.Flow(pk.TCP, CLIENT, SVC_IP, 40001, 80)))
    result = CliRunner().invoke(app, ["stats", "--json", "--pin-dir", maps.pin_dir])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out) == ["services", "counters", "drops"]
    assert out["drops"] == {
        "no_backend": 1,
        "backend_missing": 2,
        "ct_full": 0,
        "write": 0,
        "source_range": 0,
        "nat_port_full": 0,
    }
    assert out["counters"]["no_backend"] == 1 and out["counters"]["backend_missing"] == 2
    result = CliRunner().invoke(app, ["stats", "--pin-dir", maps.pin_dir])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["DROP", "REASON", "COUNT"] in rows
    assert ["backend_missing", "2"] in rows and ["write", "0"] in rows
