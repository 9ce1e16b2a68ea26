"""The agent: one process that keeps a node's data path equal to the Services it sees.

- ``run``: ``run_agent(config, stop)``, the one entry point (the CLI validates options
  into a ``RunConfig`` and calls it): source, data path, NodePort reservation, loop.
- ``runner``: the loop (``Agent``): when to sync, backoff, periodic repair, status.
- ``syncstep``: what one sync does: read, translate, side systems, plan, write.
- side systems, fed by every sync: ``sidetables`` (what the data path is not given),
  ``healthcheck`` (per-Service health-check listeners), ``nodeports`` and ``nodeaddrs``
  (the NodePort range and addresses), ``status`` (the status file for ``ebpflb status``),
  ``healthz``, ``metrics`` and ``opsserver`` (the proxier's health and metrics servers).

Nothing is imported here: the inspection commands read ``status`` without loading the
loop and its dependencies.
"""
