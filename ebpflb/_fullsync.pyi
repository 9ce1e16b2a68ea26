"""ebpflb/_plancheck.c: the per-frontend checks of a full sync's diff (see ebpflb.plan)."""

from typing import Any

def bind(
    backend: type,
    frontend: type,
    port_name: type,
    ref: type,
    entry: type,
    state: type,
    ipv4: type,
    /,
) -> None: ...
def held(entry: Any, have: Any, /) -> bool: ...
def flat(backends: tuple[Any, ...], /) -> tuple[Any, ...] | None: ...
