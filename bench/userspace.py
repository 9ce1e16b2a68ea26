"""The userspace data path against the kernel path and the direct path, in one run:

    python -m bench.userspace [--quick] [--seconds S]

- request/response: new-connection HTTP (one request per TCP connection) and UDP
  request/response, req/s and p50/p99, with bench/harness.py's C loadgen and responders
  (the same CPU placement: load generator and responders on one CPU, everything else,
  the agent and so the userspace proxy included, on the others);
- bulk TCP throughput with iperf3: server in pod-1, client in the client namespace,
  to pod-1 directly and through each data path's ClusterIP.

Each measured path has its own server ports (TIME_WAIT, see DESIGN): direct uses
datapath's "direct" ports, bpf its "ebpflb" ports, userspace its "iptables" ports; iperf3
servers listen on 5201 (direct), 5202 (bpf), 5203 (userspace). The direct path is
measured interleaved with each data path (harness.measure). Results go to
bench/results/userspace.json. Everything started is stopped by PID and the lab removed,
also on failure and Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess

RESULTS = harness.BENCH_DIR / "results" / "userspace.json"
TARGET = (
    "target: userspace >= 25% of direct req/s (new-connection HTTP and UDP) and "
    ">= 1 Gbit/s bulk TCP"
)
MODES = {  # mode -> (ClusterIP for request/response, ClusterIP for bulk, datapath ports)
    "bpf": ("10.96.0.1", "10.96.1.1", harness.PORTS["ebpflb"]),
    "userspace": ("10.96.0.2", "10.96.1.2", harness.PORTS["iptables"]),
}
IPERF_PORT = {"direct": 5201, "bpf": 5202, "userspace": 5203}
BULK_SVC_PORT = 5201
# The agent (and so the userspace proxy) on the load CPU, beside the load generator and
# the responders, rather than on another CPU: on this VM a wake-up across CPUs costs
# ~150 us, and the proxy is woken twice per request (--agent-cpu other to compare).
AGENT_ON_LOAD_CPU = True


def log(msg: str) -> None:
    print(msg, flush=True)


def manifest(mode: str, pods: list[str]) -> dict[str, Any]:
    ip, bulk_ip, (tcp, udp) = MODES[mode]

    def svc(
        name: str, cluster_ip: str, ports: list[tuple[str, int, str, int]], endpoints: list[str]
    ) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {
                    "clusterIP": cluster_ip,
                    "ports": [
                        {"name": n, "port": p, "protocol": proto, "targetPort": t}
                        for n, p, proto, t in ports
                    ],
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-x1",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": n, "port": t, "protocol": proto} for n, _, proto, t in ports],
                "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in endpoints],
            },
        ]

    items = svc("rr", ip, [("http", 80, "TCP", tcp), ("dns", 53, "UDP", udp)], pods)
    items += svc("bulk", bulk_ip, [("iperf", BULK_SVC_PORT, "TCP", IPERF_PORT[mode])], pods[:1])
    return {"apiVersion": "v1", "kind": "List", "items": items}


def iperf(client_ns: str, addr: str, port: int, seconds: float) -> dict[str, Any]:
    argv = [
        "ip",
        "netns",
        "exec",
        client_ns,
        *harness._pin(["iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}", "-J"]),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 to {addr}:{port} failed: {proc.stderr.strip()[:500]}") from None
    if "error" in out:
        raise RuntimeError(f"iperf3 to {addr}:{port}: {out['error']}")
    end = out["end"]
    return {
        "gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
        "retransmits": end["sum_sent"].get("retransmits", 0),
        "seconds": seconds,
    }


class IperfServers:
    """iperf3 servers in pod-1, one per measured path; stopped by PID."""

    def __init__(self, pod_ns: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for port in IPERF_PORT.values():
            self.procs.append(
                netns.spawn(
                    pod_ns,
                    harness._pin(["iperf3", "-s", "-p", str(port)]),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def wait(self, client_ns: str, pod_ip: str) -> None:
        deadline = time.monotonic() + 5
        for port in IPERF_PORT.values():
            harness._wait_listening(client_ns, pod_ip, port, deadline, self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)


def run_mode(
    mode: str,
    tools: dict[str, Path],
    lab: layout.Lab,
    load: harness.Load,
    workdir: Path,
    bulk_seconds: float,
) -> dict[str, Any]:
    pods = [str(p.ip) for p in lab.pods]
    ip, bulk_ip, _ = MODES[mode]
    manifests = workdir / f"manifests-{mode}"
    manifests.mkdir()
    (manifests / "bench.json").write_text(json.dumps(manifest(mode, pods)))
    pin_dir = f"/sys/fs/bpf/ebpflb-bench-{secrets.token_hex(3)}"
    state_dir = str(workdir / f"state-{mode}")
    agent = AgentProcess(
        lab.node_ns,
        manifests=manifests,
        pin_dir=pin_dir,
        log_path=lab.state_dir / f"agent-{mode}.log",
        extra_args=["--cleanup", "--dataplane", mode, "--state-dir", state_dir],
    )
    try:
        others = os.sched_getaffinity(0)
        if AGENT_ON_LOAD_CPU and harness.LOAD_CPU >= 0:
            os.sched_setaffinity(0, {harness.LOAD_CPU})  # the agent inherits it
        try:
            agent.start()
        finally:
            os.sched_setaffinity(0, others)
        agent.wait_ready(timeout=120)
        harness.wait_idle(f"the {mode} agent's start")
        both = harness.measure(
            tools, lab, {"mode": (ip, 80, 53), "direct": harness.direct_target(lab)}, load
        )
        bulk = iperf(lab.client.netns, bulk_ip, BULK_SVC_PORT, bulk_seconds)
        bulk_direct = iperf(lab.client.netns, pods[0], IPERF_PORT["direct"], bulk_seconds)
        if not agent.alive():
            raise RuntimeError(f"the agent died:\n{agent.log_text()[-2000:]}")
        out: dict[str, Any] = {"bulk": bulk, "bulk_direct": bulk_direct}
        for proto in ("tcp", "udp"):
            res = harness.summarize(both["mode"][proto])
            base = harness.summarize(both["direct"][proto])
            out[proto] = {"result": res, "direct": base, "ratio": harness.ratios(res, base)}
            log(
                f"   {mode:<9} {proto}: {res['rps']:.0f} req/s (direct {base['rps']:.0f}; "
                f"x{out[proto]['ratio']['rps']:.3f}), p50 {res['p50_us']:.0f}us "
                f"(direct {base['p50_us']:.0f}), p99 {res['p99_us']:.0f}us "
                f"(direct {base['p99_us']:.0f}), errors {res['errors']:.0f}"
            )
        bulk_ratio = bulk["gbit_s"] / max(1e-9, bulk_direct["gbit_s"])
        log(
            f"   {mode:<9} bulk: {bulk['gbit_s']:.2f} Gbit/s (direct "
            f"{bulk_direct['gbit_s']:.2f}; x{bulk_ratio:.3f})"
        )
        return out
    finally:
        status = agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS)
        if status not in (0, None):
            log(f"   (agent exited with status {status}; log: {agent.log_text()[-2000:]})")


def run(quick: bool, bulk_seconds: float) -> dict[str, Any]:
    started = time.monotonic()
    load = harness.LOAD_QUICK if quick else harness.LOAD_FULL
    log(
        f"== ebpflb userspace data-path benchmark{' (quick)' if quick else ''}: "
        f"{os.cpu_count()} CPUs; {TARGET}"
    )
    where = "on the same CPU" if AGENT_ON_LOAD_CPU else "on the other CPUs"
    log(
        f"   load generator, responders and iperf3 on CPU {harness.LOAD_CPU}; the agent (and its "
        f"proxy) {where}"
        if harness.LOAD_CPU >= 0
        else "   no CPU pinning"
    )
    tools = harness.compile_tools()
    name = "u" + secrets.token_hex(3)[:5]
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-bench-us-"))
    results: dict[str, Any] = {}
    lab: layout.Lab | None = None
    iperfs: IperfServers | None = None
    try:
        log(f"== lab {name}: node, 3 pods, client")
        lab = build.up(layout.LabSpec(name, pods=3))
        with harness.responders(tools, lab):
            iperfs = IperfServers(lab.pods[0].netns)
            iperfs.wait(lab.client.netns, str(lab.pods[0].ip))
            for mode in MODES:
                log(f"== {mode}")
                results[mode] = run_mode(mode, tools, lab, load, workdir, bulk_seconds)
                harness.wait_idle(f"stopping the {mode} agent")
    finally:
        if iperfs is not None:
            iperfs.stop()
        if lab is not None or build.leftovers(name):
            build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    us = results["userspace"]
    met = {
        "tcp_rps": us["tcp"]["ratio"]["rps"] >= 0.25,
        "udp_rps": us["udp"]["ratio"]["rps"] >= 0.25,
        "bulk": us["bulk"]["gbit_s"] >= 1.0,
    }
    return {
        "target": TARGET,
        "quick": quick,
        "cpus": os.cpu_count(),
        "load": load.__dict__,
        "load_cpu": harness.LOAD_CPU,
        "agent_on_load_cpu": AGENT_ON_LOAD_CPU,
        "modes": results,
        "target_met": met,
        "runtime_s": round(time.monotonic() - started, 1),
    }


def report(res: dict[str, Any]) -> None:
    log("\n== results (ratio = to the direct path measured interleaved with the mode)")
    log(
        f"{'path':<10} {'HTTP req/s':>11} {'x':>6} {'p50 us':>7} {'p99 us':>7} "
        f"{'UDP req/s':>10} {'x':>6} {'p50 us':>7} {'p99 us':>7} {'bulk Gbit/s':>12}"
    )
    first = next(iter(res["modes"].values()))
    rows = [
        (
            "direct",
            first["tcp"]["direct"],
            1.0,
            first["udp"]["direct"],
            1.0,
            first["bulk_direct"]["gbit_s"],
        )
    ]
    for mode, m in res["modes"].items():
        rows.append(
            (
                mode,
                m["tcp"]["result"],
                m["tcp"]["ratio"]["rps"],
                m["udp"]["result"],
                m["udp"]["ratio"]["rps"],
                m["bulk"]["gbit_s"],
            )
        )
    for label, t, tx, u, ux, bulk in rows:
        log(
            f"{label:<10} {t['rps']:>11.0f} {tx:>6.3f} {t['p50_us']:>7.0f} {t['p99_us']:>7.0f} "
            f"{u['rps']:>10.0f} {ux:>6.3f} {u['p50_us']:>7.0f} {u['p99_us']:>7.0f} "
            f"{bulk:>12.2f}"
        )
    met = res["target_met"]
    parts = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in met.items())
    log(f"\n   {res['target']}: {'MET' if all(met.values()) else 'NOT MET'} ({parts})")
    log(f"   total runtime {res['runtime_s']}s; JSON: {RESULTS}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ebpflb userspace data-path benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per path")
    ap.add_argument(
        "--cpu",
        type=int,
        default=harness.LOAD_CPU,
        help="CPU for the load generator, responders and iperf3 (-1: no pinning)",
    )
    ap.add_argument(
        "--agent-cpu",
        choices=("load", "other"),
        default="load",
        help="run the agent on the load CPU (default) or on the other CPUs",
    )
    args = ap.parse_args(argv)
    global AGENT_ON_LOAD_CPU
    AGENT_ON_LOAD_CPU = args.agent_cpu == "load"
    harness._place(args.cpu)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    if shutil.which("iperf3") is None:
        print("iperf3 not found (apt-get install iperf3)", file=sys.stderr)
        return 1
    old = signal.signal(signal.SIGTERM, harness._on_sigterm)
    try:
        res = run(args.quick, args.seconds)
    except (KeyboardInterrupt, harness.Interrupted):
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
