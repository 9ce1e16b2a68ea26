"""ebpflb/_fullsync.c: a full sync's per-Service and per-frontend steps in C (see
ebpflb.sources.translate and ebpflb.plan)."""

from typing import Any

def bind(
    backend: type,
    frontend: type,
    port_name: type,
    ref: type,
    entry: type,
    state: type,
    ipv4: type,
    ipv6: type,
    /,
) -> None: ...
def held(entry: Any, have: Any, /) -> bool: ...
def flat(backends: tuple[Any, ...], /) -> bytes | tuple[()] | None: ...
def pack(flat: tuple[Any, ...], /) -> bytes | None: ...
def unpack(packed: bytes, /) -> tuple[tuple[Any, ...], tuple[int, ...]] | None: ...
def bind_entries(
    frontend: type, port_name: type, entry: type, ref: type, cluster_ip_kind: Any, /
) -> None: ...
def entries(
    ref: Any,
    cluster_ip: Any,
    version: int,
    ports: tuple[Any, ...],
    backends: dict[Any, Any],
    affinity: int,
    /,
) -> list[Any]: ...
def bind_services(
    fields: tuple[str, ...],
    info: type,
    type_cluster_ip: Any,
    no_topology: Any,
    ipv4: type,
    ipv6: type,
    /,
) -> None: ...
def services(
    ordered: list[Any],
    start: int,
    backends: dict[Any, Any],
    local: bool,
    asked: list[Any],
    keys_of: dict[Any, Any],
    /,
) -> int: ...
