"""The list+watch loop, in three layers (after kopf's ``_cogs/clients/watching.py``):

1. ``ResourceWatch.run``: forever, with backoff — list, then watch; back to listing after a 410
   (only a new list can make up for a gap in the history);
2. ``_watch_from``: one watch request after another, resuming from the last resourceVersion
   seen (events and bookmarks both advance it), without re-listing — also after a dropped
   connection or an HTTP error, with backoff, as client-go's reflector does;
3. ``_stream``: one HTTP response, read line by line; an inactivity timeout, reset by every
   line (bookmarks included), notices a stream that went silent while its connection stayed up;
   a line that is not a watch event ends it (resumed from the last good version), because a
   corrupted line may have swallowed a real event. An event whose *object* the agent cannot
   use is counted and skipped instead: the server would send the same object again.

A resumed stream first replays what happened while no stream was open (the catch-up): those
events were received late, at some moment after the last line of the stream before. Each event
is handed over with how long before its receipt it may have happened (its precision): 0 on a
live stream, the time since the last line before the gap for a catch-up event. Which events are
catch-up is told by the resourceVersion: before resuming, a list of one item gives the current
one, and events up to it happened during the gap (versions of one resource compare as integers:
KEP-5504, GA in Kubernetes 1.35, and etcd revisions before that; "Resource versions" in
api-concepts). One small request per reconnect buys stages that are never timed from a late
receipt as if it were live.

Requests go through kubernetes_asyncio's generated API functions (its configuration, auth and
TLS) with ``_preload_content=False``: the agent parses the JSON itself into plain dicts, which
is several times faster than building the generated model objects and keeps unknown fields.
Protocol: https://kubernetes.io/docs/reference/using-api/api-concepts/ ("Efficient detection
of changes", "Watch bookmarks", 410 Gone).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import structlog

from observer.clock import Clock
from observer.config import WatchSettings

log = structlog.get_logger("observer.watch")

# restart reasons: a closed set, they are metric label values.
RESTART_REASONS = ("expired", "stalled", "closed", "connection", "http_error", "malformed")
MAX_LINE_BYTES = 64 * 1024 * 1024  # one event; the API server's own limit is far lower


class Expired(Exception):
    """The resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


class Corrupted(Exception):
    """A line that is not a watch event: the stream cannot be trusted past it (a truncated
    event can swallow the next one), so it is resumed from the last good resourceVersion,
    and the API server sends again whatever came after."""


class Stalled(Exception):
    """Nothing arrived on the stream for the inactivity timeout."""


class HttpError(Exception):
    def __init__(self, status: int, retry_after: float | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


_RETRYABLE = (HttpError, Corrupted, aiohttp.ClientError, OSError, TimeoutError, ValueError)


class Response(Protocol):
    """The part of aiohttp's ClientResponse the loop uses."""

    status: int
    headers: Any
    content: aiohttp.StreamReader

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...


# A kubernetes_asyncio list function; called with _preload_content=False it returns the raw
# aiohttp response (its annotations name the model type it returns otherwise).
Requester = Callable[..., Awaitable[Any]]


class WatchSink(Protocol):
    """Receives what the watch reads. A list arrives page by page (so the raw JSON of a large
    cluster never has to be in memory at once) and is complete only at ``listed``."""

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        """One page of a list; ``first`` starts a new list (dropping any unfinished one)."""

    def listed(self, *, relist: bool) -> None:
        """The pages since the first one are a complete, consistent list; ``relist`` after a
        gap in the watch."""

    def event(self, event_type: str, obj: dict[str, Any], *, precision: float) -> None:
        """One ADDED, MODIFIED or DELETED event, received now; ``precision``: how many seconds
        before now it may have happened (0 live, the gap's length on catch-up)."""


class WatchMetrics(Protocol):
    def event(self, resource: str) -> None: ...

    def restart(self, resource: str, reason: str) -> None: ...

    def malformed(self, resource: str) -> None: ...

    def invalid_input(self, resource: str, reason: str) -> None: ...


def _version_number(version: object) -> int | None:
    """A resourceVersion as the integer it is on Kubernetes (KEP-5504); None if it is not."""
    if isinstance(version, str) and version.isdigit() and not version.startswith("0"):
        return int(version)
    return None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ResourceWatch:
    def __init__(self, *, resource: str, request: Requester, sink: WatchSink,
                 metrics: WatchMetrics, clock: Clock, settings: WatchSettings,
                 field_selector: str = "", label_selector: str = "",
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.resource = resource
        self.request = request
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        self.selectors: dict[str, str] = {}
        if field_selector:
            self.selectors["field_selector"] = field_selector
        if label_selector:
            self.selectors["label_selector"] = label_selector
        self.sleep = sleep
        self.jitter = jitter
        self.synced = asyncio.Event()
        self.last_event_wall: float | None = None
        self._listed_once = False
        self._version = ""
        # Monotonic time of the last sign that the stream delivered: a line, or a list's end.
        self._alive = clock.monotonic()
        # On a resumed stream: (the gap's start, the last version of the catch-up; None if the
        # server's versions are not integers: then every event of the stream is catch-up).
        self._catch_up: tuple[float, int | None] | None = None

    @property
    def version(self) -> str:
        """The last resourceVersion this watch has caught up with."""
        return self._version

    # layer 1 ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """List and watch until cancelled."""
        if self.settings.start_jitter > 0:
            await self.sleep(self.settings.start_jitter * self.jitter())
        delay = self.settings.backoff_initial
        while True:
            try:
                await self._list()
            except Expired:  # a continue token outlived the history: list again at once
                self._restart("expired")
                continue
            except _RETRYABLE as error:
                await self._backoff(error, delay)
                delay = min(delay * 2, self.settings.backoff_max)
                continue
            delay = self.settings.backoff_initial
            try:
                await self._watch_from()
            except Expired:
                self._restart("expired")  # re-list at once: the only way forward

    async def _backoff(self, error: Exception, delay: float) -> None:
        """Count the restart and wait: the backoff with jitter (which spreads a fleet of
        agents' reconnects after an API server outage), never less than a Retry-After."""
        if isinstance(error, HttpError):
            self._restart("http_error", status=error.status, error=str(error))
            floor = error.retry_after or 0.0
        elif isinstance(error, Corrupted):
            self._restart("malformed", error=str(error))
            floor = 0.0
        else:
            self._restart("connection", error=repr(error))
            floor = 0.0
        await self.sleep(max(floor, delay * (0.5 + self.jitter() / 2)))

    def _restart(self, reason: str, **details: Any) -> None:
        self.metrics.restart(self.resource, reason)
        log.warning("watch restarting", resource=self.resource, reason=reason, **details)

    async def _get(self, **params: Any) -> Response:
        response: Response = await self.request(**self.selectors, **params,
                                                _preload_content=False)
        if response.status == 410:
            response.release()
            raise Expired()
        if response.status >= 400:
            body = (await response.read())[:500].decode(errors="replace")
            response.release()
            raise HttpError(response.status, _retry_after(response.headers), body)
        return response

    async def _get_json(self, **params: Any) -> Any:
        """A list request's whole response, parsed."""
        response = await self._get(**params)
        try:
            return json.loads(await response.read())
        finally:
            response.release()

    async def _list(self) -> None:
        token = ""
        first = True
        while True:
            params: dict[str, Any] = {"_request_timeout": self.settings.request_timeout}
            if self.settings.page_size > 0:
                params["limit"] = self.settings.page_size
            if token:
                params["_continue"] = token
            body = await self._get_json(**params)
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ValueError(f"{self.resource} list response is not a list")
            meta = body.get("metadata") or {}
            self._hand(self.sink.list_page, body["items"], first=first)
            del body
            first = False
            token = meta.get("continue") or ""
            if not token:
                version = str(meta.get("resourceVersion", ""))
                break
        self._version = version
        self._alive, self._catch_up = self.clock.monotonic(), None
        self._hand(self.sink.listed, relist=self._listed_once)
        self._listed_once = True
        self.synced.set()
        self.last_event_wall = self.clock.wall()

    def _hand(self, call: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Hand a list's page, or its end, to the sink. A failure there is the sink's, not the
        connection's: listing again would fail the same way, for ever (a ``ValueError`` once
        did, taken for a malformed response). Counted and logged; the list goes on with what
        the sink made of the page before it failed."""
        try:
            call(*args, **kwargs)
        except Exception as error:
            self.metrics.invalid_input(self.resource, "unhandled")
            log.exception("list could not be handled: went on", resource=self.resource,
                          step=call.__name__, error=repr(error))

    async def _mark_catch_up(self) -> None:
        """Before resuming after a gap: where the events that happened during it end (the
        current resourceVersion, from a list of one item)."""
        gap_start = self._alive
        body = await self._get_json(limit=1, _request_timeout=self.settings.request_timeout)
        meta = body.get("metadata") if isinstance(body, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        self._catch_up = (gap_start, _version_number(version))

    # layer 2 ---------------------------------------------------------------------------------

    async def _watch_from(self) -> None:
        """Watch from the listed version for ever; only ``Expired`` gets out."""
        delay = self.settings.backoff_initial
        resumed = False  # the first stream follows the list: nothing to catch up
        while True:
            try:
                if resumed:
                    await self._mark_catch_up()
                resumed = True
                await self._stream()
                self._restart("closed")  # the server ended the request (timeoutSeconds)
                delay = self.settings.backoff_initial
            except Stalled:
                self._restart("stalled")
            except _RETRYABLE as error:
                await self._backoff(error, delay)
                delay = min(delay * 2, self.settings.backoff_max)

    # layer 3 ---------------------------------------------------------------------------------

    async def _stream(self) -> None:
        """Read one watch response to its end; ``self._version`` follows every event."""
        response = await self._get(
            watch=True, resource_version=self._version, allow_watch_bookmarks=True,
            timeout_seconds=self.settings.server_timeout,
            _request_timeout=aiohttp.ClientTimeout(connect=self.settings.request_timeout,
                                                   sock_connect=self.settings.request_timeout))
        try:
            buffer = b""
            while True:
                try:
                    async with asyncio.timeout(self.settings.inactivity_timeout):
                        chunk = await response.content.readany()
                except TimeoutError:
                    raise Stalled() from None
                if not chunk:
                    if buffer.strip():
                        self._malformed(buffer, "truncated event at end of stream")
                    return
                buffer += chunk
                if len(buffer) > MAX_LINE_BYTES:
                    raise ValueError("watch event larger than the line limit")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._handle(line)
        finally:
            response.release()

    def _handle(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            event_type, obj = event["type"], event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a JSON object")
        except (ValueError, KeyError, TypeError) as error:
            self._malformed(line, str(error))
            raise Corrupted(str(error)) from None
        self.last_event_wall = self.clock.wall()
        if event_type == "ERROR":
            if obj.get("code") == 410:
                raise Expired()
            raise HttpError(int(obj.get("code") or 500), None, str(obj.get("message")))
        if event_type not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            self._malformed(line, f"unknown event type {event_type!r}")
            raise Corrupted(f"unknown event type {event_type!r}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        precision = self._precision(version)
        if event_type != "BOOKMARK":
            self.metrics.event(self.resource)
            self._deliver(event_type, obj, precision)
        if version:
            self._version = str(version)
        self._alive = self.clock.monotonic()

    def _deliver(self, event_type: str, obj: dict[str, Any], precision: float) -> None:
        """Hand one event to the sink. A failure there is not the stream's: resuming would
        replay the same event to fail again, for ever. It is counted, logged with the object,
        and the stream goes on."""
        try:
            self.sink.event(event_type, obj, precision=precision)
        except Exception as error:
            self.metrics.invalid_input(self.resource, "unhandled")
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            log.exception("watch event could not be handled: skipped", resource=self.resource,
                          event_type=event_type, object=f"{meta.get('namespace')}/"
                                                        f"{meta.get('name')}",
                          resource_version=meta.get("resourceVersion"), error=repr(error))

    def _precision(self, version: object) -> float:
        """How long before now an event of this version may have happened: the gap's length
        for one of the catch-up, else 0. Events come in version order, so the first one past
        the catch-up (a bookmark too) ends it."""
        if self._catch_up is None:
            return 0.0
        gap_start, last = self._catch_up
        number = _version_number(version)
        if last is not None and number is not None and number > last:
            self._catch_up = None
            return 0.0
        return self.clock.monotonic() - gap_start

    def _malformed(self, line: bytes, why: str) -> None:
        self.metrics.malformed(self.resource)
        log.warning("malformed watch line: resuming from the last good version",
                    resource=self.resource, error=why,
                    line=line[:200].decode(errors="replace"))
