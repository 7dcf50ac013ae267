"""grpc.health.v1 for the gRPC door, with Watch streams that end when the server stops.

Clients balance on Watch (client-side health checking: the imgcls client's round_robin stops picking a
server the moment it reports NOT_SERVING). An open Watch is a call in flight, and gRPC's stop waits for every
call in flight for the whole grace period: so the door ends them itself, each after its last status went
out. (grpcio's own servicer can only have them cancelled, which may cut a stream before its NOT_SERVING.)
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        """The status now, then each change; once the watches are closed, the latest status and the end."""
        sent: int | None = None
        while True:
            async with self._changed:
                while (status := self._status.get(request.service, SERVICE_UNKNOWN)) == sent and not self._closing:
                    await self._changed.wait()
                closing = self._closing
            if status != sent:
                # Written outside the lock: a client slow to read holds up its own stream only.
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if closing:
                return

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def close_watches(self) -> None:
        """End every Watch stream (status OK) once it has sent the latest status; later ones end at once too."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
