"""The Maglev fill in C (ebpflb/_maglevfill.c) against the Python fill it replaces
(ebpflb.maglev._fill, the reference): the same table for any backends and every table
size, the same ids bytes, its arguments checked, and ebpflb.maglev using it. The
import below fails when the install did not build the extension (no compiler or
Python headers): that is a failure here, not a skip."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
import timeit
import zipfile
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _maglevfill, maglev

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"10.244.{i // 250}.{i % 250 + 1}:8080" for i in range(600)]
NAME = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24)


def _python_table(names: list[str], size: int) -> list[int]:
    return maglev._fill(*maglev._walks(names, size), size)


def _python_ids(names: list[str], ids: list[int], size: int) -> bytes:
    return array("I", [ids[i] for i in _python_table(names, size)]).tobytes()


@pytest.mark.parametrize("size", maglev.TABLE_SIZES)
@settings(max_examples=15, deadline=None)
@given(names=st.lists(NAME, min_size=1, max_size=40), data=st.data())
def test_the_c_fill_is_the_python_fill(size: int, names: list[str], data: st.DataObject) -> None:
    want = _python_table(names, size)
    assert maglev.table(names, size) == want
    ids = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(names), max_size=len(names)))
    assert maglev.table_ids(names, ids, size) == _python_ids(names, ids, size)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size=st.sampled_from(maglev.TABLE_SIZES[:4]))
def test_any_walks_give_the_python_fill(data: st.DataObject, size: int) -> None:
    """Walks not made from names: the fill does not depend on how they were hashed."""
    n = data.draw(st.integers(1, 30))
    offsets = data.draw(st.lists(st.integers(0, size - 1), min_size=n, max_size=n))
    skips = data.draw(st.lists(st.integers(1, size - 1), min_size=n, max_size=n))
    assert _maglevfill.fill(offsets, skips, size) == maglev._fill(offsets, skips, size)


@pytest.mark.parametrize("n", [1, 2, 250, 251, 252, 600])
def test_one_backend_up_to_more_backends_than_slots(n: int) -> None:
    """n == size: one slot each; n > size: the first `size` backends take one each
    and the others none, as the Python fill's rounds give."""
    names = NAMES[:n]
    t = maglev.table(names, 251)
    assert t == _python_table(names, 251)
    assert set(t) == set(range(min(n, 251)))
    ids = [1000 + i for i in range(n)]
    assert maglev.table_ids(names, ids, 251) == _python_ids(names, ids, 251)


def test_a_large_table_with_many_backends() -> None:
    names = NAMES[:300]
    assert maglev.table(names, 65521) == _python_table(names, 65521)


def test_no_backend() -> None:
    assert _maglevfill.fill([], [], 1021) == []
    assert _maglevfill.fill_ids([], [], 1021, []) == b""
    assert maglev.table_ids([], [], 1021) == b""


def test_the_ids_are_native_u32s() -> None:
    got = _maglevfill.fill_ids([0, 5], [1, 2], 251, [7, 2**32 - 1])
    order = _maglevfill.fill([0, 5], [1, 2], 251)
    assert len(got) == 251 * 4
    assert array("I", got).tolist() == [[7, 2**32 - 1][i] for i in order]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((5, [1], 251), TypeError, "sequence"),
        (([0], None, 251), TypeError, "sequence"),
        ((["0"], [1], 251), TypeError, "must be ints"),
        (([0.0], [1], 251), TypeError, "must be ints"),
        (([0], [1], "251"), TypeError, "cannot be interpreted as an integer"),
        (([0], [1]), TypeError, "takes exactly"),
        (([0, 1], [1], 251), ValueError, "2 Maglev offsets but 1 skips"),
        (([251], [1], 251), ValueError, r"offsets must be in \[0, 251\)"),
        (([-1], [1], 251), ValueError, "offsets must be in"),
        (([2**70], [1], 251), ValueError, "offsets must be in"),
        (([0], [0], 251), ValueError, r"skips must be in \[1, 251\)"),
        (([0], [251], 251), ValueError, "skips must be in"),
        (([0], [4], 10), ValueError, "shares a factor"),
        (([0], [1], 1), ValueError, "table size must be in"),
        (([0], [1], 2**24 + 1), ValueError, "table size must be in"),
    ],
)
def test_bad_walks_are_refused(args: tuple[object, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _maglevfill.fill(*args)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        _maglevfill.fill_ids(*args, [1] * 2)  # type: ignore[arg-type, call-arg]


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ([1], ValueError, "1 Maglev ids for 2 backends"),
        ([1, 2, 3], ValueError, "3 Maglev ids for 2 backends"),
        ([1, "2"], TypeError, "ids must be ints"),
        (7, TypeError, "ids must be a sequence"),
        ([1, -1], OverflowError, "u32"),
        ([1, 2**32], OverflowError, "u32"),
    ],
)
def test_bad_ids_are_refused(ids: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _maglevfill.fill_ids([0, 1], [1, 2], 251, ids)  # type: ignore[arg-type]


def test_table_ids_checks_like_table() -> None:
    with pytest.raises(ValueError, match="not one of"):
        maglev.table_ids(NAMES[:2], [1, 2], 1000)
    with pytest.raises(ValueError, match="1 Maglev ids for 2 backends"):
        maglev.table_ids(NAMES[:2], [1], 1021)


def test_maglev_uses_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    assert maglev._native_fill is _maglevfill.fill
    assert maglev._native_fill_ids is _maglevfill.fill_ids
    calls: list[int] = []

    def spy(offsets: list[int], skips: list[int], size: int) -> list[int]:
        calls.append(size)
        return _maglevfill.fill(offsets, skips, size)

    monkeypatch.setattr(maglev, "_native_fill", spy)
    maglev.table(NAMES[:5], 1021)
    assert calls == [1021]


def test_without_the_extension_the_python_fill_gives_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = NAMES[:5]
    ids = [11, 22, 33, 44, 55]
    native = (maglev.table(names, 1021), maglev.table_ids(names, ids, 1021))
    monkeypatch.setattr(maglev, "_native_fill", None)
    monkeypatch.setattr(maglev, "_native_fill_ids", None)
    assert (maglev.table(names, 1021), maglev.table_ids(names, ids, 1021)) == native


def test_the_c_fill_is_much_faster() -> None:
    """About 30x on an idle machine; 5x leaves room for a loaded one."""
    walks = maglev._walks(NAMES[:5], 1021)
    c = min(timeit.repeat(lambda: _maglevfill.fill(*walks, 1021), number=200, repeat=5))
    py = min(timeit.repeat(lambda: maglev._fill(*walks, 1021), number=20, repeat=5)) * 10
    assert py > 5 * c, (py, c)


def test_random_name_sets_at_the_default_size() -> None:
    rng = random.Random(15)
    for _ in range(50):
        names = rng.sample(NAMES, rng.randint(1, 64))
        assert maglev.table(names) == _python_table(names, maglev.DEFAULT_TABLE_SIZE)


def test_the_images_build_stage_builds_the_extension(tmp_path: Path) -> None:
    """deploy/Containerfile's build stage, replayed without podman: from the files it
    copies (and nothing else), pip builds a wheel with the compiled modules in it."""
    text = (ROOT / "deploy" / "Containerfile").read_text()
    build, runtime = text.split(" AS build\n", 1)[1].split("\nFROM ", 1)
    assert "python3-dev" in build and "gcc" in build
    # the image insists on every native module
    assert "import bcc, ebpflb, ebpflb._maglevfill, ebpflb._readback, ebpflb._fullsync" in runtime
    src = tmp_path / "src"
    src.mkdir()
    copies = [line.split()[1:] for line in build.splitlines() if line.startswith("COPY ")]
    assert copies
    for *paths, dest in copies:
        for path in paths:
            target = src / dest / Path(path).name if dest.endswith("/") else src / dest
            if (ROOT / path).is_dir():
                skip = shutil.ignore_patterns("*.so", "__pycache__")
                shutil.copytree(ROOT / path, target, ignore=skip)
            else:
                shutil.copy(ROOT / path, target)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    out = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = wheels.glob("ebpflb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("_maglevfill", "_readback", "_fullsync"):
        assert any(n.startswith(f"ebpflb/{module}.") and n.endswith(".so") for n in names)


LONG_NAME = st.text(st.characters(exclude_categories=["Cs"]), min_size=0, max_size=200)


@pytest.mark.parametrize("size", maglev.TABLE_SIZES)
@settings(max_examples=25, deadline=None)
@given(names=st.lists(LONG_NAME, max_size=12))
def test_the_c_walks_are_the_python_walks(size: int, names: list[str]) -> None:
    """Names of 0 to 800 UTF-8 bytes: none, one and several BLAKE2b blocks."""
    assert _maglevfill.walks(names, size) == maglev._walks(names, size)


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 255, 256, 257, 1000])
def test_the_c_walks_at_block_edges(length: int) -> None:
    names = ["x" * length, "é" * length]
    assert _maglevfill.walks(names, 1021) == maglev._walks(names, 1021)


def test_the_c_walks_are_salted_blake2b() -> None:
    """hashlib's, written out: an 8-byte digest salted "offset" / "skip", little-endian."""
    name = "10.244.1.7:8080"

    def h(salt: bytes) -> int:
        digest = hashlib.blake2b(name.encode(), digest_size=8, salt=salt).digest()
        return int.from_bytes(digest, "little")

    assert _maglevfill.walks([name], 1021) == ([h(b"offset") % 1021], [h(b"skip") % 1020 + 1])


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([b"x"], 1021), TypeError, "names must be str"),
        ((5, 1021), TypeError, "sequence of str"),
        ((["\ud800"], 1021), UnicodeEncodeError, "surrogate"),
        ((["x"], 1), ValueError, "table size must be in"),
    ],
)
def test_bad_names_are_refused(args: tuple[object, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _maglevfill.walks(*args)  # type: ignore[arg-type]


def test_maglev_walks_with_and_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    assert maglev._native_walks is _maglevfill.walks
    native = maglev.walks(NAMES[:7], 4093)
    monkeypatch.setattr(maglev, "_native_walks", None)
    assert maglev.walks(NAMES[:7], 4093) == native
    with pytest.raises(UnicodeEncodeError):
        maglev.walks(["\ud800"], 1021)  # as the C walks refuse it


def test_the_c_walks_are_faster() -> None:
    """About 2x on an idle machine."""
    names = NAMES[:5]
    c = min(timeit.repeat(lambda: _maglevfill.walks(names, 1021), number=2000, repeat=5))
    py = min(timeit.repeat(lambda: maglev._walks(names, 1021), number=2000, repeat=5))
    assert py > 1.2 * c, (py, c)
