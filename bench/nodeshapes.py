"""ebpflb on each node shape: the ClusterIP path against the direct path, on the routed
lab (Calico's shape) and the bridge lab (flannel's cni0), with the data-path bench's
load generator, responders and placement (bench.datapath).

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

from bench import datapath as dp
from ebpflb.lab import build, layout
from ebpflb.lab.podnet import Cni

RESULTS = dp.BENCH_DIR / "results" / "nodeshapes.json"


def measure_shape(tools: dict[str, Path], cni: Cni, services: int, load: dp.Load,
                  workdir: Path) -> dict[str, Any]:
    name = "s" + secrets.token_hex(3)[:5]
    dp.log(f"== {cni} lab {name}: node, 3 pods, client; {services} Services")
    try:
        lab = build.up(layout.LabSpec(name, pods=3, cni=cni))
        with dp.responders(tools, lab):
            d0 = dp.measure(tools, lab, {"direct": dp.direct_target(lab)}, load)["direct"]
            runs, info = dp.run_ebpflb(tools, lab, services, load, workdir)
            dp.wait_idle("stopping the agent")
            d1 = dp.measure(tools, lab, {"direct": dp.direct_target(lab)}, load)["direct"]
    finally:
        build.down(name)
    out: dict[str, Any] = {}
    for proto in ("tcp", "udp"):
        base = dp.summarize(d0[proto] + d1[proto])
        res = dp.summarize(runs[proto])
        loaded = dp.summarize(info["direct_while_loaded"][proto])
        out[proto] = {"direct": base, "ebpflb": res, "ratio": dp.ratios(res, base),
                      "ratio_same_window": dp.ratios(res, loaded)}
        dp.log(f"   {proto}: ebpflb {res['rps']:.0f} req/s, direct {base['rps']:.0f}: "
               f"x{out[proto]['ratio']['rps']:.3f} (xw "
               f"{out[proto]['ratio_same_window']['rps']:.3f}), errors {res['errors']:.0f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb on each node shape (routed, bridge)")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--services", type=int, default=1000, help="Services in the maps")
    ap.add_argument("--cpu", type=int, default=dp.LOAD_CPU,
                    help="CPU for the load generator and responders (-1: no pinning)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    dp._place(args.cpu)
    load = dp.LOAD_QUICK if args.quick else dp.LOAD_FULL
    tools = dp.compile_tools()
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-shapes-"))
    try:
        res = {str(cni): measure_shape(tools, cni, args.services, load, workdir)
               for cni in Cni}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    dp.log("\n== ClusterIP req/s as a ratio to direct, per node shape (xw: interleaved)")
    dp.log(f"{'shape':<8} {'TCP x':>7} {'TCP xw':>7} {'UDP x':>7} {'UDP xw':>7}")
    for cni, row in res.items():
        dp.log(f"{cni:<8} {row['tcp']['ratio']['rps']:>7.3f} "
               f"{row['tcp']['ratio_same_window']['rps']:>7.3f} "
               f"{row['udp']['ratio']['rps']:>7.3f} "
               f"{row['udp']['ratio_same_window']['rps']:>7.3f}")
    dp.log(f"JSON: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
