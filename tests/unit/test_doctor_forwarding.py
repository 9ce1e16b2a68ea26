"""`ebpflb doctor` warns when a family does not forward: the data path's rewritten
packets are routed by the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpflb import doctor


def _proc(tmp_path: Path, ipv4: str | None, ipv6: str | None) -> str:
    for rel, value in (("ipv4/ip_forward", ipv4), ("ipv6/conf/all/forwarding", ipv6)):
        if value is not None:
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "ok", "named"),
    [
        ("1", "1", True, []),
        ("1", None, True, []),  # IPv6 disabled in the kernel: nothing to forward
        ("1", "0", False, ["net.ipv6.conf.all.forwarding=1"]),
        ("0", "1", False, ["net.ipv4.ip_forward=1"]),
        ("0", "0", False, ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]),
    ],
)
def test_forwarding_check(
    tmp_path: Path, ipv4: str, ipv6: str | None, ok: bool, named: list[str]
) -> None:
    check = doctor.check_forwarding(_proc(tmp_path, ipv4, ipv6))
    assert check.ok is ok
    assert check.required is False  # a warning: the bpf data path still runs
    for setting in named:
        assert setting in check.fix
    assert ("ipv6" in check.detail) and ("ipv4" in check.detail)
