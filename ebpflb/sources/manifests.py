"""The manifest source: a directory of YAML/JSON files holding Services,
EndpointSlices, Pods and Nodes, so the agent runs with no cluster at all.

A Service with a selector gets the EndpointSlices derived from the Pods it matches, as
Kubernetes' EndpointSlice controller writes them (``registration``, ``pods``); one
without keeps its hand-written slices.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file directly in the directory is read
(not recursively; hidden entries skipped silently, subdirectories, symlink loops and
dangling symlinks skipped with one warning each), in name order; a file may hold several YAML
documents and ``List`` objects (``kind: List`` or ``ServiceList`` etc., as ``kubectl get
-o yaml`` and the API write them). Other kinds are ignored.

Change detection is polling, not inotify: a file's signature is (mtime_ns, size,
inode), and ``poll()`` says whether any signature changed since the last ``load()``.
A file is only re-parsed when its signature changed. When a file does not parse, its
error is reported (in every ``Snapshot`` until it is fixed; the consumer logs it once,
so the source does not) and its *previous* content is kept, so a half-written file
never deletes Services. Likewise an edit that makes a Service, EndpointSlice or Pod invalid
(``clusterIP: 10.96.0.1O``) keeps the version served before it, with one error naming
the object and the field, as the API server would have refused it (``lastgood``). Writers
should still replace files atomically (write elsewhere, then rename): a truncated
file that happens to parse cannot be told from an intentional edit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ebpflb.errors import SourceError
from ebpflb.model import ServiceRef
from ebpflb.sources.base import Changes, FileError, Snapshot
from ebpflb.sources.lastgood import LastGood
from ebpflb.sources.pods import POD
from ebpflb.sources.registration import Registrar
from ebpflb.sources.tracker import ENDPOINT_SLICE, NODE, SERVICE, ChangeTracker, Key, object_key

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
KINDS = (SERVICE, ENDPOINT_SLICE, NODE, POD)

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Obj = dict[str, Any]
_Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclass(frozen=True)
class _File:
    signature: _Signature
    objects: tuple[Obj, ...]  # the last content that parsed
    errors: tuple[FileError, ...]  # why the current content did not (fully) parse


class ManifestSource:
    """Reads a manifest directory; ``poll()`` is cheap (one stat per file), ``load()``
    re-parses only the files that changed."""

    kind = "manifests"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        node_name: str | None = None,
        last_good_store: str | None = None,
    ):
        self.directory = Path(directory)
        self.node_name = node_name  # kept for the agent; files are not filtered by node
        self.changed = threading.Event()  # never set: the directory is polled
        self._files: dict[Path, _File] = {}
        self._loaded: dict[Path, _Signature] | None = None  # what the last load() saw
        self._tracker = ChangeTracker()
        # an invalid edit keeps the version before it, across restarts with a store
        self._last_good = LastGood(last_good_store)
        self._passed: dict[str, str] = {}  # entries not read, logged once each
        self._registrar = Registrar()  # selector Services' slices, from the Pods

    @property
    def synced(self) -> bool:
        return True  # a directory is read whole at every load()

    @property
    def stale(self) -> bool:
        return False

    @property
    def stale_since(self) -> float | None:
        return None

    def poll(self) -> bool:
        """Whether the directory changed since the last ``load()`` (True before the
        first one). Raises ``SourceError`` when the directory cannot be listed."""
        return self._signatures() != self._loaded

    def load(self) -> Snapshot:
        """Read the directory. Raises ``SourceError`` when it cannot be listed; a file
        that cannot be read is reported in the snapshot instead."""
        snap = self._refresh()
        self._tracker.take()
        return snap

    def take_changes(self) -> Changes:
        """Re-read the changed files; the Services they change."""
        snap = self._refresh()
        changes = self._tracker.take_changes()
        return Changes(
            changes.services,
            changes.nodes,
            snap.errors,
            service_objects=changes.service_objects,
            slice_objects=changes.slice_objects,
        )

    def service(self, ref: ServiceRef) -> Obj | None:
        return self._tracker.service(ref)

    def slices_of(self, ref: ServiceRef) -> Sequence[Obj]:
        return self._tracker.slices_of(ref)

    def nodes(self) -> Sequence[Obj]:
        return self._tracker.objects(NODE)

    def close(self) -> None:
        """Nothing to stop: the directory is read on the agent's own thread."""

    def _refresh(self) -> Snapshot:
        signatures = self._signatures()
        files: dict[Path, _File] = {}
        for path, signature in signatures.items():
            known = self._files.get(path)
            if known is not None and known.signature == signature:
                files[path] = known
            else:
                files[path] = self._read(path, signature, known)
        self._files = files
        self._loaded = signatures
        snap = self._snapshot()
        self._tracker.replace_all(snap.objects)
        return snap

    def watch(
        self,
        callback: Callable[[Snapshot], None],
        *,
        stop: threading.Event,
        interval: float = 0.5,
    ) -> None:
        """Call ``callback`` with a new snapshot now and after every change, until
        ``stop`` is set. A directory that cannot be read is logged and retried."""
        while not stop.is_set():
            try:
                if self.poll():
                    callback(self.load())
            except SourceError as e:
                log.error("%s", e)
            stop.wait(interval)

    def _signatures(self) -> dict[Path, _Signature]:
        found: dict[Path, _Signature] = {}
        passed: dict[str, str] = {}  # entry -> why it is not read
        try:
            entries = list(os.scandir(self.directory))
        except OSError as e:
            raise SourceError(f"cannot read manifest directory {self.directory}: {e}") from e
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    passed[entry.path] = (
                        "a subdirectory: only the files directly in the manifest directory are read"
                    )
                    continue
                if not entry.name.endswith(SUFFIXES):
                    continue
                if not entry.is_file():
                    passed[entry.path] = (
                        f"a dangling symlink to {os.readlink(entry.path)}"
                        if entry.is_symlink() and not os.path.exists(entry.path)
                        else "not a regular file"
                    )
                    continue
                st = entry.stat()
            except OSError as e:
                if e.errno == errno.ELOOP:
                    passed[entry.path] = "a symlink loop (too many levels of symbolic links)"
                elif e.errno != errno.ENOENT:  # ENOENT: removed while listing
                    passed[entry.path] = f"cannot stat it: {e.strerror}"
                continue
            found[Path(entry.path)] = (st.st_mtime_ns, st.st_size, st.st_ino)
        self._note_passed(passed)
        return dict(sorted(found.items()))

    def _note_passed(self, passed: dict[str, str]) -> None:
        """One log line for each directory entry not read, when it first appears (the
        directory is polled every half second)."""
        for path, why in sorted(passed.items()):
            if self._passed.get(path) != why:
                log.warning("manifest directory: skipping %s: %s", path, why)
        self._passed = passed

    def _read(self, path: Path, signature: _Signature, known: _File | None) -> _File:
        try:
            text = path.read_text(encoding="utf-8")
            documents = _parse(path, text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            error = FileError(path, f"cannot parse: {_parse_error(e)}; previous content kept")
            previous = known.objects if known is not None else ()
            return _File(signature, previous, (error,))
        objects: list[Obj] = []
        errors: list[FileError] = []
        for index, doc in enumerate(documents):
            for obj in _expand(doc):
                problem = _check(obj)
                if problem:
                    errors.append(FileError(path, f"document {index + 1}: {problem}; ignored"))
                elif obj["kind"] in KINDS:
                    objects.append(obj)
        return _File(signature, tuple(objects), tuple(errors))

    def _snapshot(self) -> Snapshot:
        by_kind: dict[str, list[Obj]] = {kind: [] for kind in KINDS}
        errors: list[FileError] = []
        owners: dict[Key, Path] = {}
        for path, file in self._files.items():
            errors.extend(file.errors)
            for obj in file.objects:
                key = object_key(obj)
                owner = owners.get(key)
                if owner is not None:
                    errors.append(
                        FileError(path, f"{_describe(key)} is also in {owner.name}; ignored")
                    )
                    continue
                owners[key] = path
                served, why = self._last_good.choose(key, obj)
                if why is not None:
                    errors.append(FileError(path, f"{_describe(key)}: {why}"))
                by_kind[key[0]].append(served)
        self._last_good.forget_except(owners)
        slices = self._registrar.slices(
            by_kind[SERVICE], by_kind[ENDPOINT_SLICE], by_kind[POD], by_kind[NODE]
        )
        return Snapshot(
            services=tuple(by_kind[SERVICE]),
            slices=slices,
            nodes=tuple(by_kind[NODE]),
            errors=tuple(errors),
        )


def _describe(key: Key) -> str:
    """``Service demo/web``, ``Node n1``."""
    return f"{key[0]} {key[1]}/{key[2]}" if key[1] else f"{key[0]} {key[2]}"


def _parse(path: Path, text: str) -> list[Any]:
    """The documents of one file; JSON files hold one, YAML files any number."""
    if path.suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


def _expand(doc: Any) -> Iterator[Any]:
    """A document, or the items of a list document (``List``, ``ServiceList``...),
    giving items without a kind the kind their list names."""
    kind = doc.get("kind") if isinstance(doc, Mapping) else None
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        item_kind = kind.removesuffix("List")
        for item in doc["items"]:
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"kind": item_kind, **item}
            yield item
    else:
        yield doc


def _check(obj: Any) -> str | None:
    """Why a document cannot be tracked (not an object, no kind, no name), or None.
    Everything else about it is checked by translation, which names the object."""
    if not isinstance(obj, dict):
        return f"not an object but {type(obj).__name__}"
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        return "kind is missing"
    if kind not in KINDS:
        return None
    try:
        object_key(obj)
    except ValueError as e:
        return str(e)
    return None


def _parse_error(e: BaseException) -> str:
    """`line 3, column 1: did not find expected node content (while parsing a flow
    node)`: where the parser stopped, then why, on one line."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        why = " ".join(str(e.problem or "invalid YAML").split())
        if e.context:
            why += f" ({' '.join(str(e.context).split())})"
        return f"line {mark.line + 1}, column {mark.column + 1}: {why}"
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno}, column {e.colno}: {e.msg}"
    return _one_line(e)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
