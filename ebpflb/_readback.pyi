"""ebpflb/_readback.c: read_state's bulk steps in C (see ebpflb.dataplane.bpf.maps)."""

from collections.abc import Sequence
from typing import Any, TypeVar

from typing_extensions import Buffer

_T = TypeVar("_T")

def objects(cls: type[_T], fields: tuple[str, ...], /, *columns: Sequence[Any]) -> list[_T]: ...
def addresses(
    cls: type[_T],
    fields: tuple[str, ...],
    buffer: Buffer,
    stride: int,
    offset: int,
    address_size: int,
    cache: dict[int, Any],
    /,
) -> list[_T]: ...
def backends(
    values: bytes,
    address_size: int,
    cls: type[Any],
    fields: tuple[str, ...],
    addresses: dict[int, Any],
    ports: dict[int, int],
    active: int,
    /,
) -> tuple[tuple[Any, ...], dict[int, tuple[int, int]], set[int]]: ...
def order(values: bytes, ids: bytes, address_size: int, /) -> tuple[bytes, bytes, set[int]]: ...
def runs(
    slot_keys: Buffer,
    slot_values: Buffer,
    sids: Buffer,
    counts: Buffer,
    starts: Buffer,
    ends: Buffer,
    ids: Buffer,
    /,
) -> bytes: ...
def records(
    keys: Buffer, key_size: int, values: Buffer, value_size: int, /
) -> tuple[bytes, bytes]: ...
def nonzero(buffer: Buffer, size: int, stride: int, /) -> tuple[bytes, bytes]: ...
def cut(
    flat: tuple[Any, ...],
    records: bytes,
    record_size: int,
    spans: dict[int, tuple[int, int]],
    sids: list[int],
    mask: Buffer,
    /,
) -> tuple[list[tuple[Any, ...]], list[bytes]]: ...
def names(
    keys: Buffer, values: Buffer, ns_size: int, name_size: int, port_size: int, /
) -> dict[int, tuple[str, str, str] | None]: ...
