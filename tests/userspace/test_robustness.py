"""The userspace proxy under trouble, in a lab with the agent on `--dataplane userspace`:
a backend that refuses connections, one that resets mid-stream, a client that
half-closes, 1,000 concurrent connections. Afterwards the agent holds exactly the file
descriptors it held before and still serves.

The backends are asyncio servers of this test process, listening in the pods'
namespaces (a socket keeps the namespace it was made in)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.dataplane.bpf import abi
from ebpflb.dataplane.bpf.bpffs import remove_pins
from ebpflb.lab import build, layout, netns
from ebpflb.lab.agentproc import AgentProcess
from tests.lab.conftest import _require_root, unique_lab_name

pytestmark = pytest.mark.root

ECHO_IP = "10.96.0.30"  # pods 1 and 2 answer on 7000; pod 3 refuses
RESET_IP = "10.96.0.31"  # pod 3 resets every connection mid-stream
ECHO_PORT = 7000
RESET_PORT = 7001
CONCURRENT = 1000
# The echo backends' accept queues hold the whole burst. With a short one (asyncio's
# default, 100) a backend answers SYNs with syncookies and drops handshake ACKs while
# the queue is full; the connecting side's FIN, sent after its data, then fails the
# cookie check and the backend resets the connection (with or without the proxy).
BACKEND_BACKLOG = 4096

MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: robust}}
spec:
  clusterIP: {ip}
  ports: [{{name: tcp, port: {port}, protocol: TCP, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: robust
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: tcp, port: {port}, protocol: TCP}}]
endpoints:
{endpoints}
"""


def _manifest(name: str, ip: str, port: int, addresses: list[str]) -> str:
    eps = "\n".join(f"- addresses: [{a}]\n  conditions: {{ready: true}}" for a in addresses)
    return MANIFEST.format(name=name, ip=ip, port=port, endpoints=eps)


class Backends:
    """An event loop thread serving the test backends inside the pods' namespaces."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def listen(self, ns: str, ip: str, port: int, handler: Any) -> None:
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))

        async def start() -> asyncio.Server:
            # start_server calls listen() itself, with its own backlog (100 unless
            # told): a listen() made here beforehand would be silently overridden.
            return await asyncio.start_server(handler, sock=sock, backlog=BACKEND_BACKLOG)

        self.servers.append(self.run(start()))
        # Read back from the kernel (Send-Q of a listener is its backlog, capped by the
        # namespace's somaxconn): a short queue turns the burst test into a flake.
        out = netns.run(ns, ["ss", "-Hltn", "src", f"{ip}:{port}"]).stdout.split()
        assert out[:3] == ["LISTEN", "0", str(BACKEND_BACKLOG)], out

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers:
                s.close()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def echo_after_eof(name: str) -> Any:
    """Reads the request until EOF (the client half-closes), answers `name:` + request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read()
            writer.write(name.encode() + b":" + data)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    return handle


async def reset_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"partial")
    await writer.drain()
    await asyncio.sleep(0.05)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST


class Env:
    def __init__(
        self, lab: layout.Lab, agent: AgentProcess, backends: Backends, state_dir: str
    ) -> None:
        self.lab, self.agent, self.backends, self.state_dir = lab, agent, backends, state_dir

    @property
    def client(self) -> str:
        return self.lab.client.netns

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.agent.pid}/fd"))

    def stats(self) -> dict[str, Any]:
        result = CliRunner().invoke(
            app, ["stats", "--json", "--pin-dir", "/nonexistent", "--state-dir", self.state_dir]
        )
        assert result.exit_code == 0, result.output
        out: dict[str, Any] = json.loads(result.output)
        return out

    async def request(self, ip: str, port: int, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Connect from the client, send, half-close, read until EOF."""
        loop = asyncio.get_running_loop()
        sock = netns.socket_in(self.client, socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (ip, port))
                await loop.sock_sendall(sock, payload)
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := await loop.sock_recv(sock, 65536):
                    chunks.append(chunk)
                return b"".join(chunks)
        finally:
            sock.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _require_root()
    name = unique_lab_name()
    pin_dir = f"/sys/fs/bpf/ebpflb-{name}-{secrets.token_hex(2)}"  # never used: userspace
    manifests = tmp_path_factory.mktemp("manifests")
    state_dir = str(tmp_path_factory.mktemp("state"))
    lab = build.up(layout.LabSpec(name, pods=3))
    backends = Backends()
    agent: AgentProcess | None = None
    try:
        p1, p2, p3 = lab.pods
        backends.listen(p1.netns, str(p1.ip), ECHO_PORT, echo_after_eof("pod-1"))
        backends.listen(p2.netns, str(p2.ip), ECHO_PORT, echo_after_eof("pod-2"))
        backends.listen(p3.netns, str(p3.ip), RESET_PORT, reset_mid_stream)
        (manifests / "echo.yaml").write_text(
            _manifest("echo", ECHO_IP, ECHO_PORT, [str(p.ip) for p in lab.pods])
        )
        (manifests / "reset.yaml").write_text(
            _manifest("reset", RESET_IP, RESET_PORT, [str(p3.ip)])
        )
        agent = AgentProcess(
            lab.node_ns,
            manifests=manifests,
            pin_dir=pin_dir,
            log_path=Path(lab.state_dir) / "agent-userspace.log",
            extra_args=["--dataplane", "userspace", "--state-dir", state_dir, "--cleanup"],
        ).start()
        agent.wait_ready()
        yield Env(lab, agent, backends, state_dir)
    finally:
        if agent is not None:
            agent.stop()
        backends.close()
        build.down(name)
        remove_pins(pin_dir, abi.ALL_MAPS)


def test_refusing_backend_is_retried_on_another(env: Env):
    async def many() -> list[bytes]:
        return [await env.request(ECHO_IP, ECHO_PORT, b"hello") for _ in range(60)]

    answers = env.backends.run(many())
    assert all(a in (b"pod-1:hello", b"pod-2:hello") for a in answers), answers
    assert {a.split(b":")[0] for a in answers} == {b"pod-1", b"pod-2"}
    env.agent.wait_for(
        lambda: env.stats()["counters"]["backend_missing"] > 0,
        timeout=5,
        what="refused connects counted",
    )


def test_backend_reset_mid_stream_closes_the_client(env: Env):
    async def one() -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        sock = netns.socket_in(env.client, socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        got = b""
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, (RESET_IP, RESET_PORT))
                await loop.sock_sendall(sock, b"x")
                try:
                    while chunk := await loop.sock_recv(sock, 65536):
                        got += chunk
                    return got, "eof"
                except ConnectionResetError:
                    return got, "reset"
        finally:
            sock.close()

    for _ in range(5):
        got, end = env.backends.run(one())
        assert got in (b"", b"partial") and end in ("reset", "eof")
    assert env.backends.run(env.request(ECHO_IP, ECHO_PORT, b"after")).endswith(b":after")


def test_half_closed_client_still_gets_the_whole_response(env: Env):
    payload = os.urandom(1 << 20)  # 1 MiB: the relay meets back-pressure on the way
    answer = env.backends.run(env.request(ECHO_IP, ECHO_PORT, payload))
    name, _, body = answer.partition(b":")
    assert name in (b"pod-1", b"pod-2") and body == payload


def test_a_thousand_concurrent_connections_leak_nothing(env: Env):
    assert env.backends.run(env.request(ECHO_IP, ECHO_PORT, b"warm")).endswith(b":warm")
    env.agent.wait_for(lambda: not _flows(env), timeout=10, what="no flows before")
    before = env.fds()

    async def burst() -> list[bytes | BaseException]:
        return await asyncio.gather(
            *(env.request(ECHO_IP, ECHO_PORT, b"c%d" % i, timeout=60) for i in range(CONCURRENT)),
            return_exceptions=True,
        )

    answers = env.backends.run(burst(), timeout=90)
    failed = [a for a in answers if not isinstance(a, bytes)]
    assert not failed, f"{len(failed)} failed, e.g. {failed[:3]}"
    assert all(isinstance(a, bytes) and a.endswith(b":c%d" % i) for i, a in enumerate(answers))
    # Every socket and pipe of the burst is released.
    env.agent.wait_for(
        lambda: env.fds() == before,
        timeout=15,
        what=f"the agent's fds back to {before} (now {env.fds()})",
    )
    env.agent.wait_for(lambda: not _flows(env), timeout=5, what="an empty flow table")
    assert env.backends.run(env.request(ECHO_IP, ECHO_PORT, b"still")).endswith(b":still")
    assert env.agent.alive()


def _flows(env: Env) -> list[Any]:
    result = CliRunner().invoke(
        app, ["conntrack", "--json", "--pin-dir", "/nonexistent", "--state-dir", env.state_dir]
    )
    out: list[Any] = json.loads(result.output)
    return out
