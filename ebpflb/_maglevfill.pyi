"""ebpflb/_maglevfill.c: the Maglev fill of ebpflb.maglev in C (see ebpflb.maglev._fill)."""

from collections.abc import Sequence

def walks(names: Sequence[str], size: int, /) -> tuple[list[int], list[int]]: ...
def fill(offsets: Sequence[int], skips: Sequence[int], size: int, /) -> list[int]: ...
def fill_ids(
    offsets: Sequence[int], skips: Sequence[int], size: int, ids: Sequence[int], /
) -> bytes: ...

class TableWriter:
    """Maglev tables written into the memory of mmapable BPF arrays (MAP_SHARED), each
    left mapped in a reserved span until `release` or a full span unmaps them all."""

    size: int
    stride: int
    spots: int
    mapped: int
    def __init__(self, *, size: int, stride: int, spots: int) -> None: ...
    def write(
        self, fd: int, offsets: Sequence[int], skips: Sequence[int], ids: Sequence[int], /
    ) -> None: ...
    @property
    def mapped_made(self) -> int: ...
    def write_made(
        self, maker: MapMaker, offsets: Sequence[int], skips: Sequence[int], ids: Sequence[int], /
    ) -> int | None: ...
    def release(self) -> None: ...

class MapMaker:
    """`count` BPF maps of one shape, made (and with `map_bytes`, mapped) by a native
    thread of its own (which never takes the GIL) from the moment it is made, at most
    `ahead` of `take` (or TableWriter.write_made), which hands them out in order."""

    def __init__(
        self,
        *,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int,
        name: str,
        count: int,
        ahead: int,
        map_bytes: int,
    ) -> None: ...
    @property
    def counts(self) -> tuple[int, int, int]:
        """(made, taken, errno of the failed make or 0), at this moment."""
    def take(self) -> int | None: ...
    def close(self) -> None: ...
