"""A stand-in for the Kubernetes API server: enough of its list/watch protocol for
Services, EndpointSlices and Nodes to drive the real ``kubernetes`` client, plus the
faults a real one shows (compacted history, dropped connections, slowness, 503s, being
down) under the test's control.

Protocol, as the real API server speaks it:

- ``GET /api/v1/services``, ``/apis/discovery.k8s.io/v1/endpointslices``,
  ``/api/v1/nodes``: a ``<Kind>List`` whose items carry no kind/apiVersion, with
  ``metadata.resourceVersion``; ``limit`` gives pages and a ``continue`` token that
  lists the rest of the *same* snapshot; an unknown or expired token is a 410.
- ``?watch=true&resourceVersion=R``: a chunked stream of JSON lines
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`` with every change
  after R, then live changes, until ``timeoutSeconds``. A watch from a version older
  than the compacted history gets one ERROR event with a 410 Status and ends.
  ``labelSelector`` (``k``, ``!k``, ``k=v``, ``k!=v``) and ``fieldSelector``
  (``metadata.name=``, ``metadata.namespace=``) filter, and an object that stops (or
  starts) matching is sent as DELETED (or ADDED), as the real watch cache does.

One global resourceVersion counts every change, as etcd's revision does.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import queue
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebpflb.lab import netns

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class _Kind:
    kind: str
    api_version: str
    namespaced: bool


RESOURCES: dict[str, _Kind] = {
    "/api/v1/services": _Kind("Service", "v1", True),
    "/apis/discovery.k8s.io/v1/endpointslices": _Kind("EndpointSlice", "discovery.k8s.io/v1", True),
    "/api/v1/nodes": _Kind("Node", "v1", False),
}
KINDS = {r.kind: r for r in RESOURCES.values()}


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    path: str
    params: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str | None:
        resource = RESOURCES.get(self.path)
        return resource.kind if resource else None

    @property
    def watch(self) -> bool:
        return self.params.get("watch") in ("true", "1")


@dataclass(frozen=True)
class _Event:
    rv: int
    kind: str
    old: Obj | None
    new: Obj | None


_END = object()  # queue sentinel: end this watch now (connection dropped)


class _Watch:
    def __init__(self, kind: str, params: dict[str, str]) -> None:
        self.kind = kind
        self.labels = params.get("labelSelector", "")
        self.fields = params.get("fieldSelector", "")
        self.bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        self.events: queue.Queue[object] = queue.Queue()

    def matches(self, obj: Obj | None) -> bool:
        return (
            obj is not None and _labels_match(obj, self.labels) and _fields_match(obj, self.fields)
        )

    def translate(self, event: _Event) -> Obj | None:
        """The watch event this client sees for a change, or None."""
        if event.kind != self.kind:
            return None
        was, now = self.matches(event.old), self.matches(event.new)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": event.new}
        if was:
            gone = copy.deepcopy(event.new or event.old)
            assert gone is not None
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return {"type": "DELETED", "object": gone}
        return None


class ApiServerStandIn:
    """The stand-in; ``start()`` it, point a kubeconfig at ``url``, drive it."""

    def __init__(self, *, token: str | None = "test-token", netns: str | None = None) -> None:
        self.token = token
        self.netns = netns
        self.requests: list[Request] = []
        self.delay = 0.0  # seconds before every response (a slow server)
        self.fail_status: int | None = None  # answer every request with this status
        self._lock = threading.RLock()
        self._objects: dict[Key, Obj] = {}
        # Each object as a list item (JSON, without kind/apiVersion), made when it is
        # written: a list joins these instead of encoding every object per request.
        # Python's json.dumps costs ~10 us per EndpointSlice (Go's encoder a few): at
        # 100,000 objects the stand-in, not the agent, was what a list waited for.
        self._wire: dict[Key, bytes] = {}
        self._rv = 1
        self._compacted = 1  # a watch from a resourceVersion below this is 410 Gone
        self._history: list[_Event] = []
        self._watches: set[_Watch] = set()
        self._continues: dict[str, tuple[int, list[bytes], int]] = {}  # rv, snapshot, offset
        self._tokens = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.closed = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServerStandIn:
        """Listen on 127.0.0.1 (of network namespace ``netns`` when set, so that an agent
        inside a lab reaches it; the socket stays there, whichever thread serves it)."""
        handler = type("Handler", (_Handler,), {"standin": self})
        with netns.enter(self.netns) if self.netns else nullcontext():
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (the server is down)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.drop_connections()

    def close(self) -> None:
        self.closed.set()
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        user: Obj = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": user}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }
        path.write_text(json.dumps(config))
        return path

    # --- objects -----------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def apply(self, obj: Obj) -> int:
        """Create or replace an object (ADDED or MODIFIED); returns its resourceVersion."""
        obj = copy.deepcopy(obj)
        resource = KINDS[obj["kind"]]
        obj.setdefault("apiVersion", resource.api_version)
        meta = obj.setdefault("metadata", {})
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        with self._lock:
            key = _key(obj)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            old = self._objects.get(key)
            self._objects[key] = obj
            self._wire[key] = _list_item(obj)
            self._publish(_Event(self._rv, key[0], old, obj))
            return self._rv

    def delete(self, kind: str, namespace: str, name: str) -> int:
        with self._lock:
            key = (kind, namespace if KINDS[kind].namespaced else "", name)
            old = self._objects.pop(key)
            del self._wire[key]
            self._rv += 1
            self._publish(_Event(self._rv, kind, old, None))
            return self._rv

    def objects(self, kind: str) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for k, o in sorted(self._objects.items()) if k[0] == kind]

    # --- faults and controls -----------------------------------------------------------

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to every watch that asked."""
        with self._lock:
            for watch in self._watches:
                if watch.bookmarks:
                    resource = KINDS[watch.kind]
                    watch.events.put(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": resource.kind,
                                "apiVersion": resource.api_version,
                                "metadata": {"resourceVersion": str(self._rv)},
                            },
                        }
                    )
            return self._rv

    def expire_history(self) -> None:
        """Compact: a watch from any resourceVersion before now gets 410 Gone, and every
        continue token expires."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()
            self._continues.clear()

    def drop_connections(self) -> None:
        """Cut every open connection, watches included, mid-stream."""
        with self._lock:
            for watch in self._watches:
                watch.events.put(_END)
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @contextmanager
    def failing(self, status: int = 503) -> Iterator[None]:
        """Answer every request with ``status`` (open watches are cut) until the end."""
        self.fail_status = status
        self.drop_connections()
        try:
            yield
        finally:
            self.fail_status = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """Stop listening (connections refused) until the end, then listen again on the
        same port."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def watch_requests(self, kind: str, after: float = 0.0) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind and r.watch and r.at >= after]

    def list_requests(self, kind: str, after: float = 0.0) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind and not r.watch and r.at >= after]

    def open_watches(self, kind: str) -> int:
        with self._lock:
            return sum(1 for w in self._watches if w.kind == kind)

    # --- serving -----------------------------------------------------------------------

    def _publish(self, event: _Event) -> None:
        self._history.append(event)
        for watch in self._watches:
            sent = watch.translate(event)
            if sent is not None:
                watch.events.put(sent)

    def list_page(self, resource: _Kind, params: dict[str, str]) -> tuple[int, bytes]:
        """One page of a list: its status and JSON body."""
        with self._lock:
            token = params.get("continue")
            if token:
                if token not in self._continues:
                    status = _status(410, "Expired", "the continue token has expired")
                    return 410, json.dumps(status).encode()
                rv, listed, offset = self._continues.pop(token)
            else:
                # The snapshot holds the objects' encodings as they are now; a change
                # after it makes a new one (apply() and delete() replace, never edit).
                watch = _Watch(resource.kind, params)  # only for its filters
                rv, offset = self._rv, 0
                listed = [
                    self._wire[k]
                    for k, o in sorted(self._objects.items())
                    if k[0] == resource.kind and watch.matches(o)
                ]
            limit = int(params.get("limit") or 0)
            end = offset + limit if limit > 0 else len(listed)
            page = listed[offset:end]
            meta: Obj = {"resourceVersion": str(rv)}
            if end < len(listed):
                next_token = f"c{next(self._tokens)}"
                self._continues[next_token] = (rv, listed, end)
                meta["continue"] = next_token
        head = {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": meta,
        }
        return 200, json.dumps(head).encode()[:-1] + b', "items": [' + b", ".join(page) + b"]}"

    def open_watch(
        self, resource: _Kind, params: dict[str, str]
    ) -> tuple[_Watch | None, list[Obj]]:
        """Register a watch; returns it and its backlog (or None and one ERROR event)."""
        watch = _Watch(resource.kind, params)
        with self._lock:
            since = params.get("resourceVersion", "")
            if since in ("", "0"):
                backlog = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for k, o in sorted(self._objects.items())
                    if k[0] == resource.kind and watch.matches(o)
                ]
            elif int(since) < self._compacted:
                message = f"too old resource version: {since} ({self._compacted})"
                return None, [{"type": "ERROR", "object": _status(410, "Expired", message)}]
            else:
                backlog = [
                    sent
                    for e in self._history
                    if e.rv > int(since)
                    if (sent := watch.translate(e)) is not None
                ]
            self._watches.add(watch)
            return watch, backlog

    def close_watch(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As the real (Go) API server: without TCP_NODELAY a watch event written while the
    # previous one is unacknowledged waits for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    standin: ApiServerStandIn

    def setup(self) -> None:
        super().setup()
        self.standin.track(self.connection, True)

    def finish(self) -> None:
        self.standin.track(self.connection, False)
        with suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle(self) -> None:
        with suppress(OSError, ValueError):
            super().handle()

    def do_GET(self) -> None:
        standin = self.standin
        url = urllib.parse.urlsplit(self.path)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        with standin._lock:
            standin.requests.append(Request(url.path, params))
        if standin.delay:
            time.sleep(standin.delay)
        # The scheme is case-insensitive (RFC 7235): the client's in-cluster loader
        # sends "bearer <token>", a kubeconfig token goes as "Bearer <token>".
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if standin.token and (scheme.lower() != "bearer" or token != standin.token):
            self._json(401, _status(401, "Unauthorized", "no or wrong bearer token"))
            return
        if standin.fail_status is not None:
            self._json(
                standin.fail_status,
                _status(
                    standin.fail_status, "ServiceUnavailable", "the stand-in is failing on purpose"
                ),
            )
            return
        resource = RESOURCES.get(url.path)
        if url.path == "/version":
            self._json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin"})
        elif resource is None:
            self._json(404, _status(404, "NotFound", f"{url.path} is not served here"))
        elif params.get("watch") in ("true", "1"):
            self._watch(resource, params)
        else:
            self._send(*standin.list_page(resource, params))

    def _json(self, status: int, body: Obj) -> None:
        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, resource: _Kind, params: dict[str, str]) -> None:
        standin = self.standin
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        watch, backlog = standin.open_watch(resource, params)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in backlog:
                self._chunk(event)
            while watch is not None and not standin.closed.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = watch.events.get(timeout=min(left, 0.05))
                except queue.Empty:
                    continue
                if item is _END:
                    self.close_connection = True
                    return  # no terminating chunk: the client sees a broken stream
                assert isinstance(item, dict)
                self._chunk(item)
            self.wfile.write(b"0\r\n\r\n")
        finally:
            if watch is not None:
                standin.close_watch(watch)

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _list_item(obj: Obj) -> bytes:
    """``obj`` as an item of a list: list items carry no kind/apiVersion on the wire."""
    return json.dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}).encode()


def _key(obj: Obj) -> Key:
    resource = KINDS[obj["kind"]]
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", "") if resource.namespaced else "", meta["name"])


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _labels_match(obj: Obj, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            ok = term[1:] not in labels
        elif "!=" in term:
            k, v = term.split("!=", 1)
            ok = labels.get(k) != v
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            ok = labels.get(k) == v
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _fields_match(obj: Obj, selector: str) -> bool:
    meta = obj.get("metadata", {})
    for term in filter(None, (t.strip() for t in selector.split(","))):
        k, v = term.replace("==", "=").split("=", 1)
        if k == "metadata.name" and meta.get("name") != v:
            return False
        if k == "metadata.namespace" and meta.get("namespace") != v:
            return False
    return True
