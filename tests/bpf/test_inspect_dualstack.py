"""The inspection commands on IPv6 and dual-stack maps written by the real map writer
and filled by the real tc program (BPF_PROG_TEST_RUN): tables print `[addr]:port` for
IPv6, --json prints plain addresses under the same keys as IPv4's rows, and
`ebpflb explain` names the backend the kernel really picks for an IPv6 flow."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.explain import explain
from ebpflb.dataplane.bpf.maps import BpfMaps, read_state
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.model import DesiredState, Protocol
from ebpflb.plan import desired_frontends
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.translate import translate
from tests.bpf import packets as pk
from tests.bpf import packets6 as pk6
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, TC_ACT_OK, Maps, RunFn
from tests.bpf.test_writer_dualstack import DUAL, V4, V6, _apply, _writer, entry
from tests.bpf.test_writer_dualstack import dual as dual  # the fixture

pytestmark = pytest.mark.root

CLIENT6 = "fd00:10:244::c8"
VIP6 = "fd00:10:96::a"
IP6 = ipaddress.IPv6Address


@pytest.fixture
def written(dual: Maps) -> Iterator[MapWriter]:
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
        yield writer
    finally:
        writer.maps.close()


def _cli(*args: str) -> str:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.stdout


def _send6(run: RunFn, sport: int, dst: str = VIP6, dport: int = 80) -> pk.Parsed:
    res = run(pk6.frame6(pk.Flow(pk.TCP, CLIENT6, dst, sport, dport)))
    assert res.retval == TC_ACT_OK
    return pk6.parse6(res.data)


def test_services_and_backends_show_ipv6_frontends(written: MapWriter, dual: Maps) -> None:
    table = _cli("services", "--pin-dir", dual.pin_dir)
    assert "[fd00:10:96::a]:80/TCP" in table
    assert "[fd00:192:168:60::5]:443/TCP" in table
    assert "10.96.0.10:80/TCP" in table
    rows = json.loads(_cli("services", "--json", "--pin-dir", dual.pin_dir))
    by_address = {r["address"]: r for r in rows}
    assert set(by_address) == {"10.96.0.10", "fd00:10:96::a", "fd00:192:168:60::5"}
    v4, v6 = by_address["10.96.0.10"], by_address["fd00:10:96::a"]
    assert set(v6) == set(v4)  # the same keys for both families
    assert (v6["port"], v6["frontend"], v6["backends"]) == (80, "[fd00:10:96::a]:80/TCP", 2)
    assert rows[0]["address"] == "10.96.0.10"  # IPv4 first, then IPv6

    table = _cli("backends", "--pin-dir", dual.pin_dir)
    assert "[fd00:10:244::b]:8080" in table and "[fd00:10:244::d]:8443" in table
    rows = json.loads(_cli("backends", "--json", "--pin-dir", dual.pin_dir))
    six = [r for r in rows if r["address"].startswith("fd00")]
    assert {(r["address"], r["port"], r["active"]) for r in six} == {
        ("fd00:10:244::b", 8080, True),
        ("fd00:10:244::c", 8080, True),
        ("fd00:10:244::b", 8443, True),
        ("fd00:10:244::d", 8443, False),
    }
    assert set(six[0]) == set(rows[0])

    stats = json.loads(_cli("stats", "--json", "--pin-dir", dual.pin_dir))
    assert "[fd00:10:96::a]:80/TCP" in {s["frontend"] for s in stats["services"]}


def test_conntrack_shows_ipv6_flows(written: MapWriter, dual: Maps, run: RunFn) -> None:
    out = _send6(run, 40000)
    backend = (out.daddr, out.dport)
    assert backend in {("fd00:10:244::b", 8080), ("fd00:10:244::c", 8080)}
    rows = json.loads(_cli("conntrack", "--json", "--pin-dir", dual.pin_dir))
    (row,) = [r for r in rows if r["client_address"] == CLIENT6]
    assert (row["frontend_address"], row["frontend_port"]) == (VIP6, 80)
    assert (row["backend_address"], row["backend_port"]) == backend
    assert row["client_port"] == 40000 and row["snat_address"] is None
    assert row["service"] == "demo/web:http/TCP"
    table = _cli("conntrack", "--pin-dir", dual.pin_dir)
    assert f"[{CLIENT6}]:40000" in table
    assert f"[{VIP6}]:80" in table
    assert f"[{backend[0]}]:{backend[1]}" in table


def test_explain_follows_an_ipv6_flow(written: MapWriter, dual: Maps, run: RunFn) -> None:
    with BpfMaps(dual.pin_dir) as m:
        e = explain(m, (IP6(VIP6), 80), Protocol.TCP, (IP6(CLIENT6), 41000))
        assert e.decision == "random"
        assert sorted(e.candidates) == ["[fd00:10:244::b]:8080", "[fd00:10:244::c]:8080"]
        out = _send6(run, 41000)
        e = explain(m, (IP6(VIP6), 80), Protocol.TCP, (IP6(CLIENT6), 41000))
        assert e.decision == "tracked"
        assert e.backend == f"[{out.daddr}]:{out.dport}"
        # Outside the LB frontend's source ranges, and inside them with source NAT.
        lb = (IP6("fd00:192:168:60::5"), 443)
        assert explain(m, lb, Protocol.TCP, (IP6("fd00:99::1"), 1)).decision == "source_range_drop"
        inside = explain(m, lb, Protocol.TCP, (IP6("fd00:192:168:50::65"), 1))
        assert inside.snat == "[fd00:192:168:50::1]:<NAT port>"
        # ClientIP affinity: the kernel's aff6 entry from a first flow decides the next.
        outside = "fd00:192:168:50::65"
        first = pk6.parse6(run(pk6.frame6(pk.Flow(pk.TCP, outside, str(lb[0]), 42000, 443))).data)
        again = explain(m, lb, Protocol.TCP, (IP6(outside), 42001))
        assert again.decision == "affinity"
        assert again.backend == f"[{first.daddr}]:{first.dport}" == "[fd00:10:244::b]:8443"
        # A family mismatch is named, not looked up.
        e = explain(m, (IP6(VIP6), 80), Protocol.TCP, (ipaddress.IPv4Address("10.0.0.1"), 1))
        assert e.decision == "not_a_frontend"


def test_explain_predicts_the_kernels_maglev_choice_for_ipv6(dual: Maps, run: RunFn) -> None:
    """maglev.flow_hash for IPv6 against lb6_flow_hash: explain's slot and backend are
    where the program sends each of 60 flows."""
    five = entry(VIP6, 80, [(f"fd00:10:244::{i}", 8080, True) for i in range(1, 6)])
    writer = MapWriter(
        BpfMaps(dual.pin_dir),
        max_services=MAX_SERVICES,
        max_backends=MAX_BACKENDS,
        maglev_size=1021,
    )
    try:
        _apply(writer, DesiredState.build([V4, five]))
        dual.config.update(ctypes.c_uint32(abi.Config.MAGLEV_SIZE), ctypes.c_uint32(1021))
        chosen = set()
        for sport in range(30000, 30060):
            e = explain(writer.maps, (IP6(VIP6), 80), Protocol.TCP, (IP6(CLIENT6), sport))
            assert e.decision == "maglev"
            out = _send6(run, sport)
            assert e.backend == f"[{out.daddr}]:{out.dport}"
            chosen.add(out.daddr)
        assert len(chosen) == 5
    finally:
        writer.maps.close()


def test_the_explain_cli_takes_bracketed_ipv6(written: MapWriter, dual: Maps) -> None:
    args = ["explain", f"[{VIP6}]:80", "--client", f"[{CLIENT6}]:5353", "--pin-dir", dual.pin_dir]
    data = json.loads(_cli(*args, "--json"))
    assert data["frontend"] == f"[{VIP6}]:80/TCP" and data["client"] == f"[{CLIENT6}]:5353"
    assert data["decision"] == "random"
    assert _cli(*args).startswith(f"[{CLIENT6}]:5353 -> [{VIP6}]:80/TCP: random")
    runner = CliRunner()
    for frontend, client in [
        (f"{VIP6}:80", f"[{CLIENT6}]:1"),  # unbracketed IPv6
        (f"[{VIP6}]:80", "10.0.0.1:1"),  # families differ
        (f"[{VIP6}]:0", f"[{CLIENT6}]:1"),
    ]:
        bad = runner.invoke(
            app, ["explain", frontend, "--client", client, "--pin-dir", dual.pin_dir]
        )
        assert bad.exit_code == 2, (frontend, client, bad.output)


def test_an_ipv4_only_state_reads_as_before(dual: Maps) -> None:
    """No IPv6 entry: the tables hold no bracket and the IPv6 maps stay empty."""
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DesiredState.build([V4]))
        assert "[" not in _cli("services", "--pin-dir", dual.pin_dir)
        assert not list(writer.maps.svc6.keys(abi.Lb6Key))
        assert V6.frontend.key not in writer.frontends
    finally:
        writer.maps.close()


DUALSTACK_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dualstack"


def test_diff_of_a_dual_stack_source(dual: Maps, tmp_path: Path) -> None:
    """The dual-stack example written, then diffed: nothing to do; one IPv6 endpoint
    moved: the IPv6 frontends' changes, named in brackets."""
    snap = ManifestSource(DUALSTACK_EXAMPLE).load()
    state = translate(snap.services, snap.slices).state
    assert any(k[0].version == 6 for k in state.entries)
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, state)
        with BpfMaps(dual.pin_dir) as fresh:
            assert read_state(fresh).frontends == desired_frontends(state)
    finally:
        writer.maps.close()
    args = ["diff", "--pin-dir", dual.pin_dir, "--json", "--exit-code"]
    same = CliRunner().invoke(app, [*args, "--manifests", str(DUALSTACK_EXAMPLE)])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["ops"] == []
    changed = tmp_path / "m"
    shutil.copytree(DUALSTACK_EXAMPLE, changed)
    web = changed / "web.yaml"
    web.write_text(web.read_text().replace('"fd00:10:244::d"', '"fd00:10:244::99"'))
    result = CliRunner().invoke(app, [*args, "--manifests", str(changed)])
    assert result.exit_code == 1, result.output
    plan = json.loads(result.stdout)
    removed = [o for o in plan["ops"] if o["op"] == "remove_backends"]
    assert {o["frontend"] for o in removed} == {
        "[fd00:10:96::a]:80/TCP",
        "[fd00:10:96::a]:53/UDP",
    }
    assert {tuple(o["backends"]) for o in removed} == {
        ("[fd00:10:244::d]:8080",),
        ("[fd00:10:244::d]:9090",),
    }
