"""The userspace data path: a Python proxy (an epoll event loop; os.splice for bulk
TCP) listening on the Service frontends, made local addresses of a dummy device owned
by ebpflb (NodePorts listen on the node's own addresses)."""
