"""A backend as the proxy dials it: its key, socket family and address, and its id.

One Target per (frontend, backend), kept while the backend stays in the frontend, so
the hot paths compare and hash Targets by identity: hashing a BackendKey hashes an
ipaddress object, in Python, on every look-up. The selection code chooses among a
frontend's Targets in slot order, and the affinity table records them."""

from __future__ import annotations

import socket

from ebpflb.plan import BackendKey


class Target:
    __slots__ = ("addr", "family", "gone", "host", "id", "key")

    def __init__(self, key: BackendKey, backend_id: int) -> None:
        self.key = key
        self.id = backend_id
        self.host = str(key[0])
        self.family = socket.AF_INET if key[0].version == 4 else socket.AF_INET6
        self.addr = (self.host, key[1])
        self.gone = False  # the backend left the frontend: its flows move or end

    def __repr__(self) -> str:
        return f"Target({self.host}:{self.key[1]}, id={self.id})"
