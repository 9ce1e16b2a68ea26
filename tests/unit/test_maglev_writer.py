"""ebpflb/_maglevfill.c's TableWriter, on memfds (which map like an mmapable BPF
array; tests/bpf/test_maglev_tables.py writes real tables): each slot's id stored at
its stride in the mapped memory, equal to the Python fill's for any backends and every
table size, the bytes between the ids untouched, a whole span of tables unmapped at
once, and its arguments and failures checked without a mapping left behind."""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import _maglevfill, maglev

NAMES = [f"10.244.{i // 250}.{i % 250 + 1}:8080" for i in range(600)]
PAD = 0xA5A5A5A5  # what the bytes between the ids hold before a write, and after it


def _memfd(size: int, stride: int) -> int:
    """A file of `size` slots of `stride` bytes, each u32 word PAD."""
    fd = os.memfd_create("maglev-table")
    os.write(fd, array("I", [PAD]).tobytes() * (size * stride // 4))
    return fd


def _words(fd: int, size: int, stride: int) -> list[int]:
    with mmap.mmap(fd, size * stride, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
        return array("I", m[:]).tolist()


def _want(names: list[str], ids: list[int], size: int) -> list[int]:
    return [ids[i] for i in maglev._fill(*maglev._walks(names, size), size)]


def _maps_of(fd: int) -> int:
    """How many mappings of the file behind `fd` this process holds."""
    inode = os.fstat(fd).st_ino
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.split()[4] == str(inode))


@pytest.fixture
def fds() -> Iterator[list[int]]:
    made: list[int] = []
    yield made
    for fd in made:
        os.close(fd)


@pytest.mark.parametrize("size", maglev.TABLE_SIZES)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_the_written_table_is_the_python_fill_at_its_stride(size: int, data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=40, unique=True))
    ids = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(names), max_size=len(names)))
    stride = data.draw(st.sampled_from([4, 8, 16]))
    fd = _memfd(size, stride)
    try:
        writer = _maglevfill.TableWriter(size=size, stride=stride, spots=2)
        writer.write(fd, *maglev.walks(names, size), ids)
        words = _words(fd, size, stride)
        per = stride // 4
        assert words[::per] == _want(names, ids, size)
        assert all(w == PAD for i, w in enumerate(words) if i % per)  # only the ids written
        writer.release()
    finally:
        os.close(fd)


def test_a_rewrite_replaces_every_slot(fds: list[int]) -> None:
    fd = _memfd(1021, 8)
    fds.append(fd)
    writer = _maglevfill.TableWriter(size=1021, stride=8, spots=4)
    for n in (5, 4, 7):
        ids = list(range(100 * n, 100 * n + n))
        writer.write(fd, *maglev.walks(NAMES[:n], 1021), ids)
        assert _words(fd, 1021, 8)[::2] == _want(NAMES[:n], ids, 1021)
    writer.release()


def test_tables_stay_mapped_until_the_span_is_full_or_released(fds: list[int]) -> None:
    fds += [_memfd(251, 8) for _ in range(5)]
    walks = maglev.walks(NAMES[:3], 251)
    writer = _maglevfill.TableWriter(size=251, stride=8, spots=2)
    assert (writer.size, writer.stride, writer.spots, writer.mapped) == (251, 8, 2, 0)
    writer.write(fds[0], *walks, [1, 2, 3])
    writer.write(fds[1], *walks, [1, 2, 3])
    assert writer.mapped == 2 and _maps_of(fds[0]) == _maps_of(fds[1]) == 1
    writer.write(fds[2], *walks, [1, 2, 3])  # the span was full: unmapped, a new one
    assert writer.mapped == 1
    assert (_maps_of(fds[0]), _maps_of(fds[1]), _maps_of(fds[2])) == (0, 0, 1)
    writer.write(fds[3], *walks, [1, 2, 3])
    writer.release()
    assert writer.mapped == 0 and not any(_maps_of(fd) for fd in fds)
    writer.release()  # nothing mapped: nothing to do
    writer.write(fds[4], *walks, [4, 5, 6])  # and it writes again after a release
    assert _words(fds[4], 251, 8)[::2] == _want(NAMES[:3], [4, 5, 6], 251)
    del writer  # unmaps what is left
    assert not _maps_of(fds[4])


def test_an_fd_that_cannot_be_mapped_fails_and_the_writer_goes_on(fds: list[int]) -> None:
    good = _memfd(251, 8)
    r, w = os.pipe()  # a pipe cannot be mapped
    fds += [good, r, w]
    walks = maglev.walks(NAMES[:3], 251)
    writer = _maglevfill.TableWriter(size=251, stride=8, spots=8)
    writer.write(good, *walks, [1, 2, 3])
    with pytest.raises(OSError):
        writer.write(r, *walks, [1, 2, 3])
    assert writer.mapped == 0 and not _maps_of(good)  # the span given up, unmapped
    with pytest.raises(OSError):
        writer.write(-1, *walks, [1, 2, 3])
    writer.write(good, *walks, [7, 8, 9])
    assert writer.mapped == 1
    assert _words(good, 251, 8)[::2] == _want(NAMES[:3], [7, 8, 9], 251)
    writer.release()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 1, "stride": 8, "spots": 1}, "table size must be in"),
        ({"size": 2**24 + 1, "stride": 8, "spots": 1}, "table size must be in"),
        ({"size": 251, "stride": 6, "spots": 1}, "stride must be a multiple of 4"),
        ({"size": 251, "stride": 0, "spots": 1}, "stride must be a multiple of 4"),
        ({"size": 251, "stride": 8, "spots": 0}, "span must hold 1 to"),
    ],
)
def test_bad_shapes_are_refused(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _maglevfill.TableWriter(**kwargs)


def test_the_shape_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        _maglevfill.TableWriter(251, 8, 1)  # type: ignore[call-arg]


def test_bad_walks_and_ids_are_refused_before_anything_is_mapped(fds: list[int]) -> None:
    fd = _memfd(251, 8)
    fds.append(fd)
    writer = _maglevfill.TableWriter(size=251, stride=8, spots=2)
    with pytest.raises(ValueError, match="needs a backend"):
        writer.write(fd, [], [], [])
    with pytest.raises(ValueError, match="skips must be in"):
        writer.write(fd, [0], [251], [1])
    with pytest.raises(ValueError, match="1 Maglev ids for 2 backends"):
        writer.write(fd, [0, 1], [1, 2], [1])
    with pytest.raises(OverflowError, match="u32"):
        writer.write(fd, [0, 1], [1, 2], [1, 2**32])
    assert writer.mapped == 0 and not _maps_of(fd)
    assert set(_words(fd, 251, 8)) == {PAD}


def test_walks_refuses_sizes_outside_the_list() -> None:
    with pytest.raises(ValueError, match="not one of"):
        maglev.walks(NAMES[:2], 1000)
