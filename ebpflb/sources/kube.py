"""The Kubernetes API source: list + watch of Services, EndpointSlices and this node's
Node with the official client, kept as plain dicts in the shape the manifests give.

One thread per resource runs the reflector loop kube-proxy's informers run: list in
pages (``limit``/``continue``), then watch from the list's resourceVersion with
bookmarks; a watch that ends is re-opened from the last resourceVersion seen (events
and bookmarks advance it); a 410 Gone (an ERROR event or an HTTP status) relists, and
the relist *replaces* that resource's objects, so deletions missed while away are seen.
Connection errors and 5xx answers are retried with capped exponential backoff and
jitter; meanwhile the last known objects stay in the store, so the data path keeps its
state while the API is away, and ``stale`` says so.

Odd choices, and why:

- Requests use ``_preload_content=False`` and ``json.loads`` on the raw body instead of
  the client's model classes: building 30,000 ``V1Service`` objects and serialising
  them back to dicts costs seconds; the raw JSON is already the manifest shape. List
  items carry no ``kind``/``apiVersion`` on the wire, so they are added here.
- The client's own urllib3 retries are turned off (``retries=False``): this loop owns
  retrying, with jitter, and logs each attempt.
- ``close()`` shuts down the socket of every open response, so a watch blocked in a
  read returns at once; a request still waiting for its response headers is bounded by
  the read timeout, and the threads are daemons, so ``close()`` never waits longer than
  its ``timeout``.
- Services and EndpointSlices are listed with kube-proxy's label selector (no
  ``service-proxy-name``, no ``headless`` label); ``translate`` checks again.
- ``load()`` before every resource has finished its first list raises ``SourceError``:
  an empty snapshot then would mean "delete everything" to a sync, while the pinned
  maps of a restarted agent still serve traffic. ``poll()`` is False until then.
- The objects live in a ``ChangeTracker`` behind one lock: ``take_changes()`` ends the
  change period atomically, and an event that lands after it stays pending (``poll()``
  True, ``changed`` set) for the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from ebpflb.errors import SourceError
from ebpflb.gcpause import freeze_survivors, no_full_collections, paced_collections
from ebpflb.model import ServiceRef
from ebpflb.sources.base import Changes, Snapshot
from ebpflb.sources.compact import compact
from ebpflb.sources.services import SERVICE_PROXY_NAME_LABEL
from ebpflb.sources.tracker import (
    ENDPOINT_SLICE,
    NODE,
    SERVICE,
    ChangeTracker,
    object_key,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]

HEADLESS_LABEL = "service.kubernetes.io/headless"
# kube-proxy's selector for both Services and EndpointSlices.
PROXY_LABEL_SELECTOR = f"!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"
# While a list runs, the longest other threads' cyclic garbage waits for a collection
# (a list of 100,000 EndpointSlices takes ~5 s, and no young collection walks it then).
LIST_GC_INTERVAL = 10.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits
    ``min(cap, base * 2**n)`` scaled by a random factor in [0.5, 1)."""

    base: float = 0.2  # seconds
    cap: float = 30.0  # seconds

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt, 32)) * (0.5 + rand() / 2)


@dataclass(frozen=True)
class _Resource:
    kind: str
    api_version: str
    plural: str  # for log lines
    list_call: Callable[..., Any]  # the client's list method (all namespaces)
    label_selector: str | None = None
    field_selector: str | None = None


class _Gone(Exception):
    """The resourceVersion (or continue token) is too old: relist."""


class _WatchError(Exception):
    """The watch stream carried an ERROR event other than 410, or garbage."""


class _StreamBroken(Exception):
    """An open watch stream broke (connection dropped mid-stream): re-watch after a
    short backoff, without calling the source stale unless reconnecting fails."""


class _Store:
    """The objects and their changes (a ``ChangeTracker``) behind one lock, and the
    event that wakes the agent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.tracker = ChangeTracker()

    def upsert(self, kind: str, obj: Obj) -> None:
        with self.lock:
            self.tracker.upsert(obj, kind=kind)
            self._wake()

    def delete(self, kind: str, obj: Obj) -> None:
        _, namespace, name = object_key(obj, kind=kind)
        with self.lock:
            self.tracker.delete(kind, namespace, name)
            self._wake()

    def replace(self, kind: str, objects: list[Obj]) -> None:
        """A relist: ``objects`` become the whole set of this kind."""
        with self.lock:
            self.tracker.replace_all(objects, kinds=(kind,))
            self._wake()

    def pending(self) -> bool:
        """Whether a real change is pending; clears ``changed`` when none is (changes
        that cancelled out woke the agent for nothing)."""
        with self.lock:
            pending = self.tracker.pending()
            if not pending:
                self.changed.clear()
            return pending

    def snapshot(self) -> Snapshot:
        """Everything, ending the change period."""
        with self.lock:
            services, slices = self.tracker.take()
            nodes = self.tracker.objects(NODE)
            self.changed.clear()
        return Snapshot(services=services, slices=slices, nodes=nodes)

    def take_changes(self) -> Changes:
        with self.lock:
            self.changed.clear()
            return self.tracker.take_changes()

    def _wake(self) -> None:
        self.changed.set()  # O(1) per event; pending() tells a real change from none


class KubeSource:
    """Follows the API server; ``start()`` it, then use it as the agent's ``Source``."""

    kind = "kubernetes"

    def __init__(
        self,
        *,
        kubeconfig: str | None,
        node_name: str | None,
        in_cluster: bool = False,
        context: str | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        connect_timeout: float = 10.0,
        list_read_timeout: float = 60.0,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
        api_client: Any = None,
    ) -> None:
        """``api_client`` (a ``kubernetes.client.ApiClient``) replaces the kubeconfig /
        in-cluster configuration; otherwise ``in_cluster`` uses the pod's service account
        and ``kubeconfig`` (None: the client's default, ``~/.kube/config``) a file.
        Raises ``SourceError`` when the configuration cannot be loaded."""
        self.node_name = node_name
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.list_read_timeout = list_read_timeout
        self.backoff = backoff
        self.clock = clock
        self.api_client = (
            api_client
            if api_client is not None
            else _api_client(kubeconfig, context=context, in_cluster=in_cluster)
        )
        self._resources = _resources(self.api_client, node_name)
        self._store = _Store()
        self.changed: threading.Event = self._store.changed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._state_lock = threading.Lock()
        self._synced: set[str] = set()
        self._failing: dict[str, float] = {}  # kind -> when it started failing
        self._responses: dict[str, Any] = {}  # kind -> the open urllib3 response
        self._resource_versions: dict[str, str] = {}

    # --- the Source protocol and its extras -------------------------------------------

    def start(self) -> None:
        """Start one list+watch thread per resource; returns at once."""
        if self._threads:
            return
        for resource in self._resources:
            thread = threading.Thread(
                target=self._run,
                args=(resource,),
                daemon=True,
                name=f"ebpflb-kube-{resource.plural}",
            )
            self._threads.append(thread)
            thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads (interrupting open watches) and wait up to ``timeout``."""
        self._stop.set()
        with self._state_lock:
            responses = list(self._responses.values())
        for response in responses:
            _shutdown(response)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "kube: %s still in a request after close(); left to finish", ", ".join(alive)
            )
        self.changed.set()  # wake a waiter so it sees the source closed

    def poll(self) -> bool:
        """Whether the store changed since the last ``load()``; False until ``synced``."""
        return self.synced and self._store.pending()

    def load(self) -> Snapshot:
        """The current objects (``errors`` is always empty). Raises ``SourceError``
        before every resource has been listed once."""
        if not self.synced:
            raise SourceError("the Kubernetes API source has not listed every resource yet")
        return self._store.snapshot()

    def take_changes(self) -> Changes:
        """The Services whose object or EndpointSlices changed since the last ``load()``
        or ``take_changes()`` (a slice counts for the Service its label names, before and
        after the change), and whether this node's Node changed."""
        return self._store.take_changes()

    def service(self, ref: ServiceRef) -> Obj | None:
        with self._store.lock:
            return self._store.tracker.service(ref)

    def slices_of(self, ref: ServiceRef) -> Sequence[Obj]:
        with self._store.lock:
            return self._store.tracker.slices_of(ref)

    def nodes(self) -> Sequence[Obj]:
        with self._store.lock:
            return self._store.tracker.objects(NODE)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until ``synced`` (or ``close()``); returns ``synced``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.synced and not self._stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.changed.wait(0.05 if left is None else min(0.05, left))
        return self.synced

    @property
    def synced(self) -> bool:
        """Every resource has completed its first list."""
        with self._state_lock:
            return len(self._synced) == len(self._resources)

    @property
    def stale(self) -> bool:
        """Some resource's connection to the API server is currently failing."""
        with self._state_lock:
            return bool(self._failing)

    @property
    def stale_since(self) -> float | None:
        """When (``clock()``) the oldest current failure began; None when not stale."""
        with self._state_lock:
            return min(self._failing.values(), default=None)

    def resource_version(self, kind: str) -> str | None:
        """The last resourceVersion seen for ``kind`` (for inspection and tests)."""
        with self._state_lock:
            return self._resource_versions.get(kind)

    # --- one resource: list, watch, recover -------------------------------------------

    def _run(self, res: _Resource) -> None:
        relist = True
        attempt = 0
        while not self._stop.is_set():
            rv = None if relist else self.resource_version(res.kind)
            try:
                if rv is None:
                    rv = self._list(res)
                    relist, attempt = False, 0
                self._watch(res, rv)
                attempt = 0
            except _Gone as e:
                log.info("kube: %s: %s; relisting", res.plural, e)
                relist = True
            except _StreamBroken as e:
                if self._stop.is_set():
                    break
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "kube: %s: watch stream broke (%s); re-watching from %s in %.2fs",
                    res.plural,
                    _describe(e.__cause__ or e),
                    rv,
                    delay,
                )
                self._stop.wait(delay)
            except (ApiException, Urllib3Error, OSError, ValueError, _WatchError) as e:
                if self._stop.is_set():
                    break
                if isinstance(e, ApiException) and e.status == 410:
                    log.info("kube: %s: 410 Gone; relisting", res.plural)
                    relist = True
                    continue
                delay = self.backoff.delay(attempt)
                attempt += 1
                self._set_failing(res, True)
                log.warning(
                    "kube: %s: %s; retrying in %.2fs (attempt %d)",
                    res.plural,
                    _describe(e),
                    delay,
                    attempt,
                )
                self._stop.wait(delay)
            except Exception:  # a bug must not silently kill the thread
                log.exception("kube: %s: unexpected error; retrying", res.plural)
                self._stop.wait(self.backoff.cap)
            finally:
                with self._state_lock:
                    self._responses.pop(res.kind, None)

    def _list(self, res: _Resource) -> str:
        """List every page; replace the store's objects of this kind; return the list's
        resourceVersion. Every object parsed survives into the store, so a collection
        meanwhile would only walk the growing heap to promote them (at 100,000
        EndpointSlices that was most of the list's time: json.loads alone 4.6 s with
        collections, 0.55 s without; see gcpause): no collection runs during the list,
        but a young one between pages every LIST_GC_INTERVAL seconds, as a slow API
        server can make a list long. What the list built is then the store, long-lived
        as what a sync builds: it is frozen out of the collector's sight before
        collections resume (the first young and middle collections after a list of
        100,000 EndpointSlices walked it all only to promote it: ~0.5 s, in-process)."""
        with no_full_collections(), paced_collections(LIST_GC_INTERVAL) as between_pages:
            rv = self._list_pages(res, between_pages)
            freeze_survivors()
            return rv

    def _list_pages(self, res: _Resource, between_pages: Callable[[], None]) -> str:
        start = time.monotonic()
        objects: list[Obj] = []  # keyed once, by the store (a later copy wins there)
        token: str | None = None
        rv = ""
        while True:
            between_pages()
            kwargs: dict[str, Any] = {"limit": self.page_size}
            if token:
                kwargs["_continue"] = token
            try:
                body = self._request(res, kwargs, (self.connect_timeout, self.list_read_timeout))
            except ApiException as e:
                if e.status == 410 and token:
                    raise _Gone("continue token expired") from e
                raise
            page = json.loads(body)
            for item in page.get("items") or ():
                item.setdefault("kind", res.kind)
                item.setdefault("apiVersion", res.api_version)
                objects.append(compact(res.kind, item))
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        if self._stop.is_set():
            return rv
        self._store.replace(res.kind, objects)
        self._set_resource_version(res, rv)
        self._set_failing(res, False)
        with self._state_lock:
            first = res.kind not in self._synced
            completes = first and len(self._synced) + 1 == len(self._resources)
            if completes:
                self.changed.set()  # wake the agent: it may sync now (even with no objects)
            self._synced.add(res.kind)
        log.info(
            "kube: %s %s: %d objects at resourceVersion %s in %.0f ms",
            res.plural,
            "synced" if first else "relisted",
            len(objects),
            rv,
            (time.monotonic() - start) * 1e3,
        )
        if completes:
            log.info("kube: every resource synced")
        return rv

    def _watch(self, res: _Resource, rv: str) -> None:
        """Watch from ``rv`` until the server ends the stream; every event and bookmark
        advances ``resource_version()``. Raises ``_Gone`` on 410."""
        kwargs = {
            "watch": True,
            "resource_version": rv,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout,
        }
        response = self._open(res, kwargs, (self.connect_timeout, self.watch_timeout + 30))
        try:
            self._set_failing(res, False)
            try:
                for line in _lines(response):
                    if self._stop.is_set():
                        break
                    rv = self._apply(res, json.loads(line), rv)
            except (Urllib3Error, OSError) as e:
                raise _StreamBroken(str(e)) from e
        finally:
            response.release_conn()

    def _apply(self, res: _Resource, event: Any, rv: str) -> str:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise _WatchError(f"malformed watch event: {str(event)[:200]}")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code, reason = obj.get("code"), obj.get("reason")
            if code == 410 or reason in ("Expired", "Gone"):
                raise _Gone(f"resourceVersion {rv} is too old ({obj.get('message', '')})")
            raise _WatchError(f"watch error {code} {reason}: {obj.get('message', '')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if kind in ("ADDED", "MODIFIED"):
            obj.setdefault("kind", res.kind)
            obj.setdefault("apiVersion", res.api_version)
            self._store.upsert(res.kind, compact(res.kind, obj))
        elif kind == "DELETED":
            self._store.delete(res.kind, obj)
        elif kind != "BOOKMARK":
            raise _WatchError(f"unknown watch event type {kind!r}")
        self._set_resource_version(res, new_rv)
        return new_rv

    def _request(
        self, res: _Resource, kwargs: dict[str, Any], timeout: tuple[float, float]
    ) -> bytes:
        response = self._open(res, kwargs, timeout)
        try:
            return b"".join(response.stream(1 << 16))
        finally:
            response.release_conn()

    def _open(self, res: _Resource, kwargs: dict[str, Any], timeout: tuple[float, float]) -> Any:
        """Send a list/watch request; the open urllib3 response (2xx only, else
        ``ApiException``), registered so that ``close()`` can shut it down."""
        if res.label_selector:
            kwargs["label_selector"] = res.label_selector
        if res.field_selector:
            kwargs["field_selector"] = res.field_selector
        response = res.list_call(_preload_content=False, _request_timeout=timeout, **kwargs)
        with self._state_lock:
            self._responses[res.kind] = response
        if self._stop.is_set():
            _shutdown(response)
        return response

    def _set_resource_version(self, res: _Resource, rv: str) -> None:
        with self._state_lock:
            self._resource_versions[res.kind] = rv

    def _set_failing(self, res: _Resource, failing: bool) -> None:
        # The change is logged under the lock: whoever sees ``stale`` flip (a status
        # page, a test) finds its log line already written.
        with self._state_lock:
            was_stale = bool(self._failing)
            since = min(self._failing.values(), default=None)
            if failing:
                self._failing.setdefault(res.kind, self.clock())
            else:
                self._failing.pop(res.kind, None)
            now_stale = bool(self._failing)
            if now_stale and not was_stale:
                log.warning(
                    "kube: the API server is unreachable; keeping the last known objects (stale)"
                )
            elif was_stale and not now_stale and since is not None:
                log.info(
                    "kube: the API server is back after %.1fs; no longer stale",
                    self.clock() - since,
                )


# --- helpers ------------------------------------------------------------------------


def default_node_name(node_name: str | None) -> str:
    """As kube-proxy: the given name, else $NODE_NAME (the downward API in a DaemonSet),
    else the host name."""
    return node_name or os.environ.get("NODE_NAME") or socket.gethostname()


def _api_client(kubeconfig: str | None, *, context: str | None, in_cluster: bool) -> Any:
    configuration = k8s_client.Configuration()
    try:
        if in_cluster:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (k8s_config.ConfigException, OSError, ValueError) as e:
        where = "in-cluster configuration" if in_cluster else f"kubeconfig {kubeconfig or '~'}"
        raise SourceError(f"cannot load {where}: {e}") from e
    configuration.retries = False  # this module retries, with backoff and jitter
    return k8s_client.ApiClient(configuration)


def _resources(api_client: Any, node_name: str | None) -> tuple[_Resource, ...]:
    core = k8s_client.CoreV1Api(api_client)
    discovery = k8s_client.DiscoveryV1Api(api_client)
    found = [
        _Resource(
            SERVICE,
            "v1",
            "services",
            core.list_service_for_all_namespaces,
            label_selector=PROXY_LABEL_SELECTOR,
        ),
        _Resource(
            ENDPOINT_SLICE,
            "discovery.k8s.io/v1",
            "endpointslices",
            discovery.list_endpoint_slice_for_all_namespaces,
            label_selector=PROXY_LABEL_SELECTOR,
        ),
    ]
    if node_name:
        found.append(
            _Resource(
                NODE, "v1", "nodes", core.list_node, field_selector=f"metadata.name={node_name}"
            )
        )
    return tuple(found)


def _lines(response: Any) -> Iterator[bytes]:
    """The non-empty lines of a streaming body, as chunks arrive."""
    buffer = b""
    for chunk in response.stream(1 << 16):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _shutdown(response: Any) -> None:
    """Make a blocked read of ``response`` return (urllib3 >= 2.3), then close it."""
    with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
        response.shutdown()  # RuntimeError: already back in the pool, nothing to wake
    with contextlib.suppress(Exception):  # closing may race with the reading thread
        response.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {e.reason}" if e.status else f"{e.reason}".strip()
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
