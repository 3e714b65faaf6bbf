"""The lab's pods as real servers, and its clients' sockets, in their own network namespaces.

A socket belongs to the namespace it was made in; after that the event loop drives it like any
other. So each namespace the lab sends or serves from has one ``Sockets`` thread that entered
it (``setns(2)``) and makes sockets on request — not a thread per connection — and every pod is
a listening socket of this one process (``PodServer``), not a process of its own.

The apps answer each request line with ``ok``, and a ``STREAM`` line with a stream of ``ok``
lines, one every ``STREAM_INTERVAL`` seconds, for as long as the connection lasts (a watch, a
server-sent event stream, a gRPC stream). On SIGTERM (the kubelet's, after the preStop) they
behave as their kind does: ``hasty``, ``careful`` and ``streaming`` exit when the kubelet says
the app stopped — every socket closed at once, as the kernel does when a process exits (the
listener gone: new connections are refused; open ones, streams among them, are closed under
their clients) — and ``draining`` stops accepting at SIGTERM and closes each open connection
after the request it is serving, then exits.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import socket
import threading
from collections import Counter
from collections.abc import Callable

from observer.dataplane.commands import CommandError
from observer.dataplane.netlink import enter_namespace, settle
from observer.lab.network import LabNetwork

SOURCE_PORTS = (20000, 60000)  # the clients' own; pods listen on 8080, below
STREAM_INTERVAL = 0.05  # seconds between two messages of a stream


class Sockets:
    """Makes sockets inside one network namespace (a thread of its own, there)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._requests: queue.SimpleQueue[tuple[Callable[[], socket.socket],
                                                asyncio.Future[socket.socket]] | None] = (
            queue.SimpleQueue())
        self._loop = asyncio.get_running_loop()
        self._ports = itertools.cycle(range(*SOURCE_PORTS))
        self._thread = threading.Thread(target=self._serve, name=f"sockets-{netns}",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Enter the namespace, then make what is asked; had entering failed, every request
        gets that error."""
        failed: Exception | None = None
        try:
            enter_namespace(self.netns)
        except (OSError, CommandError) as error:
            failed = error
        while (item := self._requests.get()) is not None:
            make, made = item
            result: socket.socket | BaseException
            try:
                if failed is not None:
                    raise failed
                result = make()
            except (OSError, CommandError) as error:
                result = error
            self._loop.call_soon_threadsafe(settle, made, result)

    async def make(self, make: Callable[[], socket.socket]) -> socket.socket:
        made: asyncio.Future[socket.socket] = self._loop.create_future()
        self._requests.put((make, made))
        return await made

    async def tcp(self, family: int = socket.AF_INET) -> socket.socket:
        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            return sock
        return await self.make(make)

    def next_port(self) -> int:
        """A source port for the next connection from this namespace: each once in
        ``SOURCE_PORTS``' 40,000 (a lab run makes a few thousand per namespace)."""
        return next(self._ports)

    def close(self) -> None:
        self._requests.put(None)


class PodServer:
    """One pod's app: counts the connections it accepted, by client address (the lab's truth
    of which connections got through)."""

    def __init__(self, ip: str, kind: str) -> None:
        self.ip = ip
        self.kind = kind
        self.accepted: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, bool] = {}  # -> serving a request now
        self.handlers: set[asyncio.Task[None]] = set()
        self._draining = False
        self._gone = False  # exit(): the process is gone

    async def start(self, sockets: Sockets, port: int) -> None:
        def listening() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.ip, port))
            sock.listen(512)
            sock.setblocking(False)
            return sock
        self._server = await asyncio.start_server(self._handle,
                                                  sock=await sockets.make(listening))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._gone:  # accepted before the exit, handed to us after it: closed with it
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        peer = writer.get_extra_info("peername")
        self.accepted[peer[0] if peer else "?"] += 1
        self._connections[writer] = False
        try:
            while not self._draining and (line := await reader.readline()):
                self._connections[writer] = True
                if line == b"STREAM\n":
                    await self._stream(writer)
                    break
                writer.write(b"ok\n")
                await writer.drain()
                self._connections[writer] = False
        except ConnectionError:
            pass
        finally:
            self._connections.pop(writer, None)
            self.handlers.discard(task)
            writer.close()

    @staticmethod
    async def _stream(writer: asyncio.StreamWriter) -> None:
        """Until the connection is closed, by its client or by ``exit``."""
        while not writer.is_closing():
            writer.write(b"ok\n")
            await writer.drain()
            await asyncio.sleep(STREAM_INTERVAL)

    def sigterm(self) -> None:
        """A ``draining`` app stops accepting now and lets each connection finish the request
        it serves; the others keep serving until ``exit``."""
        if self.kind != "draining":
            return
        self._draining = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer, busy in list(self._connections.items()):
            if not busy:
                writer.close()

    def exit(self) -> None:
        """The process is gone: every socket closed at once (each handler then ends on its
        own: its connection is lost)."""
        self._gone = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()


class PodRuntime:
    """One node's pods as the container runtime and the CNI would make them: a namespace
    wired to the node (``LabNetwork``) and the app's server in it."""

    def __init__(self, network: LabNetwork, node_netns: str, port: int) -> None:
        self.network = network
        self.node_netns = node_netns
        self.port = port
        self.servers: dict[str, PodServer] = {}

    async def start(self, pod: str, ip: str, kind: str) -> None:
        netns = await self.network.add_pod(self.node_netns, ip)
        sockets = Sockets(netns)
        try:
            server = PodServer(ip, kind)
            await server.start(sockets, self.port)
        finally:
            sockets.close()
        self.servers[pod] = server

    def sigterm(self, pod: str) -> None:
        if (server := self.servers.get(pod)) is not None:
            server.sigterm()

    def exit(self, pod: str) -> None:
        """The app is gone; its namespace (and address) stays until the lab ends, so new
        connections to it are refused at once, as while a real pod's sandbox is still up."""
        if (server := self.servers.get(pod)) is not None:
            server.exit()

    async def close(self) -> None:
        for server in self.servers.values():
            server.exit()
            if server.handlers:  # they end once their connection is lost: a turn or two
                await asyncio.wait(server.handlers)
