"""ebpflb on each node shape: the ClusterIP path against the direct path, on the routed
lab (Calico's shape) and the bridge lab (flannel's cni0), with the data-path bench's
load generator, responders and placement (bench.harness).

On a bridged node a pod's packets cross the veth and then the bridge; the question is
whether the Service path keeps the same ratio to the direct path there. Each shape is
measured in the same run, the direct path before and after ebpflb and interleaved with
it (xw), so the figures compare within a shape and across shapes.

    python -m bench.nodeshapes [--quick] [--services N]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness, lbmodes
from ebpflb.lab import build, layout
from ebpflb.lab.podnet import Cni

RESULTS = harness.BENCH_DIR / "results" / "nodeshapes.json"


def measure_shape(
    tools: dict[str, Path], cni: Cni, services: int, load: harness.Load, workdir: Path
) -> dict[str, Any]:
    name = "s" + secrets.token_hex(3)[:5]
    harness.log(f"== {cni} lab {name}: node, 3 pods, client; {services} Services")
    try:
        lab = build.up(layout.LabSpec(name, pods=3, cni=cni))
        with harness.responders(tools, lab):
            d0 = harness.measure(tools, lab, {"direct": harness.direct_target(lab)}, load)["direct"]
            runs, info = lbmodes.run_ebpflb(tools, lab, services, load, workdir)
            harness.wait_idle("stopping the agent")
            d1 = harness.measure(tools, lab, {"direct": harness.direct_target(lab)}, load)["direct"]
    finally:
        build.down(name)
    out: dict[str, Any] = {}
    for proto in ("tcp", "udp"):
        base = harness.summarize(d0[proto] + d1[proto])
        res = harness.summarize(runs[proto])
        loaded = harness.summarize(info["direct_while_loaded"][proto])
        out[proto] = {
            "direct": base,
            "ebpflb": res,
            "ratio": harness.ratios(res, base),
            "ratio_same_window": harness.ratios(res, loaded),
        }
        harness.log(
            f"   {proto}: ebpflb {res['rps']:.0f} req/s, direct {base['rps']:.0f}: "
            f"x{out[proto]['ratio']['rps']:.3f} (xw "
            f"{out[proto]['ratio_same_window']['rps']:.3f}), errors {res['errors']:.0f}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb on each node shape (routed, bridge)")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--services", type=int, default=1000, help="Services in the maps")
    ap.add_argument(
        "--cpu",
        type=int,
        default=harness.LOAD_CPU,
        help="CPU for the load generator and responders (-1: no pinning)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    harness._place(args.cpu)
    load = harness.LOAD_QUICK if args.quick else harness.LOAD_FULL
    tools = harness.compile_tools()
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-shapes-"))
    try:
        res = {str(cni): measure_shape(tools, cni, args.services, load, workdir) for cni in Cni}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    harness.log("\n== ClusterIP req/s as a ratio to direct, per node shape (xw: interleaved)")
    harness.log(f"{'shape':<8} {'TCP x':>7} {'TCP xw':>7} {'UDP x':>7} {'UDP xw':>7}")
    for cni, row in res.items():
        harness.log(
            f"{cni:<8} {row['tcp']['ratio']['rps']:>7.3f} "
            f"{row['tcp']['ratio_same_window']['rps']:>7.3f} "
            f"{row['udp']['ratio']['rps']:>7.3f} "
            f"{row['udp']['ratio_same_window']['rps']:>7.3f}"
        )
    harness.log(f"JSON: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
