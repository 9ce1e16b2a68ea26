"""The CLI reads only maps shaped as ebpflb's: a foreign map pinned under one of its
names (another type, key or value size, too few entries, or not a map at all) is one
line and exit status 1 (diff: 2) from every command that reads pins, never an empty table, a
traceback or a crash. The maps are made with bpf(2) on a private bpffs, unmounted
afterwards."""

from __future__ import annotations

import ctypes
import os

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.maps import _GEOMETRY, _MAP_TYPES
from ebpflb.dataplane.bpf.syscall import MapType, map_create, obj_pin

pytestmark = pytest.mark.root

BPF_F_NO_PREALLOC = 1


Shape = tuple[int, int, int, int]  # map type, key size, value size, max entries


def _ours(name: str) -> Shape:
    key_t, value_t, _ = _GEOMETRY[name]
    map_type, min_entries = _MAP_TYPES[name]
    return map_type, ctypes.sizeof(key_t), ctypes.sizeof(value_t), max(min_entries, 64)


def _pin(path: str, shape: Shape) -> None:
    map_type, ks, vs, entries = shape
    inner = 0
    flags = BPF_F_NO_PREALLOC if map_type == MapType.LPM_TRIE else 0
    if map_type == MapType.ARRAY_OF_MAPS:
        inner = map_create(MapType.ARRAY, 4, 4, 1, "inner")
    fd = map_create(map_type, ks, vs, entries, "test", flags=flags, inner_map_fd=inner)
    try:
        obj_pin(fd, path)
    finally:
        os.close(fd)
        if inner:
            os.close(inner)


def _pin_all(pin_dir: str, foreign: dict[str, Shape], *, skip: str = "") -> None:
    for name in abi.ALL_MAPS:
        if name != skip:
            _pin(os.path.join(pin_dir, name), foreign.get(name, _ours(name)))


ARRAY_4_4: Shape = (MapType.ARRAY, 4, 4, 64)
CASES: list[tuple[str, Shape, str]] = [
    (abi.MAP_SERVICES, ARRAY_4_4, "found a array map with 4-byte keys and 4-byte values"),
    # a value larger than ebpflb's: the kernel would copy it past the caller's buffer
    (
        abi.MAP_CONNTRACK,
        (MapType.LRU_HASH, ctypes.sizeof(abi.Ct4Key), 4096, 64),
        "4096-byte values",
    ),
    (
        abi.MAP_SVC_META,
        (MapType.HASH, 4, 8, 64),
        "found a hash map with 4-byte keys and 8-byte values",
    ),
    (abi.MAP_GLOBAL_STATS, (MapType.PERCPU_ARRAY, 4, 8, 2), "expected at least"),
    (
        abi.MAP_SVC_STATS,
        (MapType.PERCPU_HASH, 4, ctypes.sizeof(abi.LbStats), 64),
        "found a percpu-hash map",
    ),
]
COMMANDS = [
    ["services"],
    ["backends"],
    ["conntrack"],
    ["stats"],
    ["explain", "10.0.0.1:80", "--client", "10.1.0.1:1234"],
]


@pytest.mark.parametrize(("name", "shape", "found"), CASES, ids=[c[0] for c in CASES])
def test_a_foreign_map_is_one_line_and_exit_1(
    bpffs: str, tmp_path, name: str, shape: Shape, found: str
):
    _pin_all(bpffs, {name: shape})
    runner = CliRunner()
    for argv in [*COMMANDS, ["diff", "--manifests", str(tmp_path)]]:
        result = runner.invoke(app, [*argv, "--pin-dir", bpffs])
        status = 2 if argv[0] == "diff" else 1  # diff's 1 means changes
        assert result.exit_code == status, (argv, result.output, result.exception)
        lines = [x for x in result.output.splitlines() if x.startswith("error:")]
        assert len(lines) == 1, (argv, result.output)
        line = lines[0]
        assert f"pinned map {os.path.join(bpffs, name)} is not ebpflb's" in line, line
        assert "expected" in line and found in line, line


def test_a_program_pinned_under_a_map_name_is_refused(bpffs: str):
    _pin_all(bpffs, {}, skip=abi.MAP_BACKENDS)
    fd = _load_return_zero()
    try:
        obj_pin(fd, os.path.join(bpffs, abi.MAP_BACKENDS))
    finally:
        os.close(fd)
    result = CliRunner().invoke(app, ["backends", "--pin-dir", bpffs])
    assert result.exit_code == 1, result.output
    assert "found a BPF program" in result.output


def test_maps_shaped_as_ours_are_read(bpffs: str):
    _pin_all(bpffs, {})
    for argv in COMMANDS:
        result = CliRunner().invoke(app, [*argv, "--pin-dir", bpffs])
        assert result.exit_code == 0, (argv, result.output, result.exception)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
    ]


def _load_return_zero() -> int:
    """A socket filter `r0 = 0; exit` (BPF_PROG_LOAD), to pin where a map should be."""
    from ebpflb.dataplane.bpf import syscall

    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=1, insn_cnt=2, insns=ctypes.addressof(insns), license=ctypes.addressof(lic)
    )
    return syscall._bpf(5, attr)  # BPF_PROG_LOAD


def test_every_map_has_a_known_shape() -> None:
    """A map added to abi.ALL_MAPS without its shape here would go unchecked: the CLI
    would read a foreign map pinned under its name."""
    assert set(_GEOMETRY) == set(abi.ALL_MAPS) == set(_MAP_TYPES)
