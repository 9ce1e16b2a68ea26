"""Traffic from outside to a node's NodePort: XDP on the uplink vs tc only vs
kube-proxy-shaped iptables, each measured interleaved (A B A B) with the direct routed
path in the same window, in one run.

Two-node routed lab (bench.harness's responders and C load generator), pod 1 on node-1
and pod 2 on node-2; the outside client ext-1 reaches both nodes' pod ranges by routes
via node-1 (the direct path: the same hops, no translation). Two NodePorts on node-1:

- **new TCP connections/s**: a Service with ``externalTrafficPolicy: Local`` whose
  backend is node-1's pod. Local keeps the client address, so no source NAT: with
  Cluster every new connection through one node to one backend claims a source-NAT
  port, and a port is taken over only once its flow has been closed for 60 s (or idle
  past its lifetime), which caps a sustained SNATed new-connection rate at about
  4,536 / 60 s per (node, backend): a rate benchmark of new connections would measure
  that cap, not the data path. Direct: ext-1 -> node-1 -> pod 1.
- **UDP packets/s** (request/response, 2 packets each, so packets/s = 2 x req/s): a
  ``Cluster`` Service whose backend is node-2's pod, so source NAT, across the underlay
  to node-2, replies back through node-1. One connected UDP socket per round is one
  flow, so this reuses its NAT port. Direct: ext-1 -> node-1 -> node-2 -> pod 2, and
  back the same way: node-2 routes ext-1's address via node-1 (a /32 route), as the
  source-NATed replies must go. Without it node-2 would answer ext-1 straight over the
  shared underlay, a hop and a bridge crossing fewer (about 10% more packets/s here,
  with or without the agent): source NAT's cost, not the data path's.

Modes: ``xdp`` (agent ``--xdp native``), ``xdp-redirect`` (native, the lab's wire made
to take XDP frames, below), ``xdp-generic`` (``--xdp generic``), ``tc``
(``--xdp off``: the tc programs on the uplink and the pod veths), and ``iptables``
(kube-proxy's nat rules for ``--services`` Services plus the two NodePorts'
KUBE-NODEPORTS/KUBE-EXT (and for Local KUBE-SVL) chains, no agent). While the agent
runs, the direct path's packets pass its programs too (no Service matches them).

The underlay's veths have tx checksum offload off (ethtool -K eth0 tx off on the
nodes and the outside client), so they deliver complete checksums as a NIC from a wire
does (see tests/lab/test_xdp.py). The lab's uplinks are veths, and a native XDP
redirect into a veth needs NAPI on its peer (no XDP program there, none in the pods):
native XDP therefore translates in the driver hook and hands the frame to the stack
(xdp_fib_pass), while generic XDP redirects to the pod's veth or out of the uplink
(xdp_forward, xdp_reply) after the skb is built. ``xdp-redirect`` shows what native
XDP does where its uplink can transmit XDP frames, as a NIC's driver can: the bench
turns GRO on at node-1's port of the underlay bridge (the lab's wire; a veth runs NAPI,
and so takes redirected frames, when GRO is on or an XDP program is attached) and
lists node-1's eth0 in ebpflb_xdpdev, as the agent lists a NIC uplink (it does not list
a veth: it cannot see its peer). The UDP flow's frames are then redirected back out of
eth0 in the driver hook (xdp_forward, xdp_reply), the TCP one's still go to the stack
(the pod veths' peers run no NAPI). The self-check asserts each mode's counters moved
and tc-only's xdp_* counters did not.

Everything built is removed at the end, on failure and on Ctrl-C/SIGTERM: the agent
stopped with ``--cleanup`` (its XDP and tc programs detached; checked, and detached by
ip(8) if not), pins removed, the nat table flushed, the lab taken down.

    python -m bench.xdp [--quick] [--services N]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness, kubeproxy, lbmodes
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.dataplane.bpf.syscall import PinnedMap
from ebpflb.dataplane.bpf.xdp import write_targets
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
from ebpflb.lab.podnet import Cni

RESULTS = harness.BENCH_DIR / "results" / "xdp.json"
NODEPORT_TCP, NODEPORT_UDP = 30800, 30801  # Local (TCP), Cluster (UDP)
CLUSTER_IPS = {"tcp": "10.96.200.1", "udp": "10.96.200.2"}
AGENT_MODES = {"xdp": "native", "xdp-redirect": "native", "xdp-generic": "generic", "tc": "off"}
MODES = ("xdp", "xdp-redirect", "xdp-generic", "tc", "iptables")
WIRE_PORT = "n1"  # node-1's port on the underlay bridge (ebpflb.lab.build)
XDP_COUNTERS = ("xdp_forward", "xdp_reply", "xdp_fib_pass")
XDP_ATTACHED = {"native": 1, "generic": 2}  # ip -d link's xdp.mode (XDP_ATTACHED_*)
PROTOS = ("tcp", "udp")

# label -> proto -> (address, port)
Targets = dict[str, dict[str, tuple[str, int]]]


def _tx_off(lab: layout.Lab) -> None:
    for ns in [n.netns for n in lab.nodes] + [o.netns for o in lab.outside]:
        netns.run(ns, ["ethtool", "-K", "eth0", "tx", "off"])


def _backends(lab: layout.Lab) -> dict[str, str]:
    """TCP (Local): node-1's pod; UDP (Cluster): node-2's pod."""
    return {"tcp": str(lab.pod(1).ip), "udp": str(lab.pod(2).ip)}


def targets(lab: layout.Lab) -> Targets:
    node1 = str(lab.node(1).address)
    be = _backends(lab)
    tcp_direct, udp_direct = harness.PORTS["direct"]
    return {
        "mode": {"tcp": (node1, NODEPORT_TCP), "udp": (node1, NODEPORT_UDP)},
        "direct": {"tcp": (be["tcp"], tcp_direct), "udp": (be["udp"], udp_direct)},
    }


def _measure(
    tools: dict[str, Path], client: str, tgts: Targets, load: harness.Load
) -> dict[str, harness.Runs]:
    """harness.measure from ``client`` (an outside client), each protocol to its own
    addresses: warm-up, then load.repeats rounds, the targets interleaved."""
    out: dict[str, harness.Runs] = {label: {p: [] for p in PROTOS} for label in tgts}
    for proto in PROTOS:
        for by_proto in tgts.values():
            addr, port = by_proto[proto]
            warm = harness.loadgen(tools, client, proto, addr, port, load.warmup, 2.0)
            if warm["errors"] or warm["count"] == 0:
                raise RuntimeError(f"{proto} to {addr}:{port} does not work: warm-up {warm}")
        for _ in range(load.repeats):
            for label, by_proto in tgts.items():
                addr, port = by_proto[proto]
                out[label][proto].append(
                    harness.loadgen(tools, client, proto, addr, port, load.count, load.max_seconds)
                )
    return out


def manifests(lab: layout.Lab) -> dict[str, Any]:
    """Node objects, the Local TCP NodePort (backend on node-1) and the Cluster UDP
    NodePort (backend on node-2)."""
    tcp_target, udp_target = harness.PORTS["ebpflb"]
    be = _backends(lab)
    specs = [
        ("np-local", "tcp", "TCP", 80, tcp_target, NODEPORT_TCP, "Local", "node-1"),
        ("np-cluster", "udp", "UDP", 53, udp_target, NODEPORT_UDP, "Cluster", "node-2"),
    ]
    items: list[dict[str, Any]] = [lab.node_manifest(1), lab.node_manifest(2)]
    for name, proto, kproto, port, target, nodeport, policy, node in specs:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {
                    "type": "NodePort",
                    "clusterIP": CLUSTER_IPS[proto],
                    "externalTrafficPolicy": policy,
                    "ports": [
                        {
                            "name": proto,
                            "protocol": kproto,
                            "port": port,
                            "targetPort": target,
                            "nodePort": nodeport,
                        }
                    ],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": proto, "protocol": kproto, "port": target}],
                "endpoints": [
                    {"addresses": [be[proto]], "conditions": {"ready": True}, "nodeName": node}
                ],
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _counters(pin_dir: str) -> dict[str, int]:
    from ebpflb.dataplane.bpf.maps import BpfMaps
    from ebpflb.dataplane.bpf.telemetry import read_telemetry

    with BpfMaps(pin_dir) as maps:
        counters = read_telemetry(maps).counters
    return {k: int(counters.get(k, 0)) for k in (*XDP_COUNTERS, "new_flow")}


def xdp_attached(ns: str) -> int | None:
    """The XDP mode on ``ns``'s eth0 as ip(8) reports it (1 native, 2 generic; None:
    no program)."""
    out = netns.run(ns, ["ip", "-j", "-d", "link", "show", "eth0"])
    xdp = json.loads(out.stdout)[0].get("xdp")
    return None if xdp is None else int(xdp["mode"])


def check_counters(mode: str, moved: dict[str, int], requests: int) -> list[str]:
    """What is wrong with the counters a mode moved (empty: right). ``requests``: the
    requests sent to the NodePorts."""
    problems: list[str] = []
    if moved["new_flow"] <= 0:
        problems.append(f"{mode}: no new flow counted")
    if mode == "tc":
        problems += [
            f"tc: {k} moved by {v}" for k, v in moved.items() if k.startswith("xdp_") and v
        ]
    elif mode == "xdp":
        if moved["xdp_fib_pass"] < requests:
            problems.append(f"xdp: xdp_fib_pass {moved['xdp_fib_pass']} < {requests} requests")
    elif mode in ("xdp-generic", "xdp-redirect"):
        for k in ("xdp_forward", "xdp_reply"):
            if moved[k] <= 0:
                problems.append(f"{mode}: {k} did not move")
    return problems


def _wire_takes_xdp(lab: layout.Lab, pin_dir: str) -> None:
    """xdp-redirect: GRO on node-1's bridge port (its veth peer then runs NAPI and takes
    XDP frames) and node-1's eth0 added to ebpflb_xdpdev (the agent rewrites the map
    only when its own set of targets changes)."""
    assert lab.underlay_ns is not None
    netns.run(lab.underlay_ns, ["ethtool", "-K", WIRE_PORT, "gro", "on"])
    out = netns.run(lab.node(1).netns, ["ip", "-j", "link", "show", "eth0"])
    eth0 = int(json.loads(out.stdout)[0]["ifindex"])
    with PinnedMap(os.path.join(pin_dir, abi.MAP_XDP_DEVS)) as m:
        listed = {int(k.value) for k in m.keys(ctypes.c_uint32)}
    write_targets(pin_dir, listed | {eth0})


def run_agent_mode(
    tools: dict[str, Path],
    lab: layout.Lab,
    mode: str,
    load: harness.Load,
    workdir: Path,
) -> tuple[dict[str, harness.Runs], dict[str, Any]]:
    node = str(lab.node(1).address)
    node_ns = lab.node(1).netns
    be = _backends(lab)
    directory = workdir / f"manifests-{mode}"
    directory.mkdir()
    (directory / "all.json").write_text(json.dumps(manifests(lab)))
    pin_dir = f"/sys/fs/bpf/ebpflb-benchxdp-{secrets.token_hex(3)}"
    agent = AgentProcess(
        node_ns,
        manifests=directory,
        pin_dir=pin_dir,
        log_path=lab.state_dir / f"agent-xdp-{mode}.log",
        extra_args=["--cleanup", "--node-name", "node-1", "--xdp", AGENT_MODES[mode]],
    )
    tcp_target, udp_target = harness.PORTS["ebpflb"]
    info: dict[str, Any] = {}
    try:
        agent.start()
        agent.wait_ready(timeout=120)
        for port, proto, backend in (
            (NODEPORT_TCP, abi.IPPROTO_TCP, (be["tcp"], tcp_target)),
            (NODEPORT_UDP, abi.IPPROTO_UDP, (be["udp"], udp_target)),
        ):
            ready = functools.partial(
                lbmodes.ebpflb_service_ready, pin_dir, node, port, proto, {backend}
            )
            agent.wait_for(ready, timeout=30, what=f"{node}:{port} in the pinned maps")
        info["xdp_attached"] = xdp_attached(node_ns)
        if mode == "xdp-redirect":
            _wire_takes_xdp(lab, pin_dir)
        harness.wait_idle("the agent's start")
        before = _counters(pin_dir)
        runs = _measure(tools, lab.outside[0].netns, targets(lab), load)
        after = _counters(pin_dir)
    finally:
        if mode == "xdp-redirect" and lab.underlay_ns and netns.netns_exists(lab.underlay_ns):
            netns.run(lab.underlay_ns, ["ethtool", "-K", WIRE_PORT, "gro", "off"])
        agent.stop()
        if netns.netns_exists(node_ns) and xdp_attached(node_ns) is not None:
            info["xdp_left_attached"] = True
            netns.run(node_ns, ["ip", "link", "set", "dev", "eth0", "xdp", "off"])
        remove_pins(pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
    info["counters"] = {k: after[k] - before[k] for k in after}
    harness.log(f"   {mode}: XDP attached {info['xdp_attached']}, counters {info['counters']}")
    return runs, info


def measured_ports(lab: layout.Lab) -> list[kubeproxy.ServicePort]:
    tcp_target, udp_target = harness.PORTS["iptables"]
    be = _backends(lab)
    # their own namespace: kube-proxy's chain names hash "namespace/name:port", and the
    # background Services are bench/svc-<i> (the same names would share chains)
    return [
        kubeproxy.ServicePort(
            "nodeport", "np-local", "tcp", "tcp", CLUSTER_IPS["tcp"], 80, (be["tcp"],), tcp_target
        ),
        kubeproxy.ServicePort(
            "nodeport", "np-cluster", "udp", "udp", CLUSTER_IPS["udp"], 53, (be["udp"],), udp_target
        ),
    ]


def iptables_text(lab: layout.Lab, n: int) -> str:
    """kube-proxy's nat table: ``n - 1`` background Services (bench/svc-<i>, backend
    node-2's pod on port 1) and the two measured ones, with their NodePorts: the Local
    one's KUBE-EXT jumps to its KUBE-SVL chain (local endpoints, no masquerade), the
    Cluster one's marks for masquerade and jumps to KUBE-SVC."""
    be = _backends(lab)
    background = kubeproxy.service_ports(
        max(0, n - 2), base_ip="10.96.100.0", endpoints=(be["udp"],), tcp_target=1, udp_target=1
    )
    measured = measured_ports(lab)
    text = kubeproxy.restore_input(background + measured)
    chains, rules = [], []
    for sp, nodeport in zip(measured, (NODEPORT_TCP, NODEPORT_UDP), strict=True):
        name, proto = sp.svc_port_name, sp.protocol
        ext = kubeproxy._chain_hash("KUBE-EXT-", name, proto)
        svc = kubeproxy.svc_chain(sp)
        chains.append(f":{ext} - [0:0]")
        rules.append(
            f'-A KUBE-NODEPORTS -p {proto} -m comment --comment "{name}" -m {proto} '
            f"--dport {nodeport} -j {ext}"
        )
        if proto == "tcp":  # externalTrafficPolicy: Local
            svl = kubeproxy._chain_hash("KUBE-SVL-", name, proto)
            chains.append(f":{svl} - [0:0]")
            rules += [
                f'-A {ext} -m comment --comment "pod traffic for {name} external '
                f'destinations" -s {kubeproxy.CLUSTER_CIDR} -j {svc}',
                f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} '
                'external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
                f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external '
                f'destinations" -m addrtype --src-type LOCAL -j {svc}',
                f"-A {ext} -j {svl}",
                f'-A {svl} -m comment --comment "{name} -> {be["tcp"]}:{sp.target_port}" '
                f"-j {kubeproxy.sep_chain(sp, be['tcp'])}",
            ]
        else:
            rules += [
                f'-A {ext} -m comment --comment "masquerade traffic for {name} external '
                'destinations" -j KUBE-MARK-MASQ',
                f"-A {ext} -j {svc}",
            ]
    text = text.replace(
        ":POSTROUTING ACCEPT [0:0]\n", ":POSTROUTING ACCEPT [0:0]\n" + "\n".join(chains) + "\n", 1
    )
    return text.replace("COMMIT\n", "\n".join(rules) + "\nCOMMIT\n")


def run_iptables(
    tools: dict[str, Path], lab: layout.Lab, n: int, load: harness.Load
) -> dict[str, harness.Runs]:
    nft_backend = "nf_tables" in lbmodes.iptables_version()
    text = iptables_text(lab, n)
    try:
        lbmodes._restore(lab.node(1).netns, text)
        harness.wait_idle("iptables-restore")
        harness.log(f"   iptables: {kubeproxy.rule_count(text)} nat rules")
        return _measure(tools, lab.outside[0].netns, targets(lab), load)
    finally:
        lbmodes.flush_nat(lab.node(1).netns, nft_backend)


def summarize(both: dict[str, harness.Runs]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for proto in PROTOS:
        res = harness.summarize(both["mode"][proto])
        base = harness.summarize(both["direct"][proto])
        out[proto] = {"mode": res, "direct": base, "ratio": harness.ratios(res, base)}
    return out


def report(results: dict[str, Any]) -> None:
    print()
    print("NodePort from outside (ratios to the direct routed path, same rounds)")
    print(
        f"{'mode':<12} {'TCP conn/s (Local)':>19} {'x direct':>9} {'p50 x':>7}"
        f" {'UDP pkt/s (Cluster)':>20} {'x direct':>9} {'p50 x':>7}"
    )
    for mode in MODES:
        if mode not in results:
            continue
        tcp, udp = results[mode]["tcp"], results[mode]["udp"]
        print(
            f"{mode:<12} {tcp['mode']['rps']:>19.0f} {tcp['ratio']['rps']:>9.3f}"
            f" {tcp['ratio']['p50']:>7.3f} {2 * udp['mode']['rps']:>20.0f}"
            f" {udp['ratio']['rps']:>9.3f} {udp['ratio']['p50']:>7.3f}"
        )


def run(quick: bool, services: int) -> tuple[dict[str, Any], list[str]]:
    load = harness.LOAD_QUICK if quick else harness.LOAD_FULL
    tools = harness.compile_tools()
    name = "x" + secrets.token_hex(3)[:5]
    workdir = Path(tempfile.mkdtemp(prefix="ebpflb-bench-xdp-"))
    harness.log(f"== NodePort from outside: lab {name} (2 nodes, routed, tx offload off)")
    results: dict[str, Any] = {"load": load.__dict__, "services_iptables": services}
    problems: list[str] = []
    try:
        lab = build.up(layout.LabSpec(name, pods=1, nodes=2, cni=Cni.ROUTED))
        _tx_off(lab)
        node1 = str(lab.node(1).address)
        for k in (1, 2):  # the direct path: ext-1 -> node-1 (-> node-2) -> pod
            netns.run(
                lab.outside[0].netns,
                ["ip", "route", "add", str(layout.pod_cidr(k)), "via", node1],
            )
        # ... and back through node-1, the hops of the source-NATed replies
        netns.run(
            lab.node(2).netns, ["ip", "route", "add", f"{lab.outside[0].ip}/32", "via", node1]
        )
        with harness.responders(tools, lab):
            for mode in MODES:
                harness.log(f"-- {mode}")
                info: dict[str, Any] = {}
                if mode == "iptables":
                    both = run_iptables(tools, lab, services, load)
                else:
                    both, info = run_agent_mode(tools, lab, mode, load, workdir)
                out = dict(info, **summarize(both))
                if mode != "iptables":
                    sent = int(sum(out[p]["mode"]["requests"] for p in PROTOS))
                    problems += check_counters(mode, info["counters"], sent)
                    if info["xdp_attached"] != XDP_ATTACHED.get(AGENT_MODES[mode]):
                        problems.append(f"{mode}: XDP attached as {info['xdp_attached']}")
                    if info.get("xdp_left_attached"):
                        problems.append(f"{mode}: XDP left attached after the agent stopped")
                for proto in PROTOS:
                    res, base, ratio = (out[proto][k] for k in ("mode", "direct", "ratio"))
                    if res["errors"] or base["errors"]:
                        problems.append(f"{mode} {proto}: errors {res['errors']}/{base['errors']}")
                    unit = "conn/s" if proto == "tcp" else "req/s"
                    harness.log(
                        f"   {proto}: {res['rps']:.0f} {unit} vs direct {base['rps']:.0f}: "
                        f"x{ratio['rps']:.3f}, p50 x{ratio['p50']:.3f}, errors {res['errors']:.0f}"
                    )
                results[mode] = out
                harness.wait_idle(mode)
    finally:
        build.down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    results["problems"] = problems
    return results, problems


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
    old = signal.signal(signal.SIGTERM, harness._on_sigterm)
    try:
        results, problems = run(args.quick, args.services)
    except (KeyboardInterrupt, harness.Interrupted):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    harness.log(f"results in {RESULTS}")
    for p in problems:
        print(f"SELF-CHECK FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
