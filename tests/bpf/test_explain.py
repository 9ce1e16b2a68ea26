"""`ebpflb explain` against what the tc program really does (BPF_PROG_TEST_RUN on the
same maps): each decision it names is the one the kernel takes."""

from __future__ import annotations

import ctypes
import json
from ipaddress import IPv4Address

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.explain import explain
from ebpflb.dataplane.bpf.maps import BpfMaps
from ebpflb.model import Protocol
from tests.bpf import packets as pk
from tests.bpf.conftest import TC_ACT_SHOT, Maps, RunFn
from tests.bpf.test_features import BACKENDS, CLIENT, CLUSTER_IP, LB_IP, NODE_IP, add
from tests.bpf.test_features import _maglev_writer as maglev_writer

pytestmark = pytest.mark.root

IP = IPv4Address


def why(
    maps: Maps, frontend: str, port: int, client: str, sport: int, protocol: Protocol = Protocol.TCP
):
    with BpfMaps(maps.pin_dir) as bmaps:
        return explain(bmaps, (IP(frontend), port), protocol, (IP(client), sport))


def sent_to(run: RunFn, client: str, sport: int, frontend: str, port: int) -> str:
    out = pk.parse(run(pk.frame(pk.Flow(pk.TCP, client, frontend, sport, port))).data)
    return f"{out.daddr}:{out.dport}"


def test_not_a_frontend(maps: Maps) -> None:
    e = why(maps, "10.96.9.9", 80, CLIENT, 40000)
    assert e.decision == "not_a_frontend" and e.backend is None


def test_random_then_tracked_is_what_the_kernel_did(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, BACKENDS)
    e = why(maps, CLUSTER_IP, 80, CLIENT, 40000)
    assert e.decision == "random" and e.backend is None
    assert sorted(e.candidates) == sorted(f"{a}:{p}" for a, p in BACKENDS.values())
    chosen = sent_to(run, CLIENT, 40000, CLUSTER_IP, 80)
    e = why(maps, CLUSTER_IP, 80, CLIENT, 40000)
    assert (e.decision, e.backend) == ("tracked", chosen)


def test_affinity_names_the_backend_the_next_flow_gets(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 80, pk.TCP, BACKENDS, affinity=60)
    first = sent_to(run, CLIENT, 40000, CLUSTER_IP, 80)
    e = why(maps, CLUSTER_IP, 80, CLIENT, 40001)
    assert (e.decision, e.backend) == ("affinity", first)
    assert sent_to(run, CLIENT, 40001, CLUSTER_IP, 80) == first


def test_maglev_names_the_backend_the_kernel_picks(maps: Maps, run: RunFn) -> None:
    bmaps, _ = maglev_writer(maps, [(f"10.244.1.{i}", 8080, True) for i in range(1, 6)])
    bmaps.close()
    for sport in range(30000, 30040):
        e = why(maps, CLUSTER_IP, 80, CLIENT, sport)
        assert e.decision == "maglev"
        assert e.backend == sent_to(run, CLIENT, sport, CLUSTER_IP, 80)


def test_drops_refusals_and_source_nat(maps: Maps, run: RunFn) -> None:
    add(
        maps,
        1,
        LB_IP,
        80,
        pk.TCP,
        BACKENDS,
        flags=abi.SvcFlag.LOADBALANCER | abi.SvcFlag.SRC_RANGES,
        snat=NODE_IP,
    )
    maps.src_ranges.update(
        abi.SrcRange4Key(32 + 24, 1, abi.pack_ip4("192.168.50.0")), ctypes.c_uint8(1)
    )
    e = why(maps, LB_IP, 80, "10.1.1.1", 40000)
    assert e.decision == "source_range_drop"
    assert run(pk.frame(pk.Flow(pk.TCP, "10.1.1.1", LB_IP, 40000, 80))).retval == TC_ACT_SHOT
    e = why(maps, LB_IP, 80, "192.168.50.101", 40000)
    assert e.decision == "random" and e.snat == f"{NODE_IP}:<NAT port>"
    add(maps, 2, "10.96.0.30", 80, pk.TCP, {})
    assert why(maps, "10.96.0.30", 80, CLIENT, 1).decision == "refused"
    add(maps, 3, "10.96.0.31", 80, pk.TCP, {}, flags=abi.SvcFlag.NODEPORT | abi.SvcFlag.DROP_EMPTY)
    assert why(maps, "10.96.0.31", 80, CLIENT, 1).decision == "dropped"


def test_the_cli(maps: Maps, run: RunFn) -> None:
    add(maps, 1, CLUSTER_IP, 53, pk.UDP, BACKENDS)
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "explain",
            f"{CLUSTER_IP}:53/udp",
            "--client",
            f"{CLIENT}:5353",
            "--pin-dir",
            maps.pin_dir,
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data) == {
        "frontend",
        "client",
        "decision",
        "backend",
        "service",
        "candidates",
        "snat",
        "steps",
    }
    assert (data["frontend"], data["decision"]) == (f"{CLUSTER_IP}:53/UDP", "random")
    text = runner.invoke(
        app,
        [
            "explain",
            f"{CLUSTER_IP}:53/UDP",
            "--client",
            f"{CLIENT}:5353",
            "--pin-dir",
            maps.pin_dir,
        ],
    ).output
    assert text.startswith(f"{CLIENT}:5353 -> {CLUSTER_IP}:53/UDP: random")
    bad = runner.invoke(app, ["explain", CLUSTER_IP, "--client", CLIENT, "--pin-dir", maps.pin_dir])
    assert bad.exit_code == 2
