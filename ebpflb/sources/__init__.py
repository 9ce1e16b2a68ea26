"""Where Kubernetes objects come from, and how they become the model.

``translate`` turns Services and EndpointSlices (plain dicts, as the API returns them)
into a ``DesiredState``; ``tracker`` keeps kube-proxy-style {previous, current}
change records; ``manifests`` reads a directory of YAML/JSON files. ``kube`` (the
API client) is imported only by whoever needs it, never from here.
"""

from __future__ import annotations

from ebpflb.sources.manifests import FileError, ManifestSource, Snapshot
from ebpflb.sources.tracker import ChangeTracker
from ebpflb.sources.translate import ObjectError, TranslateResult, node_addresses, translate

__all__ = [
    "ChangeTracker",
    "FileError",
    "ManifestSource",
    "ObjectError",
    "Snapshot",
    "TranslateResult",
    "node_addresses",
    "translate",
]
