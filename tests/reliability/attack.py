"""The hostile-load rows of issue 12 by hand, at test or full scale, with the numbers for the README.

    .venv/bin/python tests/reliability/attack.py --row large_frames --scale full
    .venv/bin/python tests/reliability/attack.py --row all --scale test --out attack.json

Starts ``imgcls serve`` in a child process (loopback, port 0; a bearer token, so the tokenless rows mean
something; defaults otherwise unless --memory-budget / --server-arg), a normal caller in another process
(cat.jpg every 0.25 s over gRPC and HTTP, each on its own connection), then runs each row and prints one
JSON object per row: the server's idle, peak and after RSS, how the attacker's calls ended, and the normal
caller's p50/p99. --duration overrides the row's own duration or hold time. After each row it waits (at
most --settle seconds) for RSS to come back near idle, and reports how near it got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from hostile import MIB, ROWS, SECRET, ChildServer, NormalCaller, Target, measure, warm_up  # noqa: E402


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = list(ROWS) if args.row == "all" else args.row.split(",")
    with tempfile.TemporaryDirectory() as folder:
        token_file = Path(folder) / "tokens"
        token_file.write_text(SECRET + "\n")
        flags = ["--auth-token-file", str(token_file), *args.server_arg]
        if args.memory_budget:
            flags += ["--memory-budget", str(args.memory_budget * MIB)]
        log = Path(args.log or Path(folder) / "server.log")
        env = dict(item.split("=", 1) for item in args.env)
        server = ChildServer(log, *flags, env=env).start()
        caller = NormalCaller(server.target, server.http_address, SECRET).start()
        reports = []
        try:
            caller.wait_answered(doors=4, after=0.0)
            await warm_up(Target(server, SECRET))
            idle = server.status()
            print(f"server idle: {idle.rss // MIB} MiB, {idle.threads} threads, {idle.fds} fds", file=sys.stderr)
            for name in rows:
                row = ROWS[name]
                if args.duration is not None:
                    params = row.full if args.scale == "full" else row.test
                    for key in ("duration", "hold"):
                        if key in params:
                            params[key] = args.duration
                print(f"{name} ({args.scale}): {row.what}", file=sys.stderr)
                report = await measure(row, args.scale, Target(server, SECRET), caller, idle)
                summary = report.summary()
                summary["settled_rss_mib"], summary["settle_s"] = await settle(server, idle.rss, args.settle)
                summary["token_in_log"] = SECRET in server.log()
                print(json.dumps(summary), flush=True)
                reports.append(summary)
                if not server.alive():
                    print("the server died", file=sys.stderr)
                    break
        finally:
            caller.stop()
            server.stop()
            if args.log is None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print("server log tail:\n" + "\n".join(tail), file=sys.stderr)
        return reports


async def settle(server: ChildServer, idle: int, limit_s: float) -> tuple[int, float]:
    """Wait (at most limit_s) for RSS to fall within 64 MiB of idle; the RSS reached and the seconds it took."""
    started = time.monotonic()
    rss = server.status().rss
    while rss > idle + 64 * MIB and time.monotonic() - started < limit_s:
        await asyncio.sleep(0.25)
        rss = server.status().rss
    return round(rss / MIB), round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", default="all", help=f"a row, several (comma-separated) or all: {', '.join(ROWS)}")
    parser.add_argument("--scale", choices=["test", "full"], default="test")
    parser.add_argument("--duration", type=float, help="seconds each row runs (its duration or hold time)")
    parser.add_argument("--memory-budget", type=int, help="the server's memory budget in MiB (default: its own)")
    parser.add_argument("--server-arg", action="append", default=[], help="another serve flag (repeat)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server's environment")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait for RSS back near idle")
    parser.add_argument("--log", help="keep the server's log in this file")
    parser.add_argument("--out", help="write the reports as a JSON list here too")
    args = parser.parse_args()
    reports = asyncio.run(run(args))
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
