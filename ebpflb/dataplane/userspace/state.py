"""The userspace data path's published state: `<state dir>/userspace.json`, written
atomically (temporary file + rename) by the agent, and read back by the inspection
commands as the same views the bpf path produces. The file holds exactly the lists the
views' `as_json()` produce, so `--json` output is identical for both data paths:

    {"version": 1, "dataplane": "userspace", "pid": ..., "written_at": <unix time>,
     "services": [...], "backends": [...], "conntrack": [...], "stats": {...}}

Flow ages are as of `written_at`; a reader adds the time since (the agent rewrites
the file within about half a second of any traffic)."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import replace
from typing import Any

from ebpflb.dataplane.view import BackendView, ConnView, ServiceStats, ServiceView, StatsView
from ebpflb.errors import DataplaneError
from ebpflb.model import Frontend, FrontendKind, Protocol, ServicePortName, ServiceRef
from ebpflb.statefile import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR  # re-exported
from ebpflb.statefile import pid_alive, remove_file, write_json_atomic

STATE_FILE = "userspace.json"
VERSION = 1


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def snapshot(
    services: list[ServiceView],
    backends: list[BackendView],
    conns: list[ConnView],
    stats: StatsView,
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "dataplane": "userspace",
        "pid": os.getpid(),
        "written_at": time.time(),
        "services": [v.as_json() for v in services],
        "backends": [v.as_json() for v in backends],
        "conntrack": [v.as_json() for v in conns],
        "stats": stats.as_json(),
    }


def write_state(state_dir: str, data: dict[str, Any]) -> None:
    write_json_atomic(state_path(state_dir), data)


def remove_state(state_dir: str) -> None:
    remove_file(state_path(state_dir))


def _port_name(service: str | None, port: str | None, protocol: str) -> ServicePortName | None:
    if service is None:
        return None
    ns, _, name = service.partition("/")
    return ServicePortName(ServiceRef(ns, name), port or "", Protocol(protocol))


def _frontend(row: dict[str, Any]) -> Frontend:
    return Frontend(
        ipaddress.ip_address(row["address"]),
        int(row["port"]),
        Protocol(row["protocol"]),
        FrontendKind(row["kind"]),
    )


class UserspaceInspector:
    """The Inspector of the userspace data path: reads the agent's state file."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, *, check_pid: bool = True) -> None:
        path = state_path(state_dir)
        try:
            with open(path) as f:
                self.data: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise DataplaneError(f"no userspace state at {path}") from None
        except (OSError, ValueError) as exc:
            raise DataplaneError(f"cannot read {path}: {exc}") from exc
        if self.data.get("version") != VERSION:
            raise DataplaneError(f"{path}: unknown version {self.data.get('version')}")
        pid = int(self.data.get("pid", 0))
        if check_pid and not pid_alive(pid):
            raise DataplaneError(
                f"the userspace data path is not running (agent pid {pid} is gone; stale {path})"
            )
        self.age = max(0.0, time.time() - float(self.data.get("written_at", time.time())))
        self._frontends = {r["frontend"]: _frontend(r) for r in self.data["services"]}

    def close(self) -> None:
        pass

    def __enter__(self) -> UserspaceInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fe(self, text: str, protocol: str) -> Frontend:
        fe = self._frontends.get(text)
        if fe is not None:
            return fe
        host, _, port = text.rpartition("/")[0].rpartition(":")
        return Frontend(ipaddress.ip_address(host.strip("[]")), int(port), Protocol(protocol))

    def services(self) -> list[ServiceView]:
        return [
            ServiceView(
                r["id"],
                _frontend(r),
                _port_name(r["service"], r["port_name"], r["protocol"]),
                r["backends"],
                r["active_backends"],
                r["affinity_timeout"],
            )
            for r in self.data["services"]
        ]

    def backends(self) -> list[BackendView]:
        return [
            BackendView(
                r["id"],
                r["svc_id"],
                self._fe(r["frontend"], r["protocol"]),
                _port_name(r["service"], r["port_name"], r["protocol"]),
                ipaddress.ip_address(r["address"]),
                r["port"],
                r["active"],
                r["terminating"],
            )
            for r in self.data["backends"]
        ]

    def conntrack(self) -> list[ConnView]:
        out = []
        for r in self.data["conntrack"]:
            v = ConnView(
                r["protocol"],
                ipaddress.ip_address(r["client_address"]),
                r["client_port"],
                ipaddress.ip_address(r["frontend_address"]),
                r["frontend_port"],
                ipaddress.ip_address(r["backend_address"]),
                r["backend_port"],
                r["backend_id"],
                r["svc_id"],
                r["service"],
                r["age_seconds"],
                r["idle_seconds"],
            )  # no source NAT of its own
            out.append(
                replace(
                    v, age_seconds=v.age_seconds + self.age, idle_seconds=v.idle_seconds + self.age
                )
            )
        return out

    def stats(self) -> StatsView:
        st = self.data["stats"]
        rows = []
        for r in st["services"]:
            fe = self._frontends.get(r["frontend"])
            if fe is None:
                continue
            rows.append(
                ServiceStats(
                    r["svc_id"],
                    fe,
                    _port_name(r["service"], r["port_name"], str(fe.protocol)),
                    r["rx_packets"],
                    r["rx_bytes"],
                    r["tx_packets"],
                    r["tx_bytes"],
                )
            )
        return StatsView(
            tuple(rows),
            {k: int(v) for k, v in st["counters"].items()},
            {k: int(v) for k, v in st.get("drops", {}).items()},
        )
