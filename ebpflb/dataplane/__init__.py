"""Data paths: the bpf kernel path and the userspace fallback, behind one interface."""
