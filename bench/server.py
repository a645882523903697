"""A real `python -m service` process for the HTTP benchmark (`bench.load`).

`running_server(bundle, port, threads)` starts the server on a loopback port, waits for
`/readyz` and yields its base URL; `server_process` does the same but yields the process too
(for its pid); `wait_until_ready` is the readiness wait they share with `bench.faults`.
The server's stderr goes to a temporary file, not a pipe, so a chatty server under load can
never block on a full pipe; its tail is quoted when the server fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STDERR_TAIL_CHARS = 2000


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited `grace_s` later."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class ServerProcess:
    """A started server: its base URL and its process."""

    base: str
    process: subprocess.Popen[bytes]


def _tail(path: Path) -> str:
    """The last characters of a text file (the server's stderr)."""
    return path.read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL_CHARS:]


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    base: str,
    stderr_path: Path,
    timeout_s: float,
    poll_s: float = 0.2,
) -> None:
    """Poll `base/readyz` until it answers 200.

    Raises RuntimeError, quoting the tail of the server's stderr, if the process exits first
    or `timeout_s` passes.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {_tail(stderr_path)}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"server not ready in time: {_tail(stderr_path)}")


@contextmanager
def server_process(
    bundle: Path,
    port: int,
    threads: int,
    timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A `python -m service` subprocess, ready to answer, stopped (SIGTERM) on exit.

    The server inherits this environment with `XC_THREADS=threads` and `XC_LOG_LEVEL=warning`;
    `env` is applied last, so it can override both (e.g. `{"XC_MAX_BATCH": "32"}`).
    """
    full_env = {**os.environ, "XC_THREADS": str(threads), "XC_LOG_LEVEL": "warning", **(env or {})}
    cmd = [sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="xc-server-") as tmp:
        stderr_path = Path(tmp) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_until_ready(proc, base, stderr_path, timeout_s)
            yield ServerProcess(base=base, process=proc)
        finally:
            stop_process(proc)


@contextmanager
def running_server(
    bundle: Path,
    port: int,
    threads: int,
    timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A `python -m service` subprocess, ready to answer, stopped on exit; yields its base URL."""
    with server_process(bundle, port, threads, timeout_s=timeout_s, env=env) as server:
        yield server.base


# How long a started `RestartableServer` may take to answer /readyz.
SERVICE_READY_TIMEOUT_S = 180.0


@dataclass
class RestartableServer:
    """`python -m service` on a port of its own, started, killed (SIGKILL) and started again at
    will on the same settings (`bench.faults`: one server; `bench.fleet`: three replicas)."""

    name: str
    bundle: Path
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        command = [sys.executable, "-m", "service", "--bundle", str(self.bundle)]
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_until_ready(self.process, self.base, self.log, SERVICE_READY_TIMEOUT_S, poll_s=0.05)

    def ready(self) -> bool:
        """Whether it answers /readyz with 200 now."""
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
