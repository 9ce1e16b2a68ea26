"""Which XDP mode each uplink gets (xdp.choose_mode), and where XDP may redirect
(xdp.redirect_targets): pure tables, no root."""

from __future__ import annotations

import pytest

from ebpflb.dataplane.bpf.xdp import XdpMode, choose_mode, redirect_targets

AUTO_CASES = [
    (None, XdpMode.NATIVE),  # a physical NIC: native where its driver supports it
    ("bond", XdpMode.NATIVE),
    ("veth", XdpMode.OFF),  # partial checksums from local senders
    ("bridge", XdpMode.OFF),
    ("vxlan", XdpMode.OFF),
    ("geneve", XdpMode.OFF),
    ("dummy", XdpMode.OFF),
    ("vlan", XdpMode.OFF),  # no native XDP
]


@pytest.mark.parametrize(("kind", "expected"), AUTO_CASES)
def test_auto_is_native_on_physical_nics_only(kind: str | None, expected: XdpMode) -> None:
    mode, why = choose_mode(XdpMode.AUTO, kind)
    assert mode is expected
    assert why  # logged per uplink
    if kind in ("veth", "vxlan"):
        assert "partial checksums" in why


@pytest.mark.parametrize("forced", [XdpMode.NATIVE, XdpMode.GENERIC, XdpMode.OFF])
@pytest.mark.parametrize("kind", [None, "veth", "vxlan"])
def test_forced_modes_apply_to_every_kind(forced: XdpMode, kind: str | None) -> None:
    assert choose_mode(forced, kind) == (forced, f"--xdp {forced.value}")


def test_redirect_targets() -> None:
    kinds: dict[str, str | None] = {"eth0": None, "eth1": "veth", "lxc1": "veth"}
    up, veths = ["eth0", "eth1"], ["lxc1"]
    assert redirect_targets(XdpMode.GENERIC, uplinks=up, veths=veths, kinds=kinds) == {
        "eth0",
        "eth1",
        "lxc1",
    }
    # natively a veth is no target (its peer may run no NAPI)
    assert redirect_targets(XdpMode.NATIVE, uplinks=up, veths=veths, kinds=kinds) == {"eth0"}
    assert redirect_targets(XdpMode.OFF, uplinks=up, veths=veths, kinds=kinds) == set()
