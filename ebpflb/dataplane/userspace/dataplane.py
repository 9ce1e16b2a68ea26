"""The userspace data path behind the Dataplane protocol: frontends become local
addresses of `ebpflb0` (NodePorts excepted: they are the node's own addresses), kept
to their Service ports by a filter (portfilter.py), and sockets of the proxy engine
(proxy.py); the state the CLI shows is published to
`<state dir>/userspace.json` (state.py)."""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ebpflb.dataplane.telemetry import TableFill, Telemetry
from ebpflb.dataplane.userspace import state as statefile
from ebpflb.dataplane.userspace.device import DEVICE_NAME
from ebpflb.dataplane.userspace.proxy import Engine, EngineConfig, drops_of
from ebpflb.errors import DataplaneError
from ebpflb.model import FrontendKey, FrontendKind, IPAddress, Protocol
from ebpflb.plan import FrontendState, Plan, apply_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserspaceConfig:
    state_dir: str = statefile.DEFAULT_STATE_DIR
    device: str = DEVICE_NAME
    udp_idle_timeout: float = 30.0  # seconds before an idle UDP session is dropped
    max_udp_sessions: int = 10_000  # over every frontend; least recently used evicted
    connect_timeout: float = 5.0  # per backend connect attempt
    splice: bool = True  # os.splice for TCP; False: recv/send
    publish_interval: float = 0.5  # at most this often, when something changed
    publish_idle: float = 5.0  # and at least this often
    netns: str | None = None  # run the proxy in this netns file (tests); None: ours
    maglev_table_size: int = 0  # > 0: new flows choose by Maglev tables of this size


def device_addresses(frontends: Mapping[FrontendKey, FrontendState]) -> set[IPAddress]:
    """The addresses the device must carry: every frontend's but the NodePorts', which
    are the node's own addresses, local already (as kube-proxy's IPVS mode leaves them
    off kube-ipvs0); an address that is also a ClusterIP, external or load-balancer
    address is on the device for that frontend."""
    return {
        st.frontend.address for st in frontends.values() if st.kind is not FrontendKind.NODE_PORT
    }


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each relayed TCP connection
    holds two sockets, and four pipe ends once it turns bulk. Returns the new soft
    limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class UserspaceDataplane:
    name = "userspace"
    applies_in_parts = False  # the proxy re-derives its whole state at each apply
    protocols = frozenset({Protocol.TCP, Protocol.UDP})  # no SCTP sockets relayed

    def __init__(self, config: UserspaceConfig | None = None) -> None:
        self.config = config or UserspaceConfig()
        raise_fd_limit()
        self._state: dict[FrontendKey, FrontendState] = {}
        self._lock = threading.Lock()  # serialises apply/close callers
        self._last_publish = 0.0
        self._closed = False
        c = self.config
        self.engine = Engine(
            EngineConfig(
                netns=c.netns,
                device=c.device,
                udp_idle_timeout=c.udp_idle_timeout,
                max_udp_sessions=c.max_udp_sessions,
                connect_timeout=c.connect_timeout,
                splice=c.splice,
                tick=min(c.publish_interval, 1.0),
                maglev_table_size=c.maglev_table_size,
            ),
            on_tick=self._tick,
        )
        # Start from an empty table; the device may hold a previous run's addresses,
        # which the first apply removes if no frontend wants them.
        try:
            self.engine.call(lambda: self._publish_on_loop(force=True))
        except Exception:
            self.close()
            raise
        log.info(
            "userspace data path: frontends on %s, state in %s",
            c.device,
            statefile.state_path(c.state_dir),
        )

    # -- Dataplane -------------------------------------------------------------------

    def current(self) -> Mapping[FrontendKey, FrontendState]:
        return MappingProxyType(self._state)

    def apply(self, plan: Plan) -> None:
        with self._lock:
            desired = apply_to(self._state, plan)

            def run() -> tuple[dict[FrontendKey, FrontendState], list[str]]:
                return self.engine.apply_on_loop(desired)

            addresses = self.engine.addresses
            # The filter first: a new address is on the device only with the filter
            # that keeps it to its Service ports (portfilter.py).
            errors = addresses.sync_filter(desired.values())
            errors += addresses.sync_addresses(device_addresses(desired), add=True)
            held, more = self.engine.call(run)
            self._state = held
            errors += more
            # An address leaves the device once no frontend uses it.
            errors += addresses.sync_addresses(device_addresses(held), add=False)
            errors += addresses.sync_filter(held.values())
            # Published last: what the CLI (and a waiting test) reads as served or gone
            # is then so on the device too, not only in the proxy.
            self.engine.call(lambda: self._publish_on_loop(force=True))
        if errors:
            raise DataplaneError("; ".join(errors))

    def reload(self) -> None:
        """Nothing to read back: the proxy's state is this process's own."""

    def housekeeping(self) -> None:
        if not self._closed and not self.engine.thread.is_alive():
            raise DataplaneError("the userspace proxy's event loop has stopped")

    def close(self, *, cleanup: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.engine.thread.is_alive():
                try:
                    self.engine.call(self.engine.shutdown_on_loop)
                except Exception as exc:
                    log.warning("stopping the userspace proxy: %s", exc)
                self.engine.thread.join(10)
            try:
                self.engine.addresses.close(remove=cleanup)
            except Exception as exc:
                log.warning("closing %s: %s", self.config.device, exc)
            statefile.remove_state(self.config.state_dir)
            if cleanup:
                log.info("removed %s and the userspace state", self.config.device)

    # -- inspection (any thread) ---------------------------------------------------------

    def telemetry(self) -> Telemetry:
        """Counters and table fill, read on the proxy's loop now (for a scrape)."""

        def read() -> Telemetry:
            e = self.engine
            counters = dict(e.counters)
            counters["affinity_hit"] = e.affinity.hits
            tables = (
                TableFill("udp_sessions", e.udp_sessions, e.config.max_udp_sessions),
                TableFill("affinity", len(e.affinity), e.affinity.max_entries),
            )
            return Telemetry(counters, tables, e.flows(), drops_of(counters))

        return self.engine.call(read, timeout=5.0)

    def inspector_snapshot(self) -> dict[str, object]:
        """The state file's content, computed now (tests and the bench use it)."""
        return self.engine.call(self._snapshot)

    def _snapshot(self) -> dict[str, object]:
        e = self.engine
        return statefile.snapshot(e.services(), e.backends(), e.conntrack(), e.stats())

    def _publish_on_loop(self, *, force: bool = False) -> None:
        now = time.monotonic()
        e = self.engine
        due = (
            force
            or (e.dirty and now - self._last_publish >= self.config.publish_interval)
            or now - self._last_publish >= self.config.publish_idle
        )
        if not due:
            return
        e.dirty = False
        self._last_publish = now
        try:
            statefile.write_state(self.config.state_dir, self._snapshot())
        except OSError as exc:
            log.warning("cannot write the userspace state: %s", exc)

    def _tick(self) -> None:
        self._publish_on_loop()
