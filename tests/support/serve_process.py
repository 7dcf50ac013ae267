"""``imgcls serve`` in a child process, as a user starts it: for the end-to-end tests and the soak.

Started on a free loopback port (probed, then retried if another process took it in between), with
IMGCLS_* and HF_* variables of the test runner left out, its output in a file for failure messages, and
SIGTERM to stop it gracefully.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.environment import without_server_variables

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    def __init__(self, log_path: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.log_path = log_path
        self.args = list(args)
        self.env = {**without_server_variables(), **(env or {})}
        self.port = 0
        self.command: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        """Launch and wait for grpc.health.v1 SERVING; AssertionError with the log's tail if it never is."""
        for _ in range(3):  # the probed port may be taken before the server binds it
            self.port = free_port()
            # --http-port 0: no HTTP door unless a test asks for one (8000 may be taken on a test machine).
            self.command = [sys.executable, "-m", "imgcls.cli", "serve", "--host", "127.0.0.1", "--http-port", "0"]
            self.command += ["--port", str(self.port), *self.args]
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
                )
            if self._wait_serving(timeout_s):
                return self
            self.stop()
        raise AssertionError(f"imgcls serve never reported SERVING:\n{self.output()[-3000:]}")

    def _wait_serving(self, timeout_s: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    # wait_for_ready blocks until the port accepts (bounded by the timeout): no sleeps.
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=True).status == SERVING:
                        return True
                except grpc.RpcError:
                    continue
        return False

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then the exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode
