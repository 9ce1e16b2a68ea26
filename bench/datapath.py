"""`make bench`: the data-path benchmark. Direct to a pod vs the ClusterIP through
ebpflb vs the ClusterIP through kube-proxy-shaped iptables rules, at 10, 1,000 and
10,000 Services, in a lab of network namespaces; IPv6 beside IPv4 through ebpflb at 10
and 10,000 dual-stack Services; plus the tc program's own cost per packet
(BPF_PROG_TEST_RUN) at 10 and 10,000 Services, IPv4 and IPv6.

    python -m bench.datapath [--quick] [--ipv6-only]

The lab is dual-stack. IPv6 beside IPv4: N dual-stack Services (an IPv4 and an IPv6
ClusterIP each, an IPv4 and an IPv6 EndpointSlice of the same pods); four paths are
measured with their runs interleaved: the IPv4 ClusterIP, the pods' IPv4 addresses, the
IPv6 ClusterIP, the pods' IPv6 addresses; each ClusterIP's ratio is to its own family's
direct path of the same window. --ipv6-only runs that part and the per-packet cost only.

Traffic: bench/bin/loadgen (C) in the lab's client namespace against bench/bin/responder
(C) in each of the 3 pods; every measured path has its own server ports (direct
18081/19081, ebpflb 18082/19082, iptables 18083/19083) so that no new connection ever
meets a TIME_WAIT socket left by another path. TCP: one HTTP request per new
connection; UDP: request/response on one socket. The direct path is measured before and
after each mode; the mode's ratios are to the median of those direct runs.

Everything built is removed at the end, on failure and on Ctrl-C/SIGTERM: agent stopped
(--cleanup) and its pins removed, the node's nat table flushed and deleted, the
responders stopped by PID, the lab down, the temporary bpffs unmounted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import (
    BENCH_DIR,
    CFLAGS,
    LOAD_FULL,
    LOAD_QUICK,
    PORTS,
    Interrupted,
    Runs,
    _median,
    _on_sigterm,
    _place,
    compile_tools,
    direct_target,
    empty_hook_runs,
    log,
    measure,
    ratios,
    responders,
    summarize,
    wait_idle,
)
from bench.lbmodes import iptables_version, run_ebpflb, run_iptables
from bench.testrun import TESTRUN_KINDS, testrun_cost, testrun_table
from ebpflb.lab import build, layout

RESULTS = BENCH_DIR / "results" / "datapath.json"
RESULTS_IPV6 = BENCH_DIR / "results" / "datapath-ipv6.json"  # --ipv6-only

TARGET = "target: ebpflb within 5% of direct at every scale, flat from 10 to 10,000 Services"
TOLERANCE = 0.05

SCALES_FULL = (10, 1000, 10000)
SCALES_QUICK = (10,)
FAMILY_SCALES = (10, 10000)
TESTRUN_SCALES = (10, 10000)
TESTRUN_COUNT = 20_000  # single runs per packet kind and scale


def target_met(rat: dict[str, float]) -> bool:
    """Within 5% of direct: throughput >= 95% and median latency <= 105% of direct's."""
    return rat["rps"] >= 1 - TOLERANCE and rat["p50"] <= 1 + TOLERANCE


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>6} {'mode':<9} {'proto':<5} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} "
        f"{'direct req/s':>12} {'x rps':>6} {'x p50':>6} {'x p99':>6} {'drift':>6} "
        f"{'xw rps':>6} {'xw p50':>6} {'err':>4}  target"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s, rat = r["result"], r["ratio"]
        met = ("met" if r["target_met"] else "NOT met") if r["mode"] == "ebpflb" else "n/a"
        if r["mode"] == "ebpflb" and abs(r["direct_after_over_before_rps"] - 1) > TOLERANCE:
            met += " (*)"
        lines.append(
            f"{r['services']:>6} {r['mode']:<9} {r['proto']:<5} {s['rps']:>9.0f} "
            f"{s['p50_us']:>8.1f} {s['p99_us']:>8.1f} {r['baseline']['rps']:>12.0f} "
            f"{rat['rps']:>6.3f} {rat['p50']:>6.3f} {rat['p99']:>6.3f} "
            f"{r['direct_after_over_before_rps']:>6.3f} {r['ratio_same_window']['rps']:>6.3f} "
            f"{r['ratio_same_window']['p50']:>6.3f} {int(s['errors']):>4}  {met}"
        )
    return "\n".join(lines)


def loaded_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'N':>6} {'mode loaded':<11} {'proto':<5} {'req/s':>9} {'p50 us':>8} "
        f"{'x rps':>6} {'x p50':>6} {'x p99':>6}"
    ]
    for r in rows:
        s, rat = r["direct_while_loaded"], r["direct_while_loaded_ratio"]
        lines.append(
            f"{r['services']:>6} {r['mode']:<11} {r['proto']:<5} {s['rps']:>9.0f} "
            f"{s['p50_us']:>8.1f} {rat['rps']:>6.3f} {rat['p50']:>6.3f} "
            f"{rat['p99']:>6.3f}"
        )
    return "\n".join(lines)


def family_rows(n: int, runs: Runs, info: dict[str, Any]) -> list[dict[str, Any]]:
    """IPv4 and IPv6 through ebpflb at N dual-stack Services: each family's ClusterIP
    against its own direct path, all measured in one window (runs interleaved)."""
    rows = []
    six = info["ipv6"]
    for proto in ("tcp", "udp"):
        row: dict[str, Any] = {"services": n, "proto": proto, "frontends": info["frontends"]}
        for family, mode_runs, direct_runs in (
            ("ipv4", runs[proto], info["direct_while_loaded"][proto]),
            ("ipv6", six["runs"][proto], six["direct"][proto]),
        ):
            res, base = summarize(mode_runs), summarize(direct_runs)
            row[family] = {"result": res, "direct": base, "ratio": ratios(res, base)}
        row["v6_over_v4_rps"] = round(
            row["ipv6"]["result"]["rps"] / max(1.0, row["ipv4"]["result"]["rps"]), 3
        )
        row["ipv6_translated_packets"] = six["translated_packets"][proto]
        rows.append(row)
    return rows


def family_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>6} {'proto':<5} {'v4 req/s':>9} {'direct':>9} {'v4 x':>6} {'v4 p50':>7} "
        f"{'v6 req/s':>9} {'direct6':>9} {'v6 x':>6} {'v6 p50':>7} {'v6/v4':>6} {'err':>4}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        v4, v6 = r["ipv4"], r["ipv6"]
        err = int(v4["result"]["errors"] + v6["result"]["errors"])
        lines.append(
            f"{r['services']:>6} {r['proto']:<5} {v4['result']['rps']:>9.0f} "
            f"{v4['direct']['rps']:>9.0f} {v4['ratio']['rps']:>6.3f} "
            f"{v4['result']['p50_us']:>7.1f} {v6['result']['rps']:>9.0f} "
            f"{v6['direct']['rps']:>9.0f} {v6['ratio']['rps']:>6.3f} "
            f"{v6['result']['p50_us']:>7.1f} {r['v6_over_v4_rps']:>6.3f} {err:>4}"
        )
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def run(quick: bool, ipv6_only: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    scales: tuple[int, ...] = () if ipv6_only else SCALES_QUICK if quick else SCALES_FULL
    family_scales = (10,) if quick else FAMILY_SCALES
    tr_scales = (10,) if quick else TESTRUN_SCALES
    tr_count = 2_000 if quick else TESTRUN_COUNT
    load = LOAD_QUICK if quick else LOAD_FULL
    ipt = iptables_version()
    nft_backend = "nf_tables" in ipt
    log(
        f"== ebpflb data-path benchmark{' (quick)' if quick else ''}"
        f"{' (IPv6 beside IPv4 only)' if ipv6_only else ''}: kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, {ipt}"
    )
    log(f"   {TARGET}")
    log(
        f"   load generator and responders pinned to CPU {harness.LOAD_CPU}, everything else off it"
        if harness.LOAD_CPU >= 0
        else "   no CPU pinning"
    )
    log(
        f"   load per measurement: warm-up {load.warmup}, then {load.repeats} runs of up to "
        f"{load.count} requests / {load.max_seconds:g}s each; median of the runs"
    )
    tools = compile_tools()
    log(
        f"   compiled {', '.join(str(p.relative_to(BENCH_DIR.parent)) for p in tools.values())}"
        f" ({' '.join(CFLAGS)})"
    )

    name = "b" + secrets.token_hex(3)[:5]
    rows: list[dict[str, Any]] = []
    rows6: list[dict[str, Any]] = []
    floor: dict[str, dict[str, float]] = {}
    context: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-bench-"))
    lab: layout.Lab | None = None
    try:
        log(f"== lab {name}: node, 3 pods, client (dual-stack)")
        lab = built = build.up(layout.LabSpec(name, pods=3, ipv6=True))
        with responders(tools, built) as pids:
            log(
                f"   responders (PIDs {', '.join(map(str, pids))}) on ports "
                + ", ".join(f"{k} {t}/{u}" for k, (t, u) in PORTS.items())
            )

            def direct(tag: str) -> Runs:
                runs = measure(tools, built, {"direct": direct_target(built)}, load)["direct"]
                raw[tag] = runs
                return runs

            if not ipv6_only:
                log("== floor: an empty tc program on every pod veth (the hook's own cost)")
                f0 = direct("floor/direct-0")
                raw["floor/empty-tc"] = f_runs = empty_hook_runs(tools, built, load)
                f1 = direct("floor/direct-1")
                for proto in ("tcp", "udp"):
                    floor[proto] = ratios(
                        summarize(f_runs[proto]), summarize(f0[proto] + f1[proto])
                    )
                    log(
                        f"   empty tc program {proto}: x{floor[proto]['rps']:.3f} req/s, "
                        f"x{floor[proto]['p50']:.3f} p50 of direct"
                    )

            for n in scales:
                log(f"== {n} Services")
                d0 = direct(f"{n}/direct-0")
                e_runs, e_info = run_ebpflb(tools, built, n, load, workdir)
                raw[f"{n}/ebpflb"] = e_runs
                idle = wait_idle("stopping the agent")
                log(f"   (idle after {idle:.1f}s)")
                d1 = direct(f"{n}/direct-1")
                i_runs, i_info = run_iptables(tools, built, n, load, nft_backend)
                raw[f"{n}/iptables"] = i_runs
                d2 = direct(f"{n}/direct-2")
                context[str(n)] = {"ebpflb": e_info, "iptables": i_info}
                for mode, runs, before, after in (
                    ("ebpflb", e_runs, d0, d1),
                    ("iptables", i_runs, d1, d2),
                ):
                    info = context[str(n)][mode]
                    for proto in ("tcp", "udp"):
                        base = summarize(before[proto] + after[proto])
                        res = summarize(runs[proto])
                        rat = ratios(res, base)
                        drift = round(
                            _median(after[proto], "rps") / max(1.0, _median(before[proto], "rps")),
                            3,
                        )
                        loaded = summarize(info["direct_while_loaded"][proto])
                        rows.append(
                            {
                                "services": n,
                                "mode": mode,
                                "proto": proto,
                                "result": res,
                                "baseline": base,
                                "ratio": rat,
                                "direct_after_over_before_rps": drift,
                                "direct_while_loaded": loaded,
                                "direct_while_loaded_ratio": ratios(loaded, base),
                                "ratio_same_window": ratios(res, loaded),
                                "target_met": target_met(rat) and res["errors"] == 0,
                            }
                        )
                        log(
                            f"   {mode:<8} {proto}: {res['rps']:.0f} req/s "
                            f"(direct {base['rps']:.0f}; x{rat['rps']:.3f}), p50 "
                            f"{res['p50_us']:.1f}us (x{rat['p50']:.3f}), p99 "
                            f"{res['p99_us']:.1f}us (x{rat['p99']:.3f})"
                        )

            for n in family_scales:
                log(f"== IPv6 beside IPv4: {n} dual-stack Services, four paths interleaved")
                idle = wait_idle("the previous mode")
                f_runs6, f_info = run_ebpflb(tools, built, n, load, workdir, ipv6=True)
                raw[f"{n}/dual-stack"] = {
                    "ipv4": f_runs6,
                    "direct": f_info["direct_while_loaded"],
                    "ipv6": f_info["ipv6"]["runs"],
                    "direct6": f_info["ipv6"]["direct"],
                }
                for r in family_rows(n, f_runs6, f_info):
                    rows6.append(r)
                    log(
                        f"   {r['proto']}: IPv4 x{r['ipv4']['ratio']['rps']:.3f} of direct, "
                        f"IPv6 x{r['ipv6']['ratio']['rps']:.3f} of direct (IPv6 "
                        f"{r['ipv6']['result']['rps']:.0f} req/s, "
                        f"{r['ipv6_translated_packets']} packets translated)"
                    )
    finally:
        if lab is not None or build.leftovers(name):
            build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)

    log("== per-packet cost of the tc program (BPF_PROG_TEST_RUN)")
    tr = testrun_cost(tr_scales, tr_count)
    first, last = str(tr_scales[0]), str(tr_scales[-1])
    for key, scales_key in (("ratio_last_to_first", "scales"), ("ratio_last_to_first6", "scales6")):
        by_n = tr[scales_key]
        tr[key] = {
            k: round(by_n[last][k]["ns_per_packet"] / max(1, by_n[first][k]["ns_per_packet"]), 3)
            for k in TESTRUN_KINDS
        }

    ebpf_rows = [r for r in rows if r["mode"] == "ebpflb"]
    flat: dict[str, Any] = {}
    for proto in ("tcp", "udp"):
        by_n = {r["services"]: r["ratio"]["rps"] for r in ebpf_rows if r["proto"] == proto}
        if len(by_n) > 1:
            lo, hi = by_n[min(by_n)], by_n[max(by_n)]
            flat[proto] = {
                "ratio_rps_first": lo,
                "ratio_rps_last": hi,
                "flat": abs(hi - lo) <= TOLERANCE,
            }
    runtime = time.monotonic() - started
    return {
        "target": TARGET,
        "quick": quick,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "iptables": ipt,
        "load": load.__dict__,
        "ports": PORTS,
        "load_cpu": harness.LOAD_CPU,
        "notes": [
            "direct = client -> the pods' IPs (TCP: each new connection to one of the 3 pods "
            "at random, the spread the load balancers give; UDP: pod-1); ebpflb/iptables = "
            "client -> the ClusterIP of the last of N Services (3 pod backends each)",
            "xw ratios: to the direct path measured while the mode is loaded, runs "
            "interleaved with the mode's (cancels the machine's drift)",
            "baseline = median of the direct runs measured before and after the mode",
            "target met (ebpflb rows): req/s >= 95% and p50 <= 105% of direct, no errors",
            "TCP: new connection per request, client closes with SO_LINGER 0 (RST)",
            "UDP: one socket; after the first packet ebpflb and iptables both hit their "
            "conntrack, so the UDP rows show the per-packet cost of an established flow",
            "iptables: the measured Service is the last service rule of KUBE-SERVICES "
            "(worst case of the linear match); see bench/kubeproxy.py for what is left out",
        ],
        "rows": rows,
        "ipv6_rows": rows6,
        "empty_tc_program": floor,
        "flat": flat,
        "context": context,
        "testrun": tr,
        "runs": raw,
        "runtime_s": round(runtime, 1),
    }


def report(res: dict[str, Any]) -> None:
    log("\n== results")
    if res["rows"]:
        _report_ipv4(res)
    if res["ipv6_rows"]:
        log(
            "\n   IPv6 beside IPv4 through ebpflb (dual-stack Services; x = ratio to the "
            "same family's direct path,\n   measured in the same window, runs interleaved)"
        )
        log(family_table(res["ipv6_rows"]))
    log(
        "\n   tc program ns per packet (BPF_PROG_TEST_RUN, median of "
        f"{res['testrun']['count']:,} single runs per packet)"
    )
    log(testrun_table(res["testrun"]))
    for family, key in (("IPv4", "ratio_last_to_first"), ("IPv6", "ratio_last_to_first6")):
        rt = res["testrun"][key]
        log(
            f"   {family} ratio largest/smallest N: " + ", ".join(f"{k} {v}" for k, v in rt.items())
        )
    if res["rows"]:
        met = all(r["target_met"] for r in res["rows"] if r["mode"] == "ebpflb")
        flat_ok = all(f["flat"] for f in res["flat"].values())
        log(
            f"\n   {res['target']}: "
            f"{'MET' if met and flat_ok else 'NOT MET'} (within 5% in every row: "
            f"{'yes' if met else 'no'}; flat: "
            f"{'yes' if flat_ok else 'no' if res['flat'] else 'n/a'})"
        )
    log(f"   total runtime {res['runtime_s']}s; JSON: {res_path(res)}")


def res_path(res: dict[str, Any]) -> Path:
    return RESULTS_IPV6 if not res["rows"] else RESULTS


def _report_ipv4(res: dict[str, Any]) -> None:
    log(table(res["rows"]))
    log(
        "   x = ratio to direct (baseline: median of the direct runs before and after the "
        "mode);\n   drift = direct req/s after / before the mode: the run-to-run noise floor;"
        "\n   (*) = the direct path itself moved by more than 5% around this mode: the "
        "verdict is within the noise;\n   xw = ratio to the direct path measured in the "
        "same window, runs interleaved with the mode's, while the mode is loaded (drift-free;"
        "\n   for iptables that direct path also walks KUBE-SERVICES, so xw understates "
        "its cost)"
    )
    log(
        "\n   direct path (client -> pod IP) while the mode is loaded, ratio to the same "
        "baseline\n   (ebpflb: the tc program's pass-through; iptables: PREROUTING walks "
        "all of KUBE-SERVICES)"
    )
    log(loaded_table(res["rows"]))
    for n, c in res["context"].items():
        e, i = c["ebpflb"], c["iptables"]
        log(
            f"   N={n}: ebpflb agent start -> first sync {e['agent_start_to_first_sync_s']}s "
            f"({e['frontends']} frontends); iptables-restore {i['restore_s']}s "
            f"({i['rules']} rules), flush {i['flush_s']}s"
        )
    for proto, f in res["flat"].items():
        log(
            f"   flat ({proto}): ebpflb x rps {f['ratio_rps_first']} at the smallest N, "
            f"{f['ratio_rps_last']} at the largest: {'flat' if f['flat'] else 'NOT flat'}"
        )
    for proto, rat in res["empty_tc_program"].items():
        log(
            f"   floor ({proto}): an empty tc program on every veth alone gives x{rat['rps']} "
            f"req/s of direct: the part of the gap that is the tc hook, not ebpflb"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb data-path benchmark")
    ap.add_argument("--quick", action="store_true", help="N=10 only, fewer requests")
    ap.add_argument(
        "--ipv6-only",
        action="store_true",
        help="only IPv6 beside IPv4 through ebpflb and the per-packet cost",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=harness.LOAD_CPU,
        help="CPU for the load generator and responders (-1: no pinning)",
    )
    args = ap.parse_args(argv)
    _place(args.cpu)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF, iptables)", file=sys.stderr)
        return 1
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        res = run(args.quick, args.ipv6_only)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    RESULTS.parent.mkdir(exist_ok=True)
    res_path(res).write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
