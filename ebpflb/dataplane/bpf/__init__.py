"""The kernel data path: bcc compiles and loads bpf/, pyroute2 attaches it, and the map
writer fills the pinned maps. The only package (with ebpflb.lab) that imports bcc or
pyroute2, and only inside functions that need them."""
