"""Socket-LB for pods vs per-packet tc translation: new TCP connections per second and
their p50 latency through a ClusterIP from a pod (the lab's client namespace on node 1),
each figure a ratio to the direct path (the same client to the pods' IPs) measured
alternately with it in the same window.

    python -m bench.socklb [--quick] [--scales 10,1000,10000,100000]

Paths, at each scale of N Services (5 endpoints each, written as one manifest; the
measured Service is the last one):
- direct: the client connects to one of the 5 pods' IPs at random (the spread a
  load balancer gives), server port 18081;
- pods: the ClusterIP with the agent run with ``--socket-lb pods``: the client's
  connect() is sent to a backend by the cgroup hook, tc sees pod-to-pod packets only
  (Service port 80 -> server port 18082);
- host: the ClusterIP with the agent run with ``--socket-lb host``: the client's
  packets are translated by the tc program on its veth (Service port 81 -> server
  port 18083).
Every path has its own server port, so no new connection meets a TIME_WAIT socket
left by another path (DESIGN's benchmark pitfalls). Each round starts the agent in
``pods`` mode, measures direct and pods runs interleaved (A B B A ...), stops it, starts
it in ``host`` mode and does the same; rounds repeat, and each path's ratio is the
median of its runs over the median of the direct runs of its own windows.

Self-check (``ebpflb stats --json``): in a pods window the tc program's new_flow
counter must not move while sock_lb moves by at least the answered connections; in a
host window new_flow must move (not once per connection: a client port reused while
its conntrack entry lives is a hit) and sock_lb not at all.

Everything built is removed at the end, on failure and on Ctrl-C/SIGTERM: the agent
stopped by PID (--cleanup) and its pins and socket-LB links removed, the responders
stopped by PID, the lab down.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness, kubeproxy
from bench.harness import (
    BENCH_DIR,
    PORTS,
    Interrupted,
    _on_sigterm,
    _place,
    compile_tools,
    log,
    responders,
    wait_idle,
)
from bench.lbmodes import ebpflb_service_ready
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.socklb import remove_links
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.lab import build, layout

RESULTS = BENCH_DIR / "results" / "socklb.json"

TARGET = "target: ClusterIP from a pod >= 0.97x direct conn/s and p50 <= 1.03x direct"
TARGET_RPS = 0.97
TARGET_P50 = 1.03

SCALES_DEFAULT = (10, 1000, 10000)
SCALES_QUICK = (10,)
ENDPOINTS = 5
IP_BASE = "10.96.0.0"  # ClusterIPs 10.96.0.1 ...
NAMESPACE = "bench"

PATHS = ("pods", "host")  # socket-LB mode of the agent per measured ClusterIP path
# Server (TCP) port per path, harness.PORTS' three (its responders listen on all).
SERVER_PORT = {
    "direct": PORTS["direct"][0],
    "pods": PORTS["ebpflb"][0],
    "host": PORTS["iptables"][0],
}
SERVICE_PORT = {"pods": 80, "host": 81}  # the Service port leading to that server port


@dataclass(frozen=True)
class Load:
    rounds: int  # agent (pods, host) windows per scale
    repeats: int  # direct/mode run pairs per window
    count: int
    max_seconds: float
    warmup: int


LOAD_FULL = Load(rounds=3, repeats=5, count=2000, max_seconds=2.0, warmup=200)
LOAD_QUICK = Load(rounds=1, repeats=3, count=500, max_seconds=1.0, warmup=50)


def parse_scales(text: str) -> tuple[int, ...]:
    """'10,1000' -> (10, 1000): positive, distinct, in the order given."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        n = int(part)
        if n < 1:
            raise ValueError(f"a scale must be >= 1 Service, not {n}")
        if n in out:
            raise ValueError(f"scale {n} given twice")
        out.append(n)
    if not out:
        raise ValueError("no scale given")
    return tuple(out)


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs)) if runs else 0.0


def path_figures(mode: list[dict[str, Any]], direct: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of a path's runs and of the direct runs of its windows, and their ratios
    (conn/s: higher is better; p50: lower is better), with the target's verdict."""
    rps, p50 = _med(mode, "rps"), _med(mode, "p50_us")
    d_rps, d_p50 = _med(direct, "rps"), _med(direct, "p50_us")
    x_rps = round(rps / d_rps, 3) if d_rps else 0.0
    x_p50 = round(p50 / d_p50, 3) if d_p50 else 0.0
    errors = sum(int(r["errors"]) for r in mode)
    return {
        "conn_per_s": round(rps, 1),
        "p50_us": round(p50, 1),
        "p99_us": round(_med(mode, "p99_us"), 1),
        "direct_conn_per_s": round(d_rps, 1),
        "direct_p50_us": round(d_p50, 1),
        "ratio_rps": x_rps,
        "ratio_p50": x_p50,
        "errors": errors,
        "target_met": bool(mode) and x_rps >= TARGET_RPS and x_p50 <= TARGET_P50 and not errors,
    }


def window_ratios(fig: dict[str, Any]) -> None:
    """A path's ratios as the median of its windows' ratios (each window's own direct
    runs), the pooled medians kept beside: another load on the machine that halves
    the rate in some windows skews pooled medians, not per-window ratios."""
    rounds = fig["per_round"]
    if not rounds:
        return
    fig["pooled_ratio_rps"], fig["pooled_ratio_p50"] = fig["ratio_rps"], fig["ratio_p50"]
    fig["ratio_rps"] = round(statistics.median(r["ratio_rps"] for r in rounds), 3)
    fig["ratio_p50"] = round(statistics.median(r["ratio_p50"] for r in rounds), 3)
    fig["target_met"] = (
        fig["ratio_rps"] >= TARGET_RPS and fig["ratio_p50"] <= TARGET_P50 and not fig["errors"]
    )


def manifest(n: int, pods: list[str]) -> dict[str, Any]:
    """N Services of one TCP port (80 -> the pods path's server port) and their
    EndpointSlices of the 5 pods, as one List; the measured (last) one has a second
    port (81 -> the host path's), so that 100,000 Services hold 500,005 backends,
    within the default map size (524,287)."""
    items: list[dict[str, Any]] = []
    ports = [
        {
            "name": f"http-{p}",
            "port": SERVICE_PORT[p],
            "protocol": "TCP",
            "targetPort": SERVER_PORT[p],
        }
        for p in PATHS
    ]
    slice_ports = [{"name": f"http-{p}", "port": SERVER_PORT[p], "protocol": "TCP"} for p in PATHS]
    endpoints = [{"addresses": [a], "conditions": {"ready": True}} for a in pods]
    for i in range(n):
        name = f"svc-{i}"
        last = i == n - 1
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "clusterIP": kubeproxy.cluster_ip(i, IP_BASE),
                    "ports": ports if last else ports[:1],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-x1",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": slice_ports if last else slice_ports[:1],
                "endpoints": endpoints,
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


# --- the agent ----------------------------------------------------------------------------


def counters(pin_dir: str) -> dict[str, int]:
    """`ebpflb stats --json`'s global kernel counters."""
    proc = subprocess.run(
        [sys.executable, "-m", "ebpflb", "stats", "--json", "--pin-dir", pin_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ebpflb stats failed: {proc.stderr.strip()[-2000:]}")
    out: dict[str, int] = json.loads(proc.stdout)["counters"]
    return out


def _served(pin_dir: str) -> set[int]:
    try:
        with PinnedMap(f"{pin_dir}/{abi.MAP_SOCK_NETNS}") as m:
            return {key.value for key in m.keys(ctypes.c_uint64)}
    except OSError:
        return set()


def _client_cookie(ns: str) -> int:
    import socket
    import struct

    from ebpflb.lab import netns

    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        value: int = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]
    return value  # SO_NETNS_COOKIE


def _ready(pin_dir: str, addr: str, port: int, want: set[tuple[str, int]]) -> Callable[[], bool]:
    return lambda: ebpflb_service_ready(pin_dir, addr, port, abi.IPPROTO_TCP, want)


class Agent:
    """One agent run in one socket-LB mode: started, awaited until the measured Service
    is in the maps (and, in pods mode, the client's namespace served), stopped and its
    pins and links removed whatever happens."""

    def __init__(self, lab: layout.Lab, manifests: Path, mode: str, tag: str) -> None:
        from ebpflb.lab.agentproc import AgentProcess

        self.lab, self.mode = lab, mode
        self.pin_dir = f"/sys/fs/bpf/ebpflb-socklb-{secrets.token_hex(3)}"
        self.proc = AgentProcess(
            lab.node_ns,
            manifests=manifests,
            pin_dir=self.pin_dir,
            log_path=lab.state_dir / f"agent-{tag}.log",
            extra_args=["--cleanup", "--dataplane", "bpf", "--socket-lb", mode],
        )

    def start(self, clusterip: str, pods: list[str]) -> float:
        t0 = time.monotonic()
        self.proc.start()
        self.proc.wait_ready(timeout=300)
        for path in PATHS:
            want = {(p, SERVER_PORT[path]) for p in pods}
            port = SERVICE_PORT[path]
            self.proc.wait_for(
                _ready(self.pin_dir, clusterip, port, want),
                timeout=60,
                what=f"{clusterip}:{port} in the pinned maps",
            )
        cookie = _client_cookie(self.lab.client.netns)
        if self.mode == "pods":
            self.proc.wait_for(
                lambda: cookie in _served(self.pin_dir),
                timeout=30,
                what="the client's namespace in the socket-LB set",
            )
        elif cookie in _served(self.pin_dir):
            raise RuntimeError("--socket-lb host serves the client's namespace")
        return time.monotonic() - t0

    def stop(self) -> None:
        try:
            status = self.proc.stop()
            if status not in (0, None):
                log(f"   (agent exited with status {status}; log: {self.proc.log_text()[-2000:]})")
        finally:
            remove_links(self.pin_dir)
            remove_pins(self.pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)


# --- measurement --------------------------------------------------------------------------


def _run(
    tools: dict[str, Path], lab: layout.Lab, addr: str, port: int, count: int, secs: float
) -> dict[str, Any]:
    return harness.loadgen(tools, lab.client.netns, "tcp", addr, port, count, secs)


def window(
    tools: dict[str, Path],
    lab: layout.Lab,
    agent: Agent,
    clusterip: str,
    load: Load,
) -> dict[str, Any]:
    """Direct and the agent mode's ClusterIP path, runs interleaved A B B A ..., with the
    kernel counters read around it (the self-check)."""
    direct_addr = ",".join(str(p.ip) for p in lab.pods)
    targets = {
        "direct": (direct_addr, SERVER_PORT["direct"]),
        agent.mode: (clusterip, SERVICE_PORT[agent.mode]),
    }
    for addr, port in targets.values():
        warm = _run(tools, lab, addr, port, load.warmup, 2.0)
        if warm["errors"] or warm["count"] == 0:
            raise RuntimeError(f"tcp to {addr}:{port} does not work: warm-up {warm}")
    before = counters(agent.pin_dir)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
    order = list(targets)
    for i in range(load.repeats):
        for label in order if i % 2 == 0 else order[::-1]:
            addr, port = targets[label]
            runs[label].append(_run(tools, lab, addr, port, load.count, load.max_seconds))
    after = counters(agent.pin_dir)
    if not agent.proc.alive():
        raise RuntimeError(f"the agent died during the measurement:\n{agent.proc.log_text()}")
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in ("new_flow", "sock_lb")}
    answered = sum(r["count"] - r["errors"] for r in runs[agent.mode])
    check = self_check(agent.mode, moved, answered)
    if not check["ok"]:
        raise RuntimeError(f"self-check failed in the {agent.mode} window: {check}")
    return {"runs": runs, "counters_moved": moved, "answered": answered, "self_check": check}


def self_check(mode: str, moved: dict[str, int], answered: int) -> dict[str, Any]:
    """pods: tc saw no new flow, socket-LB translated every answered connection; host:
    tc saw new flows, socket-LB none. (Not one new flow per connection on host: a
    client port reused while its conntrack entry lives is a conntrack hit.)"""
    if mode == "pods":
        ok = moved["new_flow"] == 0 and moved["sock_lb"] >= answered > 0
    else:
        ok = moved["new_flow"] > 0 and answered > 0 and moved["sock_lb"] == 0
    return {"ok": ok, "mode": mode, "answered": answered, **moved}


def run_scale(
    tools: dict[str, Path], lab: layout.Lab, n: int, load: Load, workdir: Path
) -> dict[str, Any]:
    pods = [str(p.ip) for p in lab.pods]
    clusterip = kubeproxy.cluster_ip(n - 1, IP_BASE)
    mdir = workdir / f"manifests-{n}"
    mdir.mkdir()
    text = json.dumps(manifest(n, pods))
    (mdir / ".services.tmp").write_text(text)
    (mdir / ".services.tmp").rename(mdir / "services.json")
    del text
    windows: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    sync_s: dict[str, list[float]] = {p: [] for p in PATHS}
    try:
        for rnd in range(load.rounds):
            for mode in PATHS:
                agent = Agent(lab, mdir, mode, f"{n}-{mode}-{rnd}")
                try:
                    sync_s[mode].append(round(agent.start(clusterip, pods), 2))
                    idle = wait_idle("the agent's first sync")
                    w = window(tools, lab, agent, clusterip, load)
                finally:
                    agent.stop()
                windows[mode].append(w)
                f = path_figures(w["runs"][mode], w["runs"]["direct"])
                log(
                    f"   round {rnd + 1} {mode:<4}: agent synced {sync_s[mode][-1]:.2f}s, idle "
                    f"after {idle:.1f}s; {f['conn_per_s']:.0f} conn/s vs direct "
                    f"{f['direct_conn_per_s']:.0f} (x{f['ratio_rps']:.3f}), p50 "
                    f"x{f['ratio_p50']:.3f}; new_flow +{w['counters_moved']['new_flow']}, "
                    f"sock_lb +{w['counters_moved']['sock_lb']}"
                )
    finally:
        shutil.rmtree(mdir, ignore_errors=True)
    paths: dict[str, Any] = {}
    for mode in PATHS:
        mode_runs = [r for w in windows[mode] for r in w["runs"][mode]]
        direct_runs = [r for w in windows[mode] for r in w["runs"]["direct"]]
        paths[mode] = path_figures(mode_runs, direct_runs)
        paths[mode]["agent_sync_s"] = sync_s[mode]
        paths[mode]["per_round"] = [
            {
                **path_figures(w["runs"][mode], w["runs"]["direct"]),
                "self_check": w["self_check"],
            }
            for w in windows[mode]
        ]
        window_ratios(paths[mode])
    all_direct = [r for mode in PATHS for w in windows[mode] for r in w["runs"]["direct"]]
    paths["direct"] = path_figures(all_direct, all_direct)
    return {
        "services": n,
        "clusterip": clusterip,
        "paths": paths,
        "runs": {m: [w["runs"] for w in windows[m]] for m in PATHS},
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>7} {'path':<7} {'conn/s':>8} {'p50 us':>7} {'direct conn/s':>13} "
        f"{'x conn/s':>8} {'x p50':>6} {'err':>4}  target"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        for path in ("direct", *PATHS):
            f = row["paths"][path]
            met = "n/a" if path == "direct" else "met" if f["target_met"] else "NOT met"
            lines.append(
                f"{row['services']:>7} {path:<7} {f['conn_per_s']:>8.0f} {f['p50_us']:>7.1f} "
                f"{f['direct_conn_per_s']:>13.0f} {f['ratio_rps']:>8.3f} {f['ratio_p50']:>6.3f} "
                f"{f['errors']:>4}  {met}"
            )
    return "\n".join(lines)


def run(scales: tuple[int, ...], load: Load, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    log(
        f"== ebpflb socket-LB benchmark{' (quick)' if quick else ''}: kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs; scales {', '.join(map(str, scales))}"
    )
    log(f"   {TARGET}")
    log(
        f"   per scale {load.rounds} round(s) of (pods window, host window), each window "
        f"{load.repeats} direct/ClusterIP run pairs of up to {load.count} connections / "
        f"{load.max_seconds:g}s; load on CPU {harness.LOAD_CPU}"
    )
    tools = compile_tools()
    name = "s" + secrets.token_hex(3)[:5]
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-socklb-"))
    lab: layout.Lab | None = None
    try:
        log(f"== lab {name}: one routed node, {ENDPOINTS} pods, client")
        lab = built = build.up(layout.LabSpec(name, pods=ENDPOINTS))
        with responders(tools, built) as pids:
            log(f"   responders (PIDs {', '.join(map(str, pids))})")
            for n in scales:
                log(f"== {n} Services ({ENDPOINTS} endpoints each)")
                rows.append(run_scale(tools, built, n, load, workdir))
    finally:
        if lab is not None or build.leftovers(name):
            build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    met = all(r["paths"]["pods"]["target_met"] for r in rows)
    return {
        "target": TARGET,
        "quick": quick,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load": load.__dict__,
        "load_cpu": harness.LOAD_CPU,
        "server_ports": SERVER_PORT,
        "service_ports": SERVICE_PORT,
        "notes": [
            "direct = the client namespace (a pod of node 1) -> one of the 5 pods' IPs at "
            "random per new connection; pods/host = the same client -> the ClusterIP of the "
            "last of N Services, agent run with --socket-lb pods / host",
            "ratios: median over the agent windows of (the path's median / the median of "
            "the direct runs interleaved with it in that window, A B B A ...); pooled_ratio_*: "
            "medians over all windows",
            "TCP: one HTTP request per new connection, client closes with SO_LINGER 0",
            "target met: conn/s >= 0.97x and p50 <= 1.03x direct, no errors",
        ],
        "rows": rows,
        "target_met_pods": met,
        "runtime_s": round(time.monotonic() - started, 1),
    }


def report(res: dict[str, Any]) -> None:
    log("\n== results (x = ratio to the direct path measured in the same windows)")
    log(table(res["rows"]))
    for path in PATHS:
        verdicts = [
            f"N={r['services']} {'met' if r['paths'][path]['target_met'] else 'NOT met'}"
            for r in res["rows"]
        ]
        log(f"   {path}: {', '.join(verdicts)}")
    verdict = "MET at every scale measured" if res["target_met_pods"] else "NOT MET"
    log(f"\n   {res['target']} (socket-LB for pods): {verdict}")
    log(f"   total runtime {res['runtime_s']}s; JSON: {RESULTS}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb socket-LB (pods) vs tc benchmark")
    ap.add_argument("--quick", action="store_true", help="N=10 only, one short round")
    ap.add_argument(
        "--scales",
        type=parse_scales,
        default=None,
        help="comma-separated Service counts (default 10,1000,10000; 100000 takes ~1 GB)",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=harness.LOAD_CPU,
        help="CPU for the load generator and responders (-1: no pinning)",
    )
    args = ap.parse_args(argv)
    scales = args.scales or (SCALES_QUICK if args.quick else SCALES_DEFAULT)
    load = LOAD_QUICK if args.quick else LOAD_FULL
    _place(args.cpu)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        res = run(scales, load, args.quick)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
