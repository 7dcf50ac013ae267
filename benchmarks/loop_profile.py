"""What the event loop does per call: a deterministic profile of the server's main thread under load.

    python -m benchmarks.loop_profile                      # imgcls.v1 Classify, 1x3x224x224 tensors, c16
    python -m benchmarks.loop_profile --calls 2000 --top 40 --out profile.json

The server runs in this process (defaults, as ``imgcls serve`` starts it, on 127.0.0.1 port 0); a grpc.aio
client in another process keeps --concurrency Classify calls in flight. cProfile, timed by the main thread's
own CPU clock (so waiting for the GIL or in epoll costs nothing), records the event loop over the measured
calls only. Two figures come out: the Python function calls per request, which do not depend on how busy
the machine is (the measure to compare two versions by), and CPU per request under the profiler (inflated by
the profiler's own cost per call, several times the real figure: compare, do not quote). The top functions
by own time and by cumulative time show where it goes; grpc.aio's Cython layer shows as the Python frames
that call into it (``_Reader.one`` for receiving a message, ``Context.run`` for its callbacks).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

CLIENT = r"""
import asyncio, sys
import grpc, numpy as np
from imgcls.v1 import classifier_pb2 as pb, classifier_pb2_grpc as pb_grpc

async def main(port, calls, concurrency):
    tensor = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    request = pb.ClassifyRequest(inputs=[pb.Input(tensor=pb.Tensor(
        raw_data=tensor.tobytes(), dims=tensor.shape, dtype=pb.DATA_TYPE_FLOAT32))])
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.ImageClassifierServiceStub(channel)
        async def worker(count):
            for _ in range(count):
                await stub.Classify(request, timeout=60)
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""


async def drive(port: int, calls: int, concurrency: int) -> None:
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(calls), str(concurrency))
    if await client.wait() != 0:
        raise RuntimeError(f"the load client exited with {client.returncode}")


async def profile(calls: int, concurrency: int, warmup: int) -> tuple[pstats.Stats, float, int]:
    from imgcls.server.server import start_server
    from imgcls.server.settings import load_settings

    server = await start_server(load_settings({"host": "127.0.0.1", "port": 0, "http_port": 0}, environ={}))
    try:
        await drive(server.port, warmup, concurrency)
        profiler = cProfile.Profile(time.thread_time)
        measured = (calls // concurrency) * concurrency
        started = time.thread_time()
        profiler.enable()
        await drive(server.port, measured, concurrency)
        profiler.disable()
        cpu = time.thread_time() - started
    finally:
        await server.stop(grace=1.0)
    return pstats.Stats(profiler), cpu, measured


def top(stats: pstats.Stats, key: int, count: int, per: int) -> list[dict[str, Any]]:
    """The count biggest functions by own time (key 2) or cumulative time (key 3), per request."""
    rows = sorted(stats.stats.items(), key=lambda item: item[1][key], reverse=True)[:count]  # type: ignore[attr-defined]
    return [
        {
            "function": f"{Path(file).name}:{line}({name})" if line else name,
            "calls_per_request": calls / per,
            "own_us_per_request": 1e6 * own / per,
            "cumulative_us_per_request": 1e6 * cumulative / per,
        }
        for (file, line, name), (_, calls, own, cumulative, _) in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=960, help="measured Classify calls")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=160, help="calls before the profiler starts")
    parser.add_argument("--top", type=int, default=25, help="functions listed, by own and by cumulative time")
    parser.add_argument("--out", type=Path, help="write the figures and the lists as JSON here")
    args = parser.parse_args(argv)
    stats, cpu, measured = asyncio.run(profile(args.calls, args.concurrency, args.warmup))
    result = {
        "calls": measured,
        "concurrency": args.concurrency,
        "python_calls_per_request": stats.total_calls / measured,  # type: ignore[attr-defined]
        "profiled_cpu_ms_per_request": 1e3 * cpu / measured,
        "by_own_time": top(stats, 2, args.top, measured),
        "by_cumulative_time": top(stats, 3, args.top, measured),
    }
    print(
        f"{measured} Classify calls at c{args.concurrency}: {result['python_calls_per_request']:.0f} Python calls "
        f"per request on the event loop; {result['profiled_cpu_ms_per_request']:.2f} CPU-ms per request under "
        "the profiler (inflated; compare, do not quote)"
    )
    for title, key in (("own time", "by_own_time"), ("cumulative time", "by_cumulative_time")):
        print(f"\n| by {title} | calls/request | own us/request | cumulative us/request |\n|---|---|---|---|")
        for row in result[key]:
            print(
                f"| {row['function']} | {row['calls_per_request']:.2f} | {row['own_us_per_request']:.1f} "
                f"| {row['cumulative_us_per_request']:.1f} |"
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
