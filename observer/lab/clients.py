"""The lab's clients: real requests on real connections, each outcome recorded — the truth of
what traffic did.

- ``service``: on every node, through each service address at a steady rate, a new connection
  per request (what a pod calling a Service does without connection reuse); this node's
  kube-proxy picks the pod.
- ``keepalive``: on every node, one kept-alive connection per service (an HTTP client's pool).
  When the pod it was opened to closed it, a request on it finds it closed before any answer;
  the client then retries once on a new connection, as HTTP clients do with an idle pooled
  connection (Go's ``net/http``, urllib3): the request fails only if that fails too.
- ``ingress``: an ingress controller's view — its own list of backends, taken from the
  EndpointSlices after a delay of its own (``--ingress-delay``: a consumer slower than
  kube-proxy), requests sent straight to pod addresses, round robin.
- ``stream``: for the ``streaming`` workload, on every node, ``STREAMS`` long-lived streams
  through its service address (a watch, a gRPC stream): each opened with one request and
  followed until it ends; a stream the pod ended is opened again at once, a failed attempt
  again after a request's interval.

Outcomes: ``ok`` (answered), ``refused`` (connection refused: nothing listens), ``reset``
(the connection closed or reset before the answer), ``timeout`` (no answer within
``TIMEOUT``). Times are the lab's monotonic clock, the one the agents stamp with.

Cut connections: every client, when it closes a connection, asks its kernel whether the
server's end had closed it first (``TCP_INFO``: the socket in CLOSE_WAIT after the server's
FIN, or CLOSE after its reset) — a connection the pod closed under its client, as the agents
count them (``observer/traffic/conntrack.py``: open when the stop was seen, or closed by the
pod first). A stream is always cut that way; a request's connection only when the pod closed it
while the request was in flight or its answer on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from observer.clock import Clock
from observer.lab.apps import Sockets
from observer.lab.config import Delay
from observer.lab.controller import NAMESPACE
from observer.tasks import cancel_and_wait

Outcome = Literal["ok", "refused", "reset", "timeout"]
ClientKind = Literal["service", "keepalive", "ingress", "stream"]
CLIENTS: tuple[ClientKind, ...] = ("service", "keepalive", "ingress", "stream")
TIMEOUT = 1.0
STREAMS = 2  # the stream client's streams, per node
# <netinet/tcp.h>: struct tcp_info starts with tcpi_state (include/net/tcp_states.h)
_TCP_INFO, _TCP_CLOSE, _TCP_CLOSE_WAIT = 11, 7, 8


@dataclass(frozen=True)
class Request:
    client: ClientKind
    node: str  # where the client runs ("" for the ingress)
    workload: str
    target: str  # the address it connected to: a service's or a pod's
    at: float  # monotonic, when it started
    outcome: Outcome
    new_connection: bool  # it opened a connection (one conntrack flow) rather than reusing one
    connected: bool  # the connection was made (else the attempt itself failed)
    attempt: Attempt | None  # the new connection's attempt, when it made one


@dataclass(frozen=True)
class Attempt:
    """A connection attempt: its source port (the pods' namespaces note each SYN's source:
    ``LabNetwork.attempts``) and when the SYN left, on the lab's monotonic clock."""

    port: int
    sent: float


def _failure(error: BaseException) -> Outcome:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "timeout"  # the address is gone: what a client waiting on it would see
    return "reset"


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, request: bytes = b"GET\n") -> Outcome:
        try:
            async with asyncio.timeout(TIMEOUT):
                self.writer.write(request)
                await self.writer.drain()
                line = await self.reader.readline()
        except (OSError, TimeoutError) as error:
            return _failure(error)
        return "ok" if line == b"ok\n" else "reset"

    async def follow(self) -> None:
        """Read a stream (after ``ask(b"STREAM\\n")``) until it ends."""
        try:
            while await self.reader.readline():
                pass
        except OSError:
            pass

    def close(self) -> bool:
        """Close it; whether the server had closed or reset it first: cut under us. (A reset
        the transport read is its reader's error, the socket already gone.)"""
        cut = isinstance(self.reader.exception(), ConnectionResetError | BrokenPipeError)
        sock = self.writer.get_extra_info("socket")
        if not cut and sock is not None:
            with contextlib.suppress(OSError):  # closed by a reset: the check above
                cut = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] in (
                    _TCP_CLOSE_WAIT, _TCP_CLOSE)
        self.writer.close()
        return cut


async def connect(sockets: Sockets, ip: str, port: int, clock: Clock
                  ) -> tuple[Connection | Outcome, Attempt]:
    v6 = ":" in ip
    sock = await sockets.tcp(socket.AF_INET6 if v6 else socket.AF_INET)
    # A source port of its own for each attempt of the run (the kernel's choice repeats
    # within a run), so the pods' notes of the SYNs name exactly one attempt each.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    source = sockets.next_port()
    sock.bind(("::" if v6 else "0.0.0.0", source))
    attempt = Attempt(source, clock.monotonic())
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except (OSError, TimeoutError) as error:
        sock.close()
        return _failure(error), attempt
    return Connection(reader, writer), attempt


async def request(sockets: Sockets, ip: str, port: int, clock: Clock
                  ) -> tuple[Outcome, Attempt, bool, bool]:
    """One request on a new connection: its outcome, its attempt, whether it connected, and
    whether the server closed the connection first (cut)."""
    conn, attempt = await connect(sockets, ip, port, clock)
    if not isinstance(conn, Connection):
        return conn, attempt, False, False
    cut = False
    try:
        outcome = await conn.ask()
    finally:
        cut = conn.close()
    return outcome, attempt, True, cut


class Clients:
    """Every client of a lab run, and what each request did."""

    def __init__(self, *, clock: Clock, rate: float, rng: random.Random) -> None:
        self.clock = clock
        self.rate = rate  # requests a second, per client and service
        self.rng = rng
        self.requests: list[Request] = []
        # Connections the server closed under their client, by client and workload.
        self.cuts: Counter[tuple[ClientKind, str]] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    def record(self, client: ClientKind, node: str, workload: str, target: str, at: float,
               outcome: Outcome, attempt: Attempt | None, *, connected: bool = True) -> None:
        self.requests.append(Request(client, node, workload, target, at, outcome,
                                     attempt is not None, connected, attempt))

    def start(self, coroutine: Any) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()

    async def _new_connection(self, client: ClientKind, node: str, workload: str,
                              sockets: Sockets, ip: str, port: int) -> None:
        at = self.clock.monotonic()
        outcome, attempt, connected, cut = await request(sockets, ip, port, self.clock)
        self.record(client, node, workload, ip, at, outcome, attempt, connected=connected)
        self.cuts[client, workload] += cut

    async def _paced(self, send: Callable[[], Any]) -> None:
        """``send()`` at ``rate`` a second, each started on time whatever the last took."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        start = loop.time() + self.rng.uniform(0, 1 / self.rate)  # spread the clients out
        tick = 0
        try:
            while True:
                await asyncio.sleep(max(0.0, start + tick / self.rate - loop.time()))
                tick += 1
                task = asyncio.create_task(send())
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            await cancel_and_wait(*pending)

    async def service(self, sockets: Sockets, node: str, workload: str, vip: str,
                      port: int) -> None:
        async def send() -> None:
            await self._new_connection("service", node, workload, sockets, vip, port)
        await self._paced(send)

    async def keepalive(self, sockets: Sockets, node: str, workload: str, vip: str,
                        port: int) -> None:
        loop = asyncio.get_running_loop()
        conn: Connection | None = None
        start, tick = loop.time() + self.rng.uniform(0, 1 / self.rate), 0
        try:
            while True:
                await asyncio.sleep(max(0.0, start + tick / self.rate - loop.time()))
                tick += 1
                at = self.clock.monotonic()
                if conn is not None:
                    outcome = await conn.ask()
                    if outcome == "ok":
                        self.record("keepalive", node, workload, vip, at, outcome, None)
                        continue
                    # closed under it: retried once on a new connection
                    self.cuts["keepalive", workload] += conn.close()
                    conn = None
                made, attempt = await connect(sockets, vip, port, self.clock)
                if not isinstance(made, Connection):
                    self.record("keepalive", node, workload, vip, at, made, attempt,
                                connected=False)
                    continue
                conn = made
                outcome = await conn.ask()
                self.record("keepalive", node, workload, vip, at, outcome, attempt)
                if outcome != "ok":
                    self.cuts["keepalive", workload] += conn.close()
                    conn = None
        finally:
            if conn is not None:
                self.cuts["keepalive", workload] += conn.close()

    async def stream(self, sockets: Sockets, node: str, workload: str, vip: str,
                     port: int) -> None:
        """One stream through ``vip`` at a time, followed until it ends (module docstring)."""
        await asyncio.sleep(self.rng.uniform(0, 1 / self.rate))
        while True:
            at = self.clock.monotonic()
            made, attempt = await connect(sockets, vip, port, self.clock)
            if not isinstance(made, Connection):
                self.record("stream", node, workload, vip, at, made, attempt, connected=False)
                await asyncio.sleep(1 / self.rate)
                continue
            try:
                outcome = await made.ask(b"STREAM\n")
                self.record("stream", node, workload, vip, at, outcome, attempt)
                if outcome == "ok":
                    await made.follow()
            finally:
                self.cuts["stream", workload] += made.close()
            if outcome != "ok":
                await asyncio.sleep(1 / self.rate)

    async def ingress(self, sockets: Sockets, workload: str, port: int, backends: Backends
                      ) -> None:
        turn = 0

        async def send() -> None:
            nonlocal turn
            current = backends.addresses
            if not current:
                return
            turn += 1
            await self._new_connection("ingress", "", workload, sockets,
                                       current[turn % len(current)], port)
        await self._paced(send)


class Backends:
    """An ingress controller's backend list for one service: the Ready addresses of its
    EndpointSlices, as they were ``delay`` ago (each change applied after a delay drawn from
    ``--ingress-delay``, in order)."""

    def __init__(self, server: Any, workload: str, delay: Delay, rng: random.Random) -> None:
        self.server = server
        self.workload = workload
        self.delay = delay
        self.rng = rng
        self.addresses: list[str] = []
        self.delays: list[float] = []  # every delay drawn (the lab's truth of this consumer)
        self._timers: set[asyncio.TimerHandle] = set()  # changes not applied yet

    @property
    def settled(self) -> bool:
        """Every change seen is applied."""
        return not self._timers

    def _ready(self) -> list[str]:
        found = []
        for (namespace, _), eps in self.server.store.items("endpointslices").items():
            labels = eps["metadata"].get("labels") or {}
            if namespace == NAMESPACE and labels.get("kubernetes.io/service-name") == \
                    self.workload:
                found += [e["addresses"][0] for e in eps.get("endpoints") or []
                          if e["conditions"].get("ready")]
        return sorted(found)

    async def run(self) -> None:
        store = self.server.store
        watcher = store.watch("endpointslices", namespace=NAMESPACE, predicate=lambda _: True,
                              since=None)
        loop = asyncio.get_running_loop()
        self.addresses = self._ready()
        applying: float = loop.time()
        timers = self._timers
        try:
            while True:
                await watcher.wait(3600)
                watcher.queue.clear()
                snapshot = self._ready()
                if snapshot == self.addresses:
                    continue
                delay = self.delay.sample(self.rng)
                self.delays.append(delay)
                # In order: a change never overtakes the one before it.
                applying = max(applying, loop.time() + delay)
                self._later(loop, applying, snapshot, timers)
        finally:
            store.unwatch(watcher)
            for timer in timers:
                timer.cancel()

    def _later(self, loop: asyncio.AbstractEventLoop, when: float, snapshot: list[str],
               timers: set[asyncio.TimerHandle]) -> None:
        def apply() -> None:
            timers.discard(handle)
            self.addresses = snapshot

        handle = loop.call_at(when, apply)
        timers.add(handle)
