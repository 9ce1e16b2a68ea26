"""Sync: the pure diff between what a data path holds and the desired state (plan),
the one place that applies it (syncer), and the loop that coalesces and retries
(runner)."""
