"""Where Kubernetes objects come from, and how they become the model.

``base`` says what a source gives the agent; ``translate`` turns Services and
EndpointSlices (plain dicts, as the API returns them) into a ``DesiredState``;
``tracker`` keeps kube-proxy-style {previous, current} change records and is the store
behind both sources; ``manifests`` reads a directory of YAML/JSON files, keeping the
last good version of an object an invalid edit would break (``lastgood``), and derives
the EndpointSlices of Services with a selector from the Pods in it (``registration``,
``pods``). ``kube`` (the
API client) is imported only by whoever needs it, never from here.
"""

from __future__ import annotations

from ebpflb.sources.base import Changes, FileError, Snapshot, Source
from ebpflb.sources.manifests import ManifestSource
from ebpflb.sources.tracker import ChangeTracker
from ebpflb.sources.translate import ObjectError, TranslateResult, node_addresses, translate

__all__ = [
    "ChangeTracker",
    "Changes",
    "FileError",
    "ManifestSource",
    "ObjectError",
    "Snapshot",
    "Source",
    "TranslateResult",
    "node_addresses",
    "translate",
]
