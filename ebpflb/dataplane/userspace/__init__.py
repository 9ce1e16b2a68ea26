"""The userspace data path: a Python proxy (asyncio, os.splice for TCP) listening on
the Service frontends, made local addresses of a dummy device owned by ebpflb."""
