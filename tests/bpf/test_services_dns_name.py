"""`ebpflb services` on the kernel data path: every frontend row carries its Service's
DNS name (the DNS NAME column, the ``dns_name`` key), read back from the names the map
writer records in the pinned maps, under the cluster domain given."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from tests.bpf.conftest import Maps
from tests.bpf.test_writer_dualstack import DUAL, _apply, _writer
from tests.bpf.test_writer_dualstack import dual as dual  # the fixture

pytestmark = pytest.mark.root


def _cli(*args: str) -> str:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.stdout


def test_every_frontend_row_names_its_service_in_dns(dual: Maps) -> None:
    writer = _writer(dual.pin_dir)
    try:
        _apply(writer, DUAL)
    finally:
        writer.maps.close()
    rows = json.loads(_cli("services", "--json", "--pin-dir", dual.pin_dir))
    assert {(r["frontend"], r["dns_name"]) for r in rows} == {
        ("10.96.0.10:80/TCP", "web.demo.svc.cluster.local"),
        ("[fd00:10:96::a]:80/TCP", "web.demo.svc.cluster.local"),
        ("[fd00:192:168:60::5]:443/TCP", "lb.demo.svc.cluster.local"),
    }
    rows = json.loads(
        _cli("services", "--json", "--pin-dir", dual.pin_dir, "--cluster-domain", "Corp.Example.")
    )
    assert {r["dns_name"] for r in rows} == {
        "web.demo.svc.corp.example",
        "lb.demo.svc.corp.example",
    }

    lines = _cli("services", "--pin-dir", dual.pin_dir).splitlines()
    assert lines[0].split()[-2:] == ["DNS", "NAME"]
    by_frontend = {line.split()[3]: line.split()[-1] for line in lines[1:]}
    assert by_frontend == {
        "10.96.0.10:80/TCP": "web.demo.svc.cluster.local",
        "[fd00:10:96::a]:80/TCP": "web.demo.svc.cluster.local",
        "[fd00:192:168:60::5]:443/TCP": "lb.demo.svc.cluster.local",
    }
