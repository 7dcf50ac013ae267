"""grpc.health.v1 for the gRPC door: grpcio's servicer, with Watch streams that end when the server stops.

Clients balance on Watch (client-side health checking: the imgcls client's round_robin stops picking a
server the moment it reports NOT_SERVING). An open Watch is a call in flight, and gRPC's stop waits for every
call in flight for the whole grace period: so the door ends them itself once no client needs them any more.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()
        self._watches: set[asyncio.Future[Any]] = set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        if self._closing.is_set():
            # Stopping: the last status, and the stream ends (a client retrying its Watch gets no new one).
            await context.write(health_pb2.HealthCheckResponse(status=self._status_of(request.service)))
            return
        watching = asyncio.ensure_future(super().Watch(request, context))
        self._watches.add(watching)
        try:
            await watching
        except asyncio.CancelledError:
            if not self._closing.is_set():
                raise  # the client went away (or gRPC cancelled the call): not ended by close_watches
        finally:
            self._watches.discard(watching)
            watching.cancel()

    def _status_of(self, service: str) -> int:
        return int(self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN))

    async def close_watches(self) -> None:
        """End every Watch stream, now and from now on, each with its last status sent (OK status).

        Called as the server stops, after NOT_SERVING went out on them: clients have moved on by then.
        """
        self._closing.set()
        watches = list(self._watches)
        for watching in watches:
            watching.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
