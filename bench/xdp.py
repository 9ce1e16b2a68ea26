"""Traffic from outside to a NodePort whose backend is on another node: XDP on the
uplink vs tc only vs kube-proxy-shaped iptables, each measured interleaved (A B A B)
with the direct routed path in the same window, in one run.

Two-node routed lab (bench.harness's responders and load generator): the backend is
node-2's pod; the outside client ext-1 sends new TCP connections (connections/s) and
UDP request/response pairs (2 packets each: packets/s = 2 x req/s) either to node-1's
NodePort (source NAT, then across the underlay to node-2; replies come back through
node-1) or straight to the pod by a route via node-1 (the direct path: the same
hops, no translation). Modes: ``xdp`` (agent --xdp native), ``tc`` (--xdp off), and
``iptables`` (kube-proxy's nat rules for --services Services plus the NodePort's
KUBE-NODEPORTS/KUBE-EXT chains, no agent).

The underlay's veths have tx checksum offload off (ethtool -K eth0 tx off on the
nodes and the outside client), so they deliver complete checksums as a NIC from a
wire does (see tests/lab/test_xdp.py). The lab's uplinks are veths: native XDP
translates there and hands the frame to the stack (no redirect into a veth, whose
peer runs no NAPI), which the xdp_fib_pass counter shows.

    python -m bench.xdp [--quick] [--services N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness, kubeproxy, lbmodes
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.podnet import Cni

RESULTS = harness.BENCH_DIR / "results" / "xdp.json"
NODEPORT_TCP, NODEPORT_UDP = 30800, 30801
CLUSTER_IP = "10.96.200.1"
MODES = {"xdp": "native", "tc": "off"}


def _tx_off(lab: layout.Lab) -> None:
    for ns in [n.netns for n in lab.nodes] + [o.netns for o in lab.outside]:
        netns.run(ns, ["ethtool", "-K", "eth0", "tx", "off"])


def _measure(
    tools: dict[str, Path], client: str, targets: dict[str, harness.Target], load: harness.Load
) -> dict[str, harness.Runs]:
    """harness.measure from ``client`` (an outside client, not the node's)."""
    out: dict[str, harness.Runs] = {label: {"tcp": [], "udp": []} for label in targets}
    for proto in ("tcp", "udp"):
        for addr, tcp_port, udp_port in targets.values():
            port = tcp_port if proto == "tcp" else udp_port
            warm = harness.loadgen(tools, client, proto, addr, port, load.warmup, 2.0)
            if warm["errors"] or warm["count"] == 0:
                raise RuntimeError(f"{proto} to {addr}:{port} does not work: warm-up {warm}")
        for _ in range(load.repeats):
            for label, (addr, tcp_port, udp_port) in targets.items():
                port = tcp_port if proto == "tcp" else udp_port
                out[label][proto].append(
                    harness.loadgen(tools, client, proto, addr, port, load.count, load.max_seconds)
                )
    return out


def _manifests(lab: layout.Lab, backend: str, directory: Path) -> None:
    tcp_target, udp_target = harness.PORTS["ebpflb"]
    ports = [
        ("http", "TCP", 80, tcp_target, NODEPORT_TCP),
        ("dns", "UDP", 53, udp_target, NODEPORT_UDP),
    ]
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "np", "namespace": "bench"},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP,
            "ports": [
                {"name": n, "protocol": p, "port": sp, "targetPort": tp, "nodePort": np}
                for n, p, sp, tp, np in ports
            ],
        },
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "np-1",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": "np"},
        },
        "addressType": "IPv4",
        "ports": [{"name": n, "protocol": p, "port": tp} for n, p, _, tp, _ in ports],
        "endpoints": [
            {"addresses": [backend], "conditions": {"ready": True}, "nodeName": "node-2"}
        ],
    }
    items = [lab.node_manifest(1), lab.node_manifest(2), svc, eps]
    (directory / "all.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )


def _counters(pin_dir: str) -> dict[str, int]:
    from ebpflb.dataplane.bpf.maps import BpfMaps
    from ebpflb.dataplane.bpf.telemetry import read_telemetry

    with BpfMaps(pin_dir) as maps:
        counters = read_telemetry(maps).counters
    return {
        k: int(counters.get(k, 0)) for k in ("xdp_forward", "xdp_reply", "xdp_fib_pass", "new_flow")
    }


def run_agent_mode(
    tools: dict[str, Path],
    lab: layout.Lab,
    mode: str,
    targets: dict[str, harness.Target],
    load: harness.Load,
    workdir: Path,
) -> tuple[dict[str, harness.Runs], dict[str, Any]]:
    node = str(lab.node(1).address)
    backend = str(lab.pod(2).ip)
    manifests = workdir / f"manifests-{mode}"
    manifests.mkdir()
    _manifests(lab, backend, manifests)
    pin_dir = f"/sys/fs/bpf/ebpflb-benchxdp-{secrets.token_hex(3)}"
    agent = AgentProcess(
        lab.node(1).netns,
        manifests=manifests,
        pin_dir=pin_dir,
        log_path=lab.state_dir / f"agent-xdp-{mode}.log",
        extra_args=["--cleanup", "--node-name", "node-1", "--xdp", MODES[mode]],
    )
    tcp_target, udp_target = harness.PORTS["ebpflb"]
    try:
        agent.start()
        agent.wait_ready(timeout=120)
        for port, proto, target in (
            (NODEPORT_TCP, abi.IPPROTO_TCP, tcp_target),
            (NODEPORT_UDP, abi.IPPROTO_UDP, udp_target),
        ):
            ready = functools.partial(
                lbmodes.ebpflb_service_ready, pin_dir, node, port, proto, {(backend, target)}
            )
            agent.wait_for(ready, timeout=30, what=f"{node}:{port} in the pinned maps")
        harness.wait_idle("the agent's start")
        before = _counters(pin_dir)
        runs = _measure(tools, lab.outside[0].netns, targets, load)
        after = _counters(pin_dir)
    finally:
        agent.stop()
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
    moved = {k: after[k] - before[k] for k in after}
    harness.log(f"   {mode}: counters moved {moved}")
    return runs, {"counters": moved}


def _iptables_text(lab: layout.Lab, n: int) -> str:
    tcp_target, udp_target = harness.PORTS["iptables"]
    backend = str(lab.pod(2).ip)
    background = kubeproxy.service_ports(
        max(0, n - 1), base_ip="10.96.100.0", endpoints=(backend,), tcp_target=1, udp_target=1
    )
    measured = kubeproxy.service_ports(
        1, base_ip="10.96.200.0", endpoints=(backend,), tcp_target=tcp_target, udp_target=udp_target
    )
    text = kubeproxy.restore_input(background + measured)
    chains, rules = [], []
    for sp, nodeport in zip(measured, (NODEPORT_TCP, NODEPORT_UDP), strict=True):
        ext = kubeproxy._chain_hash("KUBE-EXT-", sp.svc_port_name, sp.protocol)
        chains.append(f":{ext} - [0:0]")
        comment = f'-m comment --comment "{sp.svc_port_name}"'
        rules += [
            f"-A KUBE-NODEPORTS -p {sp.protocol} {comment} -m {sp.protocol} "
            f"--dport {nodeport} -j {ext}",
            f'-A {ext} -m comment --comment "masquerade traffic for {sp.svc_port_name} '
            'external destinations" -j KUBE-MARK-MASQ',
            f"-A {ext} -j {kubeproxy.svc_chain(sp)}",
        ]
    text = text.replace(
        ":POSTROUTING ACCEPT [0:0]\n", ":POSTROUTING ACCEPT [0:0]\n" + "\n".join(chains) + "\n", 1
    )
    return text.replace("COMMIT\n", "\n".join(rules) + "\nCOMMIT\n")


def run_iptables(
    tools: dict[str, Path],
    lab: layout.Lab,
    n: int,
    targets: dict[str, harness.Target],
    load: harness.Load,
) -> dict[str, harness.Runs]:
    nft_backend = "nf_tables" in lbmodes.iptables_version()
    text = _iptables_text(lab, n)
    try:
        lbmodes._restore(lab.node(1).netns, text)
        harness.wait_idle("iptables-restore")
        harness.log(f"   iptables: {kubeproxy.rule_count(text)} nat rules")
        return _measure(tools, lab.outside[0].netns, targets, load)
    finally:
        lbmodes.flush_nat(lab.node(1).netns, nft_backend)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="NodePort from outside: XDP vs tc vs iptables")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--services", type=int, default=1000, help="Services in the iptables rules")
    ap.add_argument("--cpu", type=int, default=harness.LOAD_CPU, help="load CPU (-1: none)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    if shutil.which("ethtool") is None:
        print("ethtool is missing (make setup installs it)", file=sys.stderr)
        return 1
    harness._place(args.cpu)
    load = harness.LOAD_QUICK if args.quick else harness.LOAD_FULL
    tools = harness.compile_tools()
    name = "x" + secrets.token_hex(3)[:5]
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-bench-xdp-"))
    harness.log(f"== NodePort from outside, remote backend: lab {name} (2 nodes, routed)")
    results: dict[str, Any] = {"load": load.__dict__, "services_iptables": args.services}
    try:
        lab = build.up(layout.LabSpec(name, pods=1, nodes=2, cni=Cni.ROUTED))
        _tx_off(lab)
        node1 = str(lab.node(1).address)
        # the direct path: ext-1 -> node-1 -> node-2 -> pod, routed, untranslated
        netns.run(
            lab.outside[0].netns,
            ["ip", "route", "add", str(layout.pod_cidr(2)), "via", node1],
        )
        direct: harness.Target = (str(lab.pod(2).ip), *harness.PORTS["direct"])
        with harness.responders(tools, lab):
            for mode in ("xdp", "tc", "iptables"):
                harness.log(f"-- {mode}")
                if mode == "iptables":
                    target: harness.Target = (node1, NODEPORT_TCP, NODEPORT_UDP)
                    both = run_iptables(
                        tools, lab, args.services, {"mode": target, "direct": direct}, load
                    )
                    info: dict[str, Any] = {}
                else:
                    target = (node1, NODEPORT_TCP, NODEPORT_UDP)
                    both, info = run_agent_mode(
                        tools, lab, mode, {"mode": target, "direct": direct}, load, workdir
                    )
                harness.wait_idle(mode)
                out: dict[str, Any] = dict(info)
                for proto in ("tcp", "udp"):
                    res = harness.summarize(both["mode"][proto])
                    base = harness.summarize(both["direct"][proto])
                    out[proto] = {"mode": res, "direct": base, "ratio": harness.ratios(res, base)}
                    unit = "conn/s" if proto == "tcp" else "req/s"
                    ratio = out[proto]["ratio"]
                    harness.log(
                        f"   {proto}: {res['rps']:.0f} {unit} vs direct {base['rps']:.0f}: "
                        f"x{ratio['rps']:.3f}, p50 x{ratio['p50']:.3f}, errors {res['errors']:.0f}"
                    )
                results[mode] = out
    finally:
        build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    harness.log(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
