"""What the Kubernetes source keeps of each object: only the fields translation reads,
with the small values that thousands of objects repeat shared, not copied.

An API object carries much that a service proxy never reads: managedFields and
annotations (kubectl's last-applied configuration repeats the whole object), a pod
reference per endpoint, and on a Node its images, conditions and capacity. kube-proxy
drops managedFields from its informers' caches for the same reason. Keeping less also
means an update that touches only such fields compares equal to what is held, so it
costs no sync at all.

Of the annotations only the topology ones are kept (translation reads them to enable
topology-aware routing); of a Node, its labels (its zone) and addresses.

Malformed parts are kept as they are, so translation still reports them by name.
Objects are never mutated afterwards, which is what makes sharing safe.
"""

from __future__ import annotations

import sys
from typing import Any

from ebpflb.sources.topology import ANNOTATIONS

Obj = dict[str, Any]

_META = ("name", "namespace", "labels")
_ENDPOINT = ("addresses", "conditions", "nodeName", "zone", "hints")
_CONDITIONS = frozenset({"ready", "serving", "terminating"})
_conditions: dict[tuple[tuple[str, Any], ...], Obj] = {}  # shared; at most 27 shapes


def compact(kind: str, obj: Obj) -> Obj:
    """The part of ``obj`` (a Service, EndpointSlice or Node) that translation reads."""
    out: Obj = {k: obj[k] for k in ("kind", "apiVersion") if k in obj}
    if "metadata" in obj:
        out["metadata"] = _metadata(obj["metadata"])
    if kind == "Service":
        for key in ("spec", "status"):
            if key in obj:
                out[key] = obj[key] if key == "spec" else _service_status(obj[key])
    elif kind == "EndpointSlice":
        for key in ("addressType", "ports"):
            if key in obj:
                out[key] = obj[key]
        if "endpoints" in obj:
            items = obj["endpoints"]
            out["endpoints"] = [_endpoint(e) for e in items] if isinstance(items, list) else items
    elif kind == "Node" and "status" in obj:
        status = obj["status"]
        out["status"] = (
            {"addresses": status["addresses"]}
            if isinstance(status, dict) and "addresses" in status
            else status
        )
    return out


def _metadata(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {k: meta[k] for k in _META if k in meta}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        kept = {k: annotations[k] for k in ANNOTATIONS if k in annotations}
        if kept:
            out["annotations"] = kept
    if isinstance(out.get("namespace"), str):
        out["namespace"] = sys.intern(out["namespace"])
    return out


def _service_status(status: Any) -> Any:
    if isinstance(status, dict):
        return {"loadBalancer": status["loadBalancer"]} if "loadBalancer" in status else {}
    return status


def _endpoint(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    out = {k: item[k] for k in _ENDPOINT if k in item}
    for key in ("nodeName", "zone"):
        if isinstance(out.get(key), str):
            out[key] = sys.intern(out[key])
    conditions = out.get("conditions")
    if (
        isinstance(conditions, dict)
        and conditions.keys() <= _CONDITIONS
        and all(isinstance(v, bool) for v in conditions.values())
    ):
        shape = tuple(sorted(conditions.items()))
        out["conditions"] = _conditions.setdefault(shape, conditions)
    return out
