"""The kernel data path: compile, pin, attach, and write plans into the maps."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import ensure_pin_dir, remove_legacy_pins, remove_pins
from ebpflb.dataplane.bpf.cttable import migrate_conntrack
from ebpflb.dataplane.bpf.hostbackends import HostBackends
from ebpflb.dataplane.bpf.maps import (
    BpfMaps,
    MapState,
    check_geometry,
    migrate_legacy_pins,
    pins_present,
    read_state,
    resolve_sizes,
)
from ebpflb.dataplane.bpf.podnetns import PodNamespaces
from ebpflb.dataplane.bpf.socklb import SocketLb, remove_links
from ebpflb.dataplane.bpf.telemetry import read_telemetry, written_counts
from ebpflb.dataplane.bpf.writer import MapWriter
from ebpflb.dataplane.bpf.xdp import XdpMode, XdpUplinks
from ebpflb.dataplane.telemetry import Telemetry
from ebpflb.errors import CapacityError, DataplaneError
from ebpflb.model import FrontendKey, Protocol
from ebpflb.plan import FrontendState, Plan
from ebpflb.statefile import DEFAULT_STATE_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BpfConfig:
    pin_dir: str = abi.DEFAULT_PIN_DIR
    # empty: every veth and uplink (see TcAttacher.uplinks), also ones that appear later
    interfaces: tuple[str, ...] = ()
    # map sizes; None: the size of the maps already pinned, else abi.DEFAULT_MAX_*
    max_services: int | None = None
    max_backends: int | None = None
    max_conntrack: int | None = None
    maglev_table_size: int = 0  # > 0: new flows choose by Maglev tables of this size
    # Socket-LB (socklb): "pods" translates at connect() the sockets of this node's pods
    # and of the agent's own namespace; "host" the latter only (pods go through tc);
    # "off" none (the node's own sockets then cannot reach a ClusterIP).
    socket_lb: str = "host"
    state_dir: str = DEFAULT_STATE_DIR  # where socket-LB mounts cgroup2 if none is visible
    # XDP on the uplinks (xdp.XdpMode): "auto" natively on physical NICs whose driver
    # supports it, "native"/"generic" on every uplink, "off" none (tc carries all).
    xdp: str = "auto"


# Per-interface settings for the interfaces the program is attached to, as Cilium sets
# them on its own: a translated packet may carry a node address as its source (source
# NAT of external traffic, a reply reverse-translated to a NodePort) or a Service
# address from a pod interface, which the kernel would otherwise drop as a martian or
# fail reverse-path filtering. On a bridged node (flannel's cni0) such a packet enters
# the IP stack on the bridge, not on the veth it was translated on: the bridge gets
# the same settings (without them, NodePort replies under source NAT were all lost).
SOURCE_CHECK_SYSCTLS = (("accept_local", "1"), ("rp_filter", "0"))


def relax_source_checks(ifname: str) -> None:
    for key, value in SOURCE_CHECK_SYSCTLS:
        path = f"/proc/sys/net/ipv4/conf/{ifname}/{key}"
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            log.warning("cannot set %s to %s: %s", path, value, exc)


@dataclass(frozen=True)
class EarlyState:
    """The pinned maps read back before the program was loaded, and which maps (by
    kernel id) they were."""

    ids: tuple[int, ...]
    state: MapState

    def same_maps(self, maps: BpfMaps) -> bool:
        return self.ids == _map_ids(maps)


def _map_ids(maps: BpfMaps) -> tuple[int, ...]:
    return tuple(m.info.id for m in maps.all())


def read_early(pin_dir: str) -> EarlyState | None:
    """What the pinned maps of an earlier agent hold, read while the compiler child
    runs (at 100,000 Services both take seconds; one after the other they added up).
    The child only creates maps that are missing and reuses the others untouched, so
    what is read stays valid if the maps are still the same ones afterwards (the caller
    checks their ids; it reads again if not). None when there is nothing (whole) to
    read: a first start, or pins that do not match (the loader then reports them)."""
    if not pins_present(pin_dir):
        return None
    try:
        with BpfMaps(pin_dir) as maps:
            return EarlyState(_map_ids(maps), read_state(maps))
    except (DataplaneError, OSError) as exc:
        log.debug("pinned maps not read ahead of the program load: %s", exc)
        return None


class BpfDataplane:
    name = "bpf"
    applies_in_parts = True  # the writer writes what it is given
    # SCTP: a port rewrite needs the CRC32c over the whole packet recomputed
    protocols = frozenset({Protocol.TCP, Protocol.UDP})

    def __init__(self, config: BpfConfig) -> None:
        from ebpflb.dataplane.bpf.attach import TcAttacher
        from ebpflb.dataplane.bpf.isolated import start_isolated
        from ebpflb.dataplane.bpf.loader import require_bpf_privileges

        require_bpf_privileges()  # before the pin dir is made: it would be the caller's
        ensure_pin_dir(config.pin_dir)
        migrate_legacy_pins(config.pin_dir)  # what the old pins hold, before they go
        migrate_conntrack(config.pin_dir)
        remove_legacy_pins(config.pin_dir)
        services, backends, conntrack = resolve_sizes(
            config.pin_dir,
            max_services=config.max_services,
            max_backends=config.max_backends,
            max_conntrack=config.max_conntrack,
        )
        self.config = config = replace(
            config, max_services=services, max_backends=backends, max_conntrack=conntrack
        )
        loading = start_isolated(
            pin_dir=config.pin_dir,
            max_services=services,
            max_backends=backends,
            max_conntrack=conntrack,
        )
        try:
            early = read_early(config.pin_dir)  # while the child compiles
            self.program = loading.wait()
        except BaseException:
            loading.kill()
            raise
        try:
            self.maps = BpfMaps(config.pin_dir)
            check_geometry(
                self.maps, max_services=services, max_backends=backends, max_conntrack=conntrack
            )
            self.writer = MapWriter(
                self.maps,
                max_services=services,
                max_backends=backends,
                maglev_size=config.maglev_table_size,
                adopted=early.state if early is not None and early.same_maps(self.maps) else None,
            )
            self._set_algorithm(config.maglev_table_size)
            self.attacher = TcAttacher(self.program.fd, egress_fd=self.program.egress_fd)
            self.host_backends = HostBackends(self.maps.config, self.attacher.local_addresses)
            self.socket_lb = self._socket_lb()
            self.pod_netns = self._pod_netns()
            self.xdp = XdpUplinks(
                self.attacher.ipr,
                XdpMode(config.xdp),
                pin_dir=config.pin_dir,
                sizes=(services, backends, conntrack),
            )
        except Exception:
            self.program.close()
            raise
        self.attached: set[str] = set()
        self.relaxed_bridges: set[str] = set()
        self._warned: set[str] = set()
        adopted = len(self.writer.frontends)
        if adopted:
            log.info("adopted %d frontends from the pinned maps in %s", adopted, config.pin_dir)
        self.housekeeping()

    def current(self) -> Mapping[FrontendKey, FrontendState]:
        return MappingProxyType(self.writer.frontends)

    def telemetry(self) -> Telemetry:
        """Counters and map fill, read from the maps now (for a scrape)."""
        return read_telemetry(self.maps, known=written_counts(self.writer))

    def _socket_lb(self) -> SocketLb | None:
        """Socket-LB when the machine allows it; without it, only the node's own
        sockets go untranslated, so the data path runs on (and says so). Off by
        configuration: an earlier agent's pinned links are removed."""
        if self.config.socket_lb == "off":
            remove_links(self.config.pin_dir)
            return None
        try:
            return SocketLb(
                self.maps.config,
                self.program.sock_fds,
                state_dir=self.config.state_dir,
                pin_dir=self.config.pin_dir,
            )
        except (DataplaneError, OSError) as exc:
            log.warning(
                "socket-LB is off (%s): sockets of this node's own namespace "
                "reach Service addresses untranslated",
                exc,
            )
            return None

    def _pod_netns(self) -> PodNamespaces | None:
        """The pod namespaces socket-LB serves, kept by housekeeping with --socket-lb
        pods; otherwise an earlier agent's set is emptied (tc serves the pods)."""
        pods = PodNamespaces(self.attacher.ipr, self.config.pin_dir)
        if self.socket_lb is not None and self.config.socket_lb == "pods":
            return pods
        pods.write({})
        pods.close()
        return None

    def reload(self) -> None:
        self.writer.reload()
        self._set_algorithm(self.config.maglev_table_size)

    def _set_algorithm(self, maglev_size: int) -> None:
        """Record the backend choice in the config map; when it differs from what the
        entries were written with, the next sync writes every frontend again (its flag
        and Maglev table). Until then the kernel falls back to a random choice
        wherever a table is missing or of another size, never to a wrong one."""
        key = ctypes.c_uint32(abi.Config.MAGLEV_SIZE)
        held = self.maps.config.lookup(key, ctypes.c_uint32)
        if held is not None and held.value == maglev_size:
            return
        if self.writer.frontends:
            log.info(
                "backend choice changed to %s: every frontend is written again",
                f"Maglev ({maglev_size} slots)" if maglev_size else "random",
            )
            self.writer.forget()
        self.maps.config.update(key, ctypes.c_uint32(maglev_size))

    def apply(self, plan: Plan) -> None:
        try:
            self.writer.apply(plan)
            self.host_backends.applied(plan)
        except CapacityError:
            raise  # refused before anything was written: nothing to re-read
        except Exception:
            self.writer.reload()  # the maps are the truth; the next sync diffs against them
            raise

    def _wanted(self, veths: set[str], uplinks: set[str]) -> set[str]:
        if self.config.interfaces:
            present = set(self.attacher.links())
            for name in self.config.interfaces:
                if name not in present and name not in self._warned:
                    log.warning("interface %s not found; will attach when it appears", name)
                    self._warned.add(name)
            return {n for n in self.config.interfaces if n in present}
        return veths | uplinks

    def housekeeping(self) -> None:
        """Attach to interfaces that appeared since the last call; decide whether the
        egress hook has work (see hostbackends)."""
        self.host_backends.housekeeping(self.writer.frontends)
        links = self.attacher.scan()
        veths, uplinks = set(links.veths), set(links.uplinks)
        wanted = self._wanted(veths, uplinks)
        self.attached &= wanted
        for ifname in sorted(wanted - self.attached):
            try:
                self.attacher.attach(ifname, egress=ifname in veths - uplinks)
            except DataplaneError as exc:
                log.warning("%s", exc)
                continue
            log.info("attached %s to %s", self.program.name, ifname)
            relax_source_checks(ifname)
            self.attached.add(ifname)
        self._relax_bridges({links.bridge_of[v] for v in self.attached if v in links.bridge_of})
        # (a pod's bridge too: a generic redirect to it is a transmit the bridge forwards)
        pod_devices = (self.attached & (veths - uplinks)) | self.relaxed_bridges
        self.xdp.refresh(wanted=wanted, uplinks=uplinks, veths=pod_devices)
        if self.pod_netns is not None:
            try:
                self.pod_netns.refresh(self.attached & (veths - uplinks))
            except OSError as exc:  # a namespace read failed: the next round retries
                log.warning("socket-LB: cannot read the pod namespaces: %s", exc)

    def _relax_bridges(self, bridges: set[str]) -> None:
        """Source checks relaxed on the bridges whose veths the program is on (again
        for a bridge that went away and came back, as a CNI may recreate it)."""
        self.relaxed_bridges &= bridges
        for bridge in sorted(bridges - self.relaxed_bridges):
            relax_source_checks(bridge)
            self.relaxed_bridges.add(bridge)
            log.info(
                "pods are bridged on %s: accept_local=1 and rp_filter=0 set on it, as on the veths",
                bridge,
            )

    def close(self, *, cleanup: bool = False) -> None:
        if self.pod_netns is not None:
            if cleanup:
                self.pod_netns.write({})
            self.pod_netns.close()
        if self.socket_lb is not None:
            self.socket_lb.close()  # its links stay pinned and serving: see socklb
        self.xdp.close(cleanup=cleanup)
        if cleanup:
            remove_links(self.config.pin_dir)
            for ifname in self.attacher.attached():
                self.attacher.detach(ifname)
            self.maps.close()
            remove_pins(self.config.pin_dir, abi.ALL_MAPS + abi.LEGACY_MAPS)
            log.info("detached and removed the pins under %s", self.config.pin_dir)
        else:
            self.maps.close()
        self.attacher.close()
        self.program.close()
