"""``imgcls serve`` in a child process, as a user starts it: for the end-to-end tests and the soak.

Started on 127.0.0.1 port 0: the server binds a port the kernel picks and reports it in its start-up
line ("imgcls serving on HOST:PORT"), which is read back from its output, so no other process can take the
port between a probe and the bind. IMGCLS_* and HF_* variables of the test runner are left out, its output
goes to a file for failure messages, and SIGTERM stops it gracefully.
"""

from __future__ import annotations

import re
import signal
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


# The start-up summary at info level, in text or JSON log format alike (the JSON record's message holds
# the same words, beside its "port" field).
SERVING_ON = re.compile(r"imgcls serving on 127\.0\.0\.1:(\d+) ")


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
        """Launch on port 0, read the port it reports, and wait for grpc.health.v1 SERVING; AssertionError with
        the log's tail if it never is."""
        # --http-port 0: no HTTP door unless a test asks for one (8000 may be taken on a test machine).
        self.command = [sys.executable, "-m", "imgcls.cli", "serve", "--host", "127.0.0.1", "--http-port", "0"]
        self.command += ["--port", "0", *self.args]
        start = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends to the log
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            found = SERVING_ON.search(self.log_path.read_bytes()[start:].decode(errors="replace"))
            if found:
                self.port = int(found.group(1))
                if self._wait_serving(deadline - time.monotonic()):
                    return self
                break
            time.sleep(0.05)
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
