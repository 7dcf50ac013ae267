"""The floor under any Python gRPC door: a grpc.aio server's CPU per unary call that does nothing with its
message, beside the same call served as imgcls serves its unary RPCs (a stream-unary handler reading the one
message itself, so the read gate can bound what is received) and served by grpcio's synchronous server (a
thread pool instead of the event loop).

    python -m benchmarks.grpc_floor                       # 602 KB messages (a 224x224 float32 tensor)
    python -m benchmarks.grpc_floor --bytes 100000 --calls 400 --rounds 5

Each handler runs in a server process of its own (started here, port 0), a grpc.aio client in this process
keeps --concurrency calls in flight; the server's CPU comes from /proc over the measured calls. Rounds
alternate the order of the handlers, against drift; report the medians. What imgcls's doors cost above this
floor is theirs; the floor itself is grpc.aio's and the interpreter's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc
import psutil

HANDLERS = ("unary", "stream_unary", "sync_unary")
METHOD = "/floor.Floor/Call"
ANSWER = b"x" * 200  # about what a ranked top-5 answer weighs


def serve_sync(workers: int, bdp_probe: bool) -> None:
    """grpcio's synchronous server: handlers on a thread pool, no event loop."""
    from concurrent.futures import ThreadPoolExecutor

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return ANSWER

    behaviour = grpc.unary_unary_rpc_method_handler(unary)
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=server_options(bdp_probe))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", {"Call": behaviour})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def server_options(bdp_probe: bool) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    # imgcls turns window growth off (a message is pulled in only once admitted: grpc/door.py).
    return options if bdp_probe else [*options, ("grpc.http2.bdp_probe", 0)]


async def serve(handler: str, bdp_probe: bool) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ANSWER

    async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        await context.read()
        return ANSWER

    behaviour = (
        grpc.unary_unary_rpc_method_handler(unary)
        if handler == "unary"
        else grpc.stream_unary_rpc_method_handler(stream_unary)
    )
    server = grpc.aio.server(options=server_options(bdp_probe))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", {"Call": behaviour})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def load(port: int, payload: bytes, calls: int, concurrency: int, process: psutil.Process) -> dict[str, float]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(METHOD)

        async def worker(count: int) -> None:
            for _ in range(count):
                await call(payload)

        per_worker = max(1, calls // concurrency)
        await asyncio.gather(*(worker(max(1, per_worker // 10)) for _ in range(concurrency)))  # warm-up
        before, started = process.cpu_times(), time.perf_counter()
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
        after, ended = process.cpu_times(), time.perf_counter()
    total = per_worker * concurrency
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"calls_per_s": total / (ended - started), "server_cpu_ms_per_call": 1e3 * cpu / total}


def measure(handler: str, payload: bytes, calls: int, concurrency: int, bdp_probe: bool = True) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.grpc_floor", "--serve", handler, "--concurrency", str(concurrency)]
    server = subprocess.Popen(
        command if bdp_probe else [*command, "--no-bdp-probe"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        return asyncio.run(load(port, payload, calls, concurrency, psutil.Process(server.pid)))
    finally:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=3 * 224 * 224 * 4 + 20, help="request message size")
    parser.add_argument("--calls", type=int, default=3200, help="measured calls per round and handler")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the rounds and medians as JSON here")
    parser.add_argument(
        "--no-bdp-probe",
        dest="bdp_probe",
        action="store_false",
        help="the servers' HTTP/2 windows do not grow by bandwidth probing, as imgcls serves (default: grpcio's)",
    )
    parser.add_argument("--serve", choices=HANDLERS, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.serve == "sync_unary":
        serve_sync(args.concurrency, args.bdp_probe)
        return 0
    if args.serve:
        asyncio.run(serve(args.serve, args.bdp_probe))
        return 0
    payload = os.urandom(args.bytes)
    rounds: dict[str, list[dict[str, float]]] = {handler: [] for handler in HANDLERS}
    for index in range(args.rounds):
        for handler in HANDLERS if index % 2 == 0 else reversed(HANDLERS):
            rounds[handler].append(measure(handler, payload, args.calls, args.concurrency, args.bdp_probe))
    medians = {
        handler: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for handler, results in rounds.items()
    }
    print("| handler | calls/s (median) | server CPU-ms/call (median) | every round |")
    print("|---|---|---|---|")
    for handler, median in medians.items():
        every = ", ".join(f"{r['server_cpu_ms_per_call']:.2f}" for r in rounds[handler])
        print(f"| {handler} | {median['calls_per_s']:.0f} | {median['server_cpu_ms_per_call']:.3f} | {every} |")
    if args.out:
        with open(args.out, "w") as out:
            summary = {"bytes": args.bytes, "bdp_probe": args.bdp_probe, "rounds": rounds, "medians": medians}
            json.dump(summary, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
