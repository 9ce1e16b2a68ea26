"""bench.xdp's kube-proxy-shaped nat table: the measured NodePorts' chains are their own
(kube-proxy's chain names hash namespace/name:port, so a measured Service named like a
background one would share its KUBE-SVC chain and reach the background endpoint), the
Local NodePort keeps the client address and the Cluster one masquerades."""

from __future__ import annotations

import re

from bench import kubeproxy, xdp
from bench.harness import PORTS
from ebpflb.lab import layout
from ebpflb.lab.podnet import Cni


def _lab() -> layout.Lab:
    return layout._plan(layout.LabSpec("xunit", pods=1, nodes=2, cni=Cni.ROUTED))


def _rules(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


def test_every_chain_is_declared_once_and_the_measured_ones_reach_their_backends() -> None:
    lab = _lab()
    text = xdp.iptables_text(lab, 100)
    declared = re.findall(r"^:(\S+) ", text, re.M)
    assert len(declared) == len(set(declared))
    tcp_target, udp_target = PORTS["iptables"]
    for sp, dest in zip(
        xdp.measured_ports(lab),
        (f"{lab.pod(1).ip}:{tcp_target}", f"{lab.pod(2).ip}:{udp_target}"),
        strict=True,
    ):
        seps = [r for r in _rules(text, kubeproxy.svc_chain(sp)) if "-j KUBE-SEP-" in r]
        assert len(seps) == 1, seps
        sep = seps[0].rsplit("-j ", 1)[1]
        dnat = [r for r in _rules(text, sep) if "DNAT" in r]
        assert dnat and dnat[0].endswith(f"--to-destination {dest}")


def test_local_nodeport_does_not_masquerade_outside_clients_cluster_does() -> None:
    lab = _lab()
    text = xdp.iptables_text(lab, 10)
    local, cluster = xdp.measured_ports(lab)
    ext_local = kubeproxy._chain_hash("KUBE-EXT-", local.svc_port_name, "tcp")
    ext_cluster = kubeproxy._chain_hash("KUBE-EXT-", cluster.svc_port_name, "udp")
    assert f"--dport {xdp.NODEPORT_TCP} -j {ext_local}" in text
    assert f"--dport {xdp.NODEPORT_UDP} -j {ext_cluster}" in text
    masq_local = [r for r in _rules(text, ext_local) if r.endswith("-j KUBE-MARK-MASQ")]
    assert masq_local and all("--src-type LOCAL" in r for r in masq_local)
    assert _rules(text, ext_local)[-1].split("-j ")[1].startswith("KUBE-SVL-")
    assert any(r.endswith("-j KUBE-MARK-MASQ") for r in _rules(text, ext_cluster))


def test_the_agent_gets_a_local_tcp_and_a_cluster_udp_nodeport() -> None:
    lab = _lab()
    services = {o["metadata"]["name"]: o for o in xdp.manifests(lab)["items"]}
    local, cluster = services["np-local"], services["np-cluster"]
    assert local["spec"]["externalTrafficPolicy"] == "Local"
    assert local["spec"]["ports"][0]["nodePort"] == xdp.NODEPORT_TCP
    assert cluster["spec"]["externalTrafficPolicy"] == "Cluster"
    assert cluster["spec"]["ports"][0]["nodePort"] == xdp.NODEPORT_UDP
    eps = services["np-local-1"]["endpoints"][0]
    assert eps == {
        "addresses": [str(lab.pod(1).ip)],
        "conditions": {"ready": True},
        "nodeName": "node-1",
    }


def test_each_xdp_mode_must_show_its_own_path_in_the_counters() -> None:
    """Native without a usable next hop goes to the stack (xdp_fib_pass for every
    request); with the wire taking XDP frames, and generic, XDP redirects both ways."""
    passed = {"xdp_forward": 0, "xdp_reply": 0, "xdp_fib_pass": 400, "new_flow": 3}
    redirected = {"xdp_forward": 200, "xdp_reply": 200, "xdp_fib_pass": 0, "new_flow": 3}
    assert xdp.check_counters("xdp", passed, 400) == []
    assert xdp.check_counters("xdp", redirected, 400) != []
    for mode in ("xdp-redirect", "xdp-generic"):
        assert xdp.check_counters(mode, redirected, 400) == []
        assert len(xdp.check_counters(mode, passed, 400)) == 2
    assert xdp.check_counters("tc", redirected, 400) != []
    assert xdp.check_counters("tc", dict(passed, xdp_fib_pass=0), 400) == []
