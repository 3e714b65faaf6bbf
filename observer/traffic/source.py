"""The traffic source: the kernel's conntrack NEW events for the endpoints in episodes, read in
the node's network namespace (or ``--netns``), and the count of the connections an endpoint's
pod cut when it stopped (still open, or closed by the pod since its end began).

Only the followed endpoints' events reach this process: the socket's kernel filter
(``conntrack.endpoint_filter``) is rebuilt whenever the set changes — once per turn of the
event loop however many episodes started in it. Until the first set is installed the filter
rejects everything, so a busy node's unrelated connections cost nothing here.

Clocks: a connection's time is when the kernel sent its event, when the kernel stamps events
(``net.netfilter.nf_conntrack_timestamp=1``, Linux >= 6.14: the reading is back-dated by the
time the event waited, measured on the wall clock both share); otherwise when this process read
it. Either way a monotonic reading of this process, as every other timestamp.

Failures never stop the agent: the settings that leave nothing to read (conntrack not loaded,
events turned off by ``net.netfilter.nf_conntrack_events=0``, no ``CAP_NET_ADMIN``) are
``TrafficError`` at open; lost events (the socket's queue overflowed: ``ENOBUFS``), unreadable
messages and failed counts are counted and logged, and the followed episodes' records are
marked incomplete.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from observer.clock import Clock
from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.netlink import in_namespace, netlink_socket
from observer.dataplane.nlwire import DATAGRAM, messages
from observer.episodes.observers import Address
from observer.tasks import cancel_and_wait
from observer.traffic import conntrack
from observer.values import Connection, Timestamp

log = structlog.get_logger("observer.traffic")

# traffic_errors_total{reason}: a closed set.
ERROR_REASONS = ("conntrack_missing", "events_disabled", "permission", "events_lost", "garbage",
                 "failed")
PROC = Path("/proc/sys/net/netfilter")
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 * 1024 * 1024
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_ERROR_CODE = struct.Struct("=i")  # struct nlmsgerr's error: a negative errno, host order
# A kernel event stamp further from the read than this is a stepped wall clock, not a delay.
_MAX_BACKDATE = 5.0
_RETRY_SECONDS = 1.0
_BATCH = 256  # datagrams read before the event loop gets a turn


class Connections(Protocol):
    """Where the source delivers (the agent's ``TrafficBook``)."""

    def endpoints(self) -> list[tuple[str, int | None]]:
        """What to let through: (address, port), port None for any."""

    def connection(self, connection: Connection) -> None: ...

    def lost(self) -> None:
        """Events were lost: the counts of what is followed are low bounds from now."""

    def cut_counted(self, address: Address, count: int) -> None:
        """The count ``count_open`` asked for."""


class TrafficErrors(Protocol):
    def traffic_error(self, reason: str) -> None: ...


class TrafficError(Exception):
    """Connections cannot be followed on this node (``reason`` from ``ERROR_REASONS``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Settings:
    """What the namespace's conntrack sysctls say (read where the sockets are made)."""

    def __init__(self, proc: Path) -> None:
        try:
            self.events = (proc / "nf_conntrack_events").read_text().strip()
        except FileNotFoundError:
            raise TrafficError("conntrack_missing", f"{proc}/nf_conntrack_events does not "
                               "exist: connection tracking (nf_conntrack) is not loaded") from None
        try:
            self.timestamps = (proc / "nf_conntrack_timestamp").read_text().strip() == "1"
        except FileNotFoundError:
            self.timestamps = False
        # How long a TCP flow stays in each closing state (state number -> seconds): tells
        # how long ago a dumped flow was closed. Missing or unreadable: not counted as cut.
        self.closing_timeouts: dict[int, int] = {}
        for name, state in conntrack.TCP_CLOSING_STATES.items():
            try:
                self.closing_timeouts[state] = int(
                    (proc / f"nf_conntrack_tcp_timeout_{name}").read_text())
            except (OSError, ValueError):
                continue


async def open_conntrack(netns: str | None, *, clock: Clock, errors: TrafficErrors,
                         proc: Path = PROC, receive_buffer: int = RECEIVE_BUFFER
                         ) -> ConntrackSource:
    """Subscribed to the NEW events of the node's namespace (or ``netns``), filtering out
    everything until told what to follow. ``TrafficError`` when that cannot be done; counted
    in ``errors`` as well. ``receive_buffer``: bytes the kernel queues for us before it drops
    events (``ENOBUFS``)."""
    try:
        return await _open(netns, clock=clock, errors=errors, proc=proc,
                           receive_buffer=receive_buffer)
    except TrafficError as error:
        errors.traffic_error(error.reason)
        raise


async def _open(netns: str | None, *, clock: Clock, errors: TrafficErrors,
                proc: Path, receive_buffer: int) -> ConntrackSource:
    try:
        settings = Settings(proc) if netns is None else await in_namespace(
            netns, lambda: Settings(proc))
    except CommandError as error:
        raise TrafficError("failed", str(error)) from None
    if settings.events == "0":
        raise TrafficError("events_disabled", "net.netfilter.nf_conntrack_events is 0: the "
                           "kernel sends no conntrack events (1 or 2 turns them on)")
    sockets: list[socket.socket] = []
    try:
        for _ in range(2):  # one for the events, one for the counts of open flows
            sockets.append(await netlink_socket(netns, conntrack.NETLINK_NETFILTER))
        events, dumps = sockets
        try:
            events.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
        except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
            events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        conntrack.attach(events, conntrack.endpoint_filter(()))  # before joining: nothing yet
        events.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, conntrack.GROUP_NEW)
    except (OSError, CommandError) as error:
        for sock in sockets:
            sock.close()
        if isinstance(error, OSError) and error.errno in (errno.EPERM, errno.EACCES):
            raise TrafficError("permission", f"conntrack events: {error} (needs "
                               "CAP_NET_ADMIN)") from None
        raise TrafficError("failed", f"conntrack events: {error}") from None
    log.info("following connections to terminating endpoints", netns=netns,
             kernel_event_timestamps=settings.timestamps)
    return ConntrackSource(events, dumps, clock=clock, errors=errors,
                           closing_timeouts=settings.closing_timeouts)


class ConntrackSource:
    """Made by ``open_conntrack``; ``run`` follows what its ``Connections`` ask for, and is
    their ``TrafficListener`` (``observer.episodes.traffic``)."""

    def __init__(self, events: socket.socket, dumps: socket.socket, *, clock: Clock,
                 errors: TrafficErrors, closing_timeouts: dict[int, int]) -> None:
        self.events = events
        self.dumps = dumps
        self.clock = clock
        self.errors = errors
        self.coarse = False  # too many endpoints for an exact kernel filter
        # What the kernel lets through: (address, port), port None for any.
        self.filtered: frozenset[tuple[str, int | None]] = frozenset()
        self.datagrams = 0  # read off the socket: what the kernel filter let through
        self._buffer = bytearray(DATAGRAM)
        self._endpoints: Callable[[], list[tuple[str, int | None]]] = list
        self._refilter_due = False
        self._counts: asyncio.Queue[tuple[Address, float]] = asyncio.Queue()
        self._closing_timeouts = closing_timeouts
        self._seq = 0
        self._book: Connections | None = None
        self._retry: asyncio.Future[None] | None = None

    def close(self) -> None:
        self.events.close()
        self.dumps.close()

    # TrafficListener ---------------------------------------------------------------------------

    def endpoints_changed(self) -> None:
        if not self._refilter_due:
            self._refilter_due = True
            asyncio.get_running_loop().call_soon(self._refilter)

    def count_open(self, address: Address, since: float) -> None:
        self._counts.put_nowait((address, since))

    def _refilter(self) -> None:
        self._refilter_due = False
        endpoints = self._endpoints()
        program = conntrack.endpoint_filter(endpoints)
        if (program is None) != self.coarse:
            self.coarse = program is None
            log.info("conntrack kernel filter " + ("lets every new connection through: too "
                     "many endpoints for an exact one" if self.coarse else "exact again"),
                     endpoints=len(endpoints))
        try:
            conntrack.attach(self.events, program)
        except OSError as error:
            self._error("failed", f"installing the conntrack filter: {error}")
        else:
            self.filtered = frozenset(endpoints)

    # running ----------------------------------------------------------------------------------

    async def run(self, book: Connections) -> None:
        """Deliver new connections to ``book`` (and the counts it asks for) until cancelled."""
        self._endpoints = book.endpoints
        self._refilter()
        counting = asyncio.create_task(self._count_loop(book), name="conntrack counts")
        try:
            await self._receive(book)
        finally:
            await cancel_and_wait(counting)

    async def _receive(self, book: Connections) -> None:
        """Read in the event loop's reader callback (``_readable``): each wake-up drains what
        is queued, without a task switch per wake-up — on these machines a bare asyncio
        wake-up through an Event and a task cost twice the callback's CPU
        (docs/benchmarks.md). Retries after a failed read wait ``_RETRY_SECONDS``."""
        loop = asyncio.get_running_loop()
        fd = self.events.fileno()
        self._book = book
        self._retry = loop.create_future()
        try:
            while True:
                loop.add_reader(fd, self._readable)
                await self._retry  # set only by a read that failed for good
                loop.remove_reader(fd)
                self._retry = loop.create_future()
                await asyncio.sleep(_RETRY_SECONDS)
        finally:
            loop.remove_reader(fd)

    def _readable(self) -> None:
        """Up to ``_BATCH`` datagrams; more wait for the next turn of the loop (the socket
        stays readable), so a backlog does not hold the rest of the agent."""
        book = self._book
        assert book is not None
        for _ in range(_BATCH):
            try:
                size = self.events.recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError as error:
                book.lost()
                if error.errno == errno.ENOBUFS:
                    self._error("events_lost", "conntrack events lost: the kernel's queue for "
                                "this socket overflowed; counts of connections are low bounds")
                    continue
                self._error("failed", f"reading conntrack events: {error}; trying again in "
                            f"{_RETRY_SECONDS:g} s")
                if self._retry is not None and not self._retry.done():
                    self._retry.set_result(None)
                return
            self._deliver(book, size)

    def _deliver(self, book: Connections, size: int) -> None:
        mono, wall = self.clock.monotonic(), self.clock.wall()
        self.datagrams += 1
        try:
            for flow in conntrack.new_flows(bytes(self._buffer[:size])):
                at = Timestamp(mono, wall, "conntrack", 0.0)
                if flow.sent_ns is not None:
                    delay = wall - flow.sent_ns / 1e9
                    if 0.0 < delay <= _MAX_BACKDATE:
                        at = Timestamp(mono - delay, wall - delay, "conntrack", 0.0)
                book.connection(Connection(flow.ip, flow.port, flow.protocol, flow.local, at))
        except DataplaneParseError as error:
            self._error("garbage", f"conntrack event unreadable: {error}")
            book.lost()

    async def _count_loop(self, book: Connections) -> None:
        while True:
            address, since = await self._counts.get()
            try:
                count = await self._cut_flows(*address, within=self.clock.monotonic() - since)
            except (OSError, DataplaneParseError) as error:
                self._error("failed", f"counting the connections open to a stopped pod: "
                            f"{error}")
                continue
            book.cut_counted(address, count)

    async def _cut_flows(self, ip: str, port: int, protocol: str, *, within: float) -> int:
        """The TCP flows to ``ip``:``port`` still open now, or closed by the pod's side in the
        last ``within`` seconds (``conntrack.cut``; a dump filtered in the kernel)."""
        loop = asyncio.get_running_loop()
        self._seq += 1
        await loop.sock_sendall(self.dumps, conntrack.open_flows_request(ip, port, protocol,
                                                                          self._seq))
        count = 0
        while True:
            size = await loop.sock_recv_into(self.dumps, self._buffer)
            data = bytes(self._buffer[:size])
            for kind, seq, start, end in messages(data):
                if seq != self._seq:
                    continue  # the rest of an earlier, abandoned dump
                if kind == _NLMSG_ERROR:
                    code = _ERROR_CODE.unpack_from(data, start)[0]
                    if code < 0:
                        raise OSError(-code, errno.errorcode.get(-code, str(-code)))
                    return count
                if kind == _NLMSG_DONE:
                    return count
                if kind != conntrack.MSG_NEW:
                    continue
                flow = conntrack.dumped_tcp(data, start, end)
                if flow is not None and conntrack.cut(flow, within=within,
                                                      timeouts=self._closing_timeouts):
                    count += 1

    def _error(self, reason: str, message: str) -> None:
        self.errors.traffic_error(reason)
        log.warning(message, reason=reason)
