"""ebpflb: an eBPF-accelerated Kubernetes service load balancer.

Importing this package never imports bcc, pyroute2 or the kubernetes client; those
live behind ``ebpflb.dataplane.bpf``, ``ebpflb.lab`` and ``ebpflb.sources.kube``.
"""

__version__ = "0.1.0"
