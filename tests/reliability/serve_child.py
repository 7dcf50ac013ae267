"""``imgcls serve`` exactly as a user runs it, that also reports the ports it bound (for port 0 / "auto").

    python tests/reliability/serve_child.py --port 0 --http-port auto [serve flags...]

The one difference from ``imgcls serve``: once the server has started, one line
``IMGCLS_PORTS {"grpc": N, "http": M}`` is written to stdout (the logs go to stderr). The hostile-load
tests start the server this way in a child process, so the memory they measure is the server's own.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

PORTS_PREFIX = "IMGCLS_PORTS "


def main(argv: list[str]) -> int:
    # As cmd_serve does it, before grpc is imported: gRPC's own C logging off unless asked for.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from imgcls import cli
    from imgcls.server import server as server_module

    start_server = server_module.start_server

    async def start_and_report(settings: Any, engine: Any = None) -> Any:
        running = await start_server(settings, engine)
        print(PORTS_PREFIX + json.dumps({"grpc": running.port, "http": running.http_port}), flush=True)
        return running

    server_module.start_server = start_and_report  # serve() looks it up in its module
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
