"""Which optional-helper -D flags the loader passes for a kernel release."""

from __future__ import annotations

import pytest

from ebpflb.dataplane.bpf.loader import kernel_feature_flags


@pytest.mark.parametrize(
    ("release", "flags"),
    [
        ("5.10.0-28-amd64", []),
        ("5.17.15", []),
        ("5.18.0", ["-DHAVE_SET_RETVAL"]),
        ("6.1.0-18-cloud-amd64", ["-DHAVE_SET_RETVAL"]),
        ("6.18.44-fc-v1272", ["-DHAVE_SET_RETVAL"]),
        ("garbage", []),
    ],
)
def test_set_retval_from_linux_5_18(release: str, flags: list[str]) -> None:
    assert kernel_feature_flags(release) == flags
