"""The normal caller of the hostile-load tests: one small image every interval, in a process of its own.

    python tests/reliability/normal_caller.py --grpc 127.0.0.1:PORT [--http 127.0.0.1:PORT] [--token T]

Each door gets its own thread and its own connection (one gRPC channel, one keep-alive HTTP connection),
so the latency it sees is the server's, not the attackers' (who run in another process). Two more doors,
"grpc-new" and "http-new", open a fresh connection for every call, as a short-lived client, a health check
or a load balancer does: the ones a flood of idle connections would shut out. It sends cat.jpg
every --interval seconds (the next call waits for the last one: one call in flight per door) and writes
one JSON line per call to stdout: ``{"door", "start", "seconds", "code", "top1"}``, start on the
monotonic clock (system-wide on Linux, so the parent can match calls to its own time windows). It stops
when stdin closes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from imgcls.v1 import classifier_pb2 as pb  # noqa: E402
from imgcls.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402
from support.paths import IMAGES  # noqa: E402

IMAGE = (IMAGES / "cat.jpg").read_bytes()
CALL_TIMEOUT_S = 30.0
_lock = threading.Lock()


def report(door: str, start: float, code: str, top1: Any = None, details: str = "", request_id: str = "") -> None:
    seconds = time.monotonic() - start
    line = json.dumps(
        {
            "door": door,
            "start": start,
            "seconds": seconds,
            "code": code,
            "top1": top1,
            "details": details,
            "request_id": request_id,
        }
    )
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def grpc_caller(target: str, token: str | None, interval: float, stop: threading.Event, fresh: bool = False) -> None:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    request = pb.ClassifyRequest(inputs=[pb.Input(image=IMAGE)], parameters=pb.Parameters(top_k=1))
    door = "grpc-new" if fresh else "grpc"
    # A fresh channel per call: its own subchannel and TCP connection (no sharing with the others).
    options = [("grpc.use_local_subchannel_pool", 1)] if fresh else []
    kept = None if fresh else grpc.insecure_channel(target)
    due = time.monotonic()
    sent = 0
    while not stop.is_set():
        start = time.monotonic()
        sent += 1
        request.request_id = f"{door}-{sent}"  # the server's debug line for it tells its own time
        channel = kept or grpc.insecure_channel(target, options=options)
        try:
            response = pb_grpc.ImageClassifierServiceStub(channel).Classify(
                request, timeout=CALL_TIMEOUT_S, metadata=metadata
            )
            report(door, start, "OK", response.results[0].labels[0].index, request_id=request.request_id)
        except grpc.RpcError as exc:
            details = (exc.details() or "")[:200]  # type: ignore[attr-defined]
            report(door, start, exc.code().name, details=details, request_id=request.request_id)
        finally:
            if kept is None:
                channel.close()
        due += interval
        stop.wait(max(0.0, due - time.monotonic()))
    if kept is not None:
        kept.close()


def http_caller(address: str, token: str | None, interval: float, stop: threading.Event, fresh: bool = False) -> None:
    host, _, port = address.rpartition(":")
    door = "http-new" if fresh else "http"
    headers = {"content-type": "image/jpeg", "x-request-id": "normal"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    connection: http.client.HTTPConnection | None = None
    due = time.monotonic()
    while not stop.is_set():
        start = time.monotonic()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
            connection.request("POST", "/models/efficientnet-lite0?top_k=1", body=IMAGE, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                report(door, start, "OK", json.loads(body)[0]["label"])
            else:
                report(door, start, f"HTTP {response.status}", details=body[:200].decode(errors="replace"))
            if fresh or response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            report(door, start, type(exc).__name__, details=str(exc)[:200])
            if connection is not None:
                connection.close()
            connection = None
        due += interval
        stop.wait(max(0.0, due - time.monotonic()))
    if connection is not None:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", help="gRPC target host:port")
    parser.add_argument("--http", help="HTTP host:port")
    parser.add_argument("--token")
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    stop = threading.Event()
    threads = []
    for fresh in (False, True):
        if args.grpc:
            threads.append(
                threading.Thread(target=grpc_caller, args=(args.grpc, args.token, args.interval, stop, fresh))
            )
        if args.http:
            threads.append(
                threading.Thread(target=http_caller, args=(args.http, args.token, args.interval, stop, fresh))
            )
    for thread in threads:
        thread.start()
    sys.stdin.read()  # until the parent closes it
    stop.set()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
