"""Objects parsed as they arrive (``ahead.ParseAhead``) translate as objects parsed by
the translation itself, errors included, and carry their parse to one translation
only: the next one parses them again and finds the same."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb.sources.ahead import ParseAhead
from ebpflb.sources.compact import compact
from ebpflb.sources.fields import Preparsed
from ebpflb.sources.translate import Translation, translate_dicts
from tests.unit.test_translate_fastpaths import _objects


def _translate(services: list[Any], slices: list[Any]) -> Translation:
    return translate_dicts(services, slices, node_name="node-a")


def _same(a: Translation, b: Translation) -> None:
    assert a.errors == b.errors
    assert a.entries == b.entries
    assert list(a.entries) == list(b.entries)
    assert a.services == b.services
    assert a.keys_of == b.keys_of


@settings(max_examples=300, deadline=None)
@given(_objects(), st.data())
def test_parsed_ahead_translates_as_parsed_in_translation(
    objects: tuple[list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject
) -> None:
    services, slices = objects
    services = [compact("Service", s) for s in services]
    slices = [compact("EndpointSlice", s) for s in slices]
    ahead = ParseAhead()
    # some objects arrived parsed (a list), some not (a watch event)
    early = [ahead("Service", s) if data.draw(st.booleans()) else s for s in services]
    early_slices = [ahead("EndpointSlice", s) if data.draw(st.booleans()) else s for s in slices]
    assert early == services and early_slices == slices  # read as the objects they carry
    reference = _translate(services, slices)
    _same(_translate(early, early_slices), reference)
    # taken: what they carried is gone, and translating them again parses again
    assert all(o.parse is None for o in [*early, *early_slices] if type(o) is Preparsed)
    _same(_translate(early, early_slices), reference)


def test_a_parse_is_taken_by_the_first_translation() -> None:
    ahead = ParseAhead()
    svc = ahead(
        "Service",
        compact(
            "Service",
            {
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
            },
        ),
    )
    assert type(svc) is Preparsed and svc.parse is not None
    first = _translate([svc], [])
    assert svc.parse is None
    assert [str(k) for k in first.entries] == [str(k) for k in _translate([svc], []).entries]
    # a Node (or anything else) is passed on as it is
    node = {"kind": "Node", "metadata": {"name": "n"}}
    assert ahead("Node", node) is node
