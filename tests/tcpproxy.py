"""A TCP proxy on 127.0.0.1 that cuts every connection through it at a fixed period: the
network path between an agent and its API server failing the way a flapping load balancer or
a NAT table flush makes it fail (each side sees its connection reset, with no clean end)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from observer.tasks import cancel_and_wait


class CuttingProxy:
    def __init__(self, target_port: int, *, period: float) -> None:
        self.target_port = target_port
        self.period = period
        self.cuts = 0  # connections cut so far
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        """Serve while the block runs; yields the proxy's port."""
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        cutter = asyncio.create_task(self._cut_every_period())
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await cancel_and_wait(cutter, *self._pipes)
            for pair in self._open:
                for writer in pair:
                    writer.transport.abort()
            await server.wait_closed()

    async def _accept(self, client_in: asyncio.StreamReader,
                      client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.transport.abort()
            return
        pair = (client_out, server_out)
        self._open.add(pair)
        pipes = [asyncio.create_task(self._pipe(client_in, server_out)),
                 asyncio.create_task(self._pipe(server_in, client_out))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes)
        finally:
            self._pipes.difference_update(pipes)
            await cancel_and_wait(*pipes)
            self._open.discard(pair)
            for writer in pair:
                writer.transport.abort()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await source.read(64 * 1024):
                sink.write(chunk)
                await sink.drain()

    async def _cut_every_period(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            for pair in list(self._open):
                for writer in pair:  # a reset on both sides, as when a middlebox drops the flow
                    writer.transport.abort()
                self.cuts += 1
