"""The Python mirrors in ebpflb.dataplane.bpf.abi match the C: struct sizes, field
offsets and sizes (checked by the C compiler itself, through _Static_assert), the
#define'd numbers, and the maps the loaded program pinned."""

from __future__ import annotations

import ctypes
import os
import re

import pytest

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.loader import LoadedProgram, bpf_dir
from ebpflb.dataplane.bpf.syscall import PinnedMap

pytestmark = pytest.mark.root

LIB = bpf_dir() / "lib"


def _layout_asserts(c_name: str, mirror: type[ctypes.Structure]) -> str:
    lines = [
        f'_Static_assert(sizeof(struct {c_name}) == {ctypes.sizeof(mirror)}, "sizeof {c_name}");'
    ]
    for field_name, field_type, *_ in mirror._fields_:
        offset = getattr(mirror, field_name).offset
        lines.append(
            f"_Static_assert(__builtin_offsetof(struct {c_name}, {field_name}) == "
            f'{offset}, "offset of {c_name}.{field_name}");'
        )
        lines.append(
            f"_Static_assert(sizeof(((struct {c_name} *)0)->{field_name}) == "
            f'{ctypes.sizeof(field_type)}, "size of {c_name}.{field_name}");'
        )
    return "\n".join(lines)


@pytest.mark.parametrize("c_name", sorted(abi.C_STRUCTS))
def test_struct_layout_matches_c(c_name: str, program: LoadedProgram) -> None:
    import bcc

    mirror = abi.C_STRUCTS[c_name]
    text = '#include "lib/abi.h"\n' + _layout_asserts(c_name, mirror) + "\n"
    text += "int ebpflb_abi_check(struct __sk_buff *skb) { return 0; }\n"
    # A mismatch is a compile error naming the struct and field (on captured stderr).
    module = bcc.BPF(text=text.encode(), cflags=[f"-I{bpf_dir()}", "-Wall", "-Werror"])
    module.cleanup()


def _defines(header: str, prefix: str) -> dict[str, int]:
    text = (LIB / header).read_text()
    return {
        m[1]: int(m[2], 0)
        for m in re.finditer(rf"^#define\s+{prefix}(\w+)\s+(-?(?:0x)?[0-9a-fA-F]+)\b", text, re.M)
    }


@pytest.mark.parametrize(
    ("header", "prefix", "mirror"),
    [
        (
            "drop_reasons.h",
            "DROP_",
            {e.name: e.value for e in abi.DropReason} | {"MAX": abi.DROP_MAX},
        ),
        ("consts.h", "GSTAT_", {e.name: e.value for e in abi.GlobalStat} | {"MAX": abi.GSTAT_MAX}),
        ("consts.h", "SVC_F_", {e.name: e.value for e in abi.SvcFlag}),
        ("consts.h", "BE_F_", {e.name: e.value for e in abi.BackendFlag}),
        ("consts.h", "CT_DIR_", {e.name: e.value for e in abi.CtDir}),
        ("consts.h", "CT_F_", {e.name: e.value for e in abi.CtFlag}),
        ("consts.h", "CFG_", {e.name: e.value for e in abi.Config} | {"MAX": abi.CFG_MAX}),
        ("consts.h", "TAIL_", {"IPV6": abi.TAIL_IPV6, "MAX": abi.TAIL_MAX}),
    ],
)
def test_constants_match_c(header: str, prefix: str, mirror: dict[str, int]) -> None:
    assert _defines(header, prefix) == mirror


def test_default_tunables_match_c() -> None:
    text = (LIB / "consts.h").read_text()
    for name, value in [
        ("MAX_SERVICES", abi.DEFAULT_MAX_SERVICES),
        ("MAX_BACKENDS", abi.DEFAULT_MAX_BACKENDS),
        ("MAX_CONNTRACK", abi.DEFAULT_MAX_CONNTRACK),
        ("NAT_PORT_MIN", abi.NAT_PORT_MIN),
        ("NAT_PORT_COUNT", abi.NAT_PORT_COUNT),
        ("CT_WAYS", abi.CT_WAYS),
    ]:
        assert re.search(rf"^#define\s+{name}\s+{value}\b", text, re.M), name
    assert f'#define PIN_DIR "{abi.DEFAULT_PIN_DIR}"' in text
    words = [int(m, 16) for m in re.findall(r"^#define\s+HAIRPIN6_W\d\s+0x([0-9a-f]+)", text, re.M)]
    assert b"".join(w.to_bytes(4, "big") for w in words) == abi.HAIRPIN_ADDRESS6.packed


def test_maps_h_declares_exactly_the_abi_maps() -> None:
    text = (LIB / "maps.h").read_text()
    declared = re.findall(r"BPF_TABLE_PINNED\([^;]*?\b(ebpflb_\w+),", text, re.S)
    pinned_as = re.findall(r'PIN_DIR "/(\w+)"', text)
    assert sorted(declared) == sorted(abi.ALL_MAPS)
    assert declared == pinned_as
    assert all(len(name) <= 15 for name in declared)


# map -> (key, value, per-CPU) as the Python side reads it
_CType = (
    type[ctypes.c_uint8] | type[ctypes.c_uint32] | type[ctypes.c_uint64] | type[ctypes.Structure]
)
MAP_LAYOUT: dict[str, tuple[_CType, _CType, bool]] = {
    abi.MAP_SERVICES: (abi.Lb4Key, abi.Lb4Service, False),
    abi.MAP_SLOTS: (abi.Lb4SlotKey, ctypes.c_uint32, False),
    abi.MAP_BACKENDS: (ctypes.c_uint32, abi.Lb4Backend, False),
    abi.MAP_REVNAT: (ctypes.c_uint32, abi.Lb4Rnat, False),
    abi.MAP_CONNTRACK: (ctypes.c_uint32, abi.Ct4Bucket, False),
    abi.MAP_SVC_STATS: (ctypes.c_uint32, abi.LbStats, True),
    abi.MAP_GLOBAL_STATS: (ctypes.c_uint32, ctypes.c_uint64, True),
    abi.MAP_SVC_META: (ctypes.c_uint32, abi.LbSvcMeta, False),
    abi.MAP_AFFINITY: (abi.Aff4Key, abi.Aff4Value, False),
    abi.MAP_SRC_RANGES: (abi.SrcRange4Key, ctypes.c_uint8, False),
    abi.MAP_CONFIG: (ctypes.c_uint32, ctypes.c_uint32, False),
    abi.MAP_MAGLEV: (ctypes.c_uint32, ctypes.c_uint32, False),
    abi.MAP_SOCK_NAT: (abi.SkNat4Key, abi.SkNat4Value, False),
    abi.MAP_DROPS: (ctypes.c_uint32, ctypes.c_uint64, True),
    abi.MAP_SERVICES6: (abi.Lb6Key, abi.Lb6Service, False),
    abi.MAP_BACKENDS6: (ctypes.c_uint32, abi.Lb6Backend, False),
    abi.MAP_REVNAT6: (ctypes.c_uint32, abi.Lb6Rnat, False),
    abi.MAP_CONNTRACK6: (ctypes.c_uint32, abi.Ct6Bucket, False),
    abi.MAP_AFFINITY6: (abi.Aff6Key, abi.Aff4Value, False),
    abi.MAP_SRC_RANGES6: (abi.SrcRange6Key, ctypes.c_uint8, False),
    abi.MAP_SOCK_NAT6: (abi.SkNat6Key, abi.SkNat6Value, False),
    abi.MAP_SOCK_NETNS: (ctypes.c_uint64, abi.SkNetnsValue, False),
    abi.MAP_XDP_DEVS: (ctypes.c_uint32, ctypes.c_uint32, False),
    abi.MAP_TAIL: (ctypes.c_uint32, ctypes.c_uint32, False),
    abi.MAP_XDP_TAIL: (ctypes.c_uint32, ctypes.c_uint32, False),
}


@pytest.mark.parametrize("name", abi.ALL_MAPS)
def test_pinned_map_matches_abi(name: str, program: LoadedProgram) -> None:
    key, value, percpu = MAP_LAYOUT[name]
    with PinnedMap(os.path.join(program.pin_dir, name)) as m:
        assert m.info.name == name
        assert m.info.key_size == ctypes.sizeof(key)
        assert m.info.value_size == ctypes.sizeof(value)
        assert m.info.percpu == percpu


def test_packed_layouts_match_the_ctypes_mirrors():
    """The writer's struct formats lay out bytes exactly as the ctypes mirrors do."""
    import ipaddress

    ip = ipaddress.IPv4Address("10.96.0.10")
    cases = {
        "lb4_key": (
            abi.Lb4Key(abi.pack_ip4(ip), abi.htons(80), 6, 0),
            (ip.packed, abi.htons(80), 6, 0),
        ),
        "lb4_service": (
            abi.Lb4Service(7, 3, 1, 10800, abi.pack_ip4(ip)),
            (7, 3, 1, 10800, ip.packed),
        ),
        "srcrange4_key": (abi.SrcRange4Key(56, 7, abi.pack_ip4(ip)), (56, 7, ip.packed)),
        "lb4_slot_key": (abi.Lb4SlotKey(7, 2), (7, 2)),
        "lb4_backend": (
            abi.Lb4Backend(abi.pack_ip4(ip), abi.htons(8080), 17, 1, 7),
            (ip.packed, abi.htons(8080), 17, 1, 7),
        ),
        "lb4_rnat": (
            abi.Lb4Rnat(abi.pack_ip4(ip), abi.htons(53), 0),
            (ip.packed, abi.htons(53), 0),
        ),
    }
    ip6 = ipaddress.IPv6Address("fd00:96::a")
    a6 = abi.addr6(ip6)
    cases |= {
        "lb6_key": (abi.Lb6Key(a6, abi.htons(80), 6, 0), (ip6.packed, abi.htons(80), 6, 0)),
        "lb6_service": (
            abi.Lb6Service(7, 3, 1, 10800, a6),
            (7, 3, 1, 10800, ip6.packed),
        ),
        "lb6_backend": (
            abi.Lb6Backend(a6, abi.htons(8080), 17, 1, 7),
            (ip6.packed, abi.htons(8080), 17, 1, 7),
        ),
        "lb6_rnat": (abi.Lb6Rnat(a6, abi.htons(53), 0), (ip6.packed, abi.htons(53), 0)),
        "srcrange6_key": (abi.SrcRange6Key(120, 7, a6), (120, 7, ip6.packed)),
    }
    assert abi.unpack_addr6(a6) == ip6
    for name, (cobj, fields) in cases.items():
        packer = abi.PACKED[name]
        assert packer.size == ctypes.sizeof(abi.C_STRUCTS[name]), name
        assert packer.pack(*fields) == bytes(cobj), name
    assert abi.PACK_LB_SVC_META.size == ctypes.sizeof(abi.LbSvcMeta)
