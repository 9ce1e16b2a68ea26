"""The entry programs' tail-called parts (ebpflb_tc6, ebpflb_xdp6) once the process that
loaded them is gone: the agent loads in a compiler child, and the kernel empties a
program array no file or pin holds, which would leave IPv6 untranslated."""

from __future__ import annotations

import os

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.isolated import load_isolated
from ebpflb.dataplane.bpf.maps import open_map
from ebpflb.dataplane.bpf.syscall import PinnedMap, prog_test_run
from tests.bpf import packets as pk
from tests.bpf import packets6 as p6
from tests.bpf.conftest import MAX_BACKENDS, MAX_SERVICES, TC_ACT_OK, Maps
from tests.bpf.maps6 import Maps6

pytestmark = pytest.mark.root

CLIENT, CLUSTER_IP, POD = "fd00:10:244:1::c8", "fd00:10:96::a", "fd00:10:244::b"


def test_ipv6_is_translated_after_the_loading_process_is_gone(bpffs: str) -> None:
    prog = load_isolated(
        pin_dir=bpffs, max_services=MAX_SERVICES, max_backends=MAX_BACKENDS, max_conntrack=1024
    )  # the child that compiled and loaded has exited
    try:
        assert os.path.exists(os.path.join(bpffs, abi.MAP_TAIL))
        with PinnedMap(os.path.join(bpffs, abi.MAP_TAIL)) as tail:
            assert tail.info.max_entries == abi.TAIL_MAX
        maps = Maps.open(bpffs)

        def m(name: str) -> PinnedMap:
            return open_map(os.path.join(bpffs, name))

        maps6 = Maps6(
            maps, m(abi.MAP_SERVICES6), m(abi.MAP_BACKENDS6), m(abi.MAP_REVNAT6),
            m(abi.MAP_CONNTRACK6), m(abi.MAP_AFFINITY6), m(abi.MAP_SRC_RANGES6),
        )  # fmt: skip
        try:
            maps6.add_service(1, CLUSTER_IP, 80, pk.TCP, {11: (POD, 8080)})
            frame = p6.frame6(pk.Flow(pk.TCP, CLIENT, CLUSTER_IP, 40000, 80), b"x")
            out = prog_test_run(prog.fd, frame)
            assert out.retval == TC_ACT_OK
            assert p6.parse6(out.data).daddr == POD
        finally:
            maps6.close()
            maps.close()
    finally:
        prog.close()
