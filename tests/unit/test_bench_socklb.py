"""The socket-LB bench's arithmetic and inputs: --scales parsing, the ratios to the
direct path and the target's verdict, the self-check on the kernel counters, and the
Services it writes (each path's Service port leads to that path's own server port)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import socklb
from ebpflb.sources.translate import translate


def _run(rps: float, p50: float, errors: int = 0) -> dict[str, Any]:
    return {"rps": rps, "p50_us": p50, "p99_us": 2 * p50, "errors": errors, "count": 100}


def test_scales_parse_in_order_and_reject_nonsense() -> None:
    assert socklb.parse_scales("10,1000, 10_000,100000") == (10, 1000, 10000, 100000)
    for bad in ("", "0", "10,10", "ten"):
        with pytest.raises(ValueError):
            socklb.parse_scales(bad)


def test_main_rejects_bad_scales_before_doing_anything() -> None:
    with pytest.raises(SystemExit) as exc:
        socklb.main(["--scales", "10,10"])
    assert exc.value.code == 2


def test_ratios_are_medians_over_the_direct_medians() -> None:
    direct = [_run(1000, 50), _run(900, 60), _run(1100, 40)]  # medians 1000, 50
    mode = [_run(980, 51), _run(400, 90), _run(990, 51)]  # medians 980, 51
    f = socklb.path_figures(mode, direct)
    assert (f["ratio_rps"], f["ratio_p50"]) == (0.98, 1.02)
    assert f["target_met"]


@pytest.mark.parametrize(
    ("rps", "p50", "errors"),
    [(960, 50, 0), (1000, 52, 0), (1000, 50, 1)],
)
def test_target_not_met_below_097_above_103_or_with_errors(
    rps: float, p50: float, errors: int
) -> None:
    f = socklb.path_figures([_run(rps, p50, errors)], [_run(1000, 50)])
    assert not f["target_met"]


def test_self_check_wants_socket_lb_alone_on_pods_and_tc_alone_on_host() -> None:
    assert socklb.self_check("pods", {"new_flow": 0, "sock_lb": 500}, 500)["ok"]
    assert not socklb.self_check("pods", {"new_flow": 1, "sock_lb": 500}, 500)["ok"]
    assert not socklb.self_check("pods", {"new_flow": 0, "sock_lb": 10}, 500)["ok"]
    assert socklb.self_check("host", {"new_flow": 500, "sock_lb": 0}, 500)["ok"]
    assert not socklb.self_check("host", {"new_flow": 500, "sock_lb": 3}, 500)["ok"]
    assert socklb.self_check("host", {"new_flow": 300, "sock_lb": 0}, 500)["ok"]  # port reuse
    assert not socklb.self_check("host", {"new_flow": 0, "sock_lb": 0}, 500)["ok"]


def test_each_paths_service_port_leads_to_its_own_server_port() -> None:
    pods = [f"10.244.0.{11 + i}" for i in range(socklb.ENDPOINTS)]
    doc = socklb.manifest(3, pods)
    services = [o for o in doc["items"] if o["kind"] == "Service"]
    slices = [o for o in doc["items"] if o["kind"] == "EndpointSlice"]
    result = translate(services, slices)
    assert result.errors == ()
    got = {str(e.frontend): {str(b) for b in e.active} for e in result.state.entries.values()}
    assert len(got) == 3 + 1  # port 80 each, port 81 on the measured (last) one only
    ports = set(socklb.SERVER_PORT.values())
    assert len(ports) == 3  # direct, pods, host: no shared server port
    for path in socklb.PATHS:
        want = {f"{p}:{socklb.SERVER_PORT[path]}" for p in pods}
        assert got[f"10.96.0.3:{socklb.SERVICE_PORT[path]}/TCP"] == want


def test_a_paths_ratio_is_the_median_of_its_windows_ratios() -> None:
    fast = socklb.path_figures([_run(990, 50)], [_run(1000, 50)])  # x0.99
    slow = socklb.path_figures([_run(500, 100)], [_run(505, 100)])  # machine busy: x0.99
    bad = socklb.path_figures([_run(900, 50)], [_run(1000, 50)])  # x0.90
    pooled = socklb.path_figures(
        [_run(990, 50), _run(500, 100), _run(500, 100)],
        [_run(1000, 50), _run(1000, 50), _run(505, 100)],
    )
    pooled["per_round"] = [fast, slow, slow]
    socklb.window_ratios(pooled)
    assert pooled["pooled_ratio_rps"] == 0.5
    assert (pooled["ratio_rps"], pooled["ratio_p50"]) == (0.99, 1.0)
    assert pooled["target_met"]
    pooled["per_round"] = [fast, bad, bad]
    socklb.window_ratios(pooled)
    assert pooled["ratio_rps"] == 0.9 and not pooled["target_met"]
