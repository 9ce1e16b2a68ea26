"""`ebpflb doctor` says when socket-LB links are pinned under the pin directory: they
keep the node's own sockets translated while no agent runs, until a clean-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ebpflb import doctor
from ebpflb.cli import app
from ebpflb.dataplane.bpf.socklb import LINK_PINS


def test_doctor_lists_the_pinned_socket_lb_links(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor, "_effective_caps", lambda: 1 << doctor.CAP_SYS_ADMIN)
    pin_dir = tmp_path / "pins"
    pin_dir.mkdir()
    none = doctor.check_socket_lb(str(tmp_path), str(pin_dir))
    assert none.as_json()["pinned_links"] == [] and "pinned" not in none.detail
    for name in LINK_PINS.values():
        (pin_dir / name).touch()  # the names are what is looked for
    some = doctor.check_socket_lb(str(tmp_path), str(pin_dir))
    assert some.as_json()["pinned_links"] == list(LINK_PINS.values())
    assert f"{len(LINK_PINS)} socket-LB links are pinned under {pin_dir}" in some.detail
    assert len(LINK_PINS) == 8  # connect, sendmsg, recvmsg, getpeername; IPv4 and IPv6
    out = CliRunner().invoke(
        app, ["doctor", "--json", "--state-dir", str(tmp_path), "--pin-dir", str(pin_dir)]
    )
    check = next(c for c in json.loads(out.output)["checks"] if c["name"] == "socket_lb")
    assert check["pinned_links"] == list(LINK_PINS.values())
