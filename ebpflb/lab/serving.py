"""What a running agent's data path serves a frontend with, read as the tests and
benches need it: the backends new flows go to, on either data path."""

from __future__ import annotations


def serving_backends(
    dataplane: str, frontend: str, *, pin_dir: str, state_dir: str
) -> set[str] | None:
    """The backend addresses new flows to `frontend` (`10.96.0.10:80/TCP`) go to; None
    while the data path has no such frontend. On the kernel path: the slots as the
    service entry counts them (a sync writes the backends' flags first and the entry
    that uses them last, so the flags alone can run ahead of the traffic)."""
    if dataplane == "bpf":
        from ebpflb.dataplane.bpf.maps import BpfMaps, read_state

        with BpfMaps(pin_dir) as maps:
            held = {str(st.frontend): st for st in read_state(maps).frontends.values()}
        st = held.get(frontend)
        return None if st is None else {str(a) for a, _ in st.slots}
    from ebpflb.dataplane.userspace.state import UserspaceInspector

    with UserspaceInspector(state_dir) as insp:
        if frontend not in {str(v.frontend) for v in insp.services()}:
            return None
        return {str(b.address) for b in insp.backends() if str(b.frontend) == frontend and b.active}
