"""Fixtures: a started API server stand-in with a kubeconfig pointing at it, and a
factory for KubeSources with fast backoff that are always closed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpflb.lab.apiserver import ApiServerStandIn
from ebpflb.sources.kube import Backoff, KubeSource

NODE_NAME = "node-a"
FAST = Backoff(base=0.02, cap=0.2)


@pytest.fixture
def apiserver() -> Iterator[ApiServerStandIn]:
    server = ApiServerStandIn().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kubeconfig(apiserver: ApiServerStandIn, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def make_source(
    kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., KubeSource]]:
    caplog.set_level(logging.INFO, logger="ebpflb.sources.kube")
    made: list[KubeSource] = []

    def make(**kwargs: Any) -> KubeSource:
        options: dict[str, Any] = {
            "kubeconfig": str(kubeconfig),
            "node_name": NODE_NAME,
            "backoff": FAST,
            "page_size": 3,
            "list_read_timeout": 5.0,
            "connect_timeout": 1.0,
        }
        options.update(kwargs)
        source = KubeSource(**options)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()
