"""ebpflb/_maglevfill.c: the Maglev fill of ebpflb.maglev in C (see ebpflb.maglev._fill)."""

from collections.abc import Sequence

def fill(offsets: Sequence[int], skips: Sequence[int], size: int, /) -> list[int]: ...
def fill_ids(
    offsets: Sequence[int], skips: Sequence[int], size: int, ids: Sequence[int], /
) -> bytes: ...
