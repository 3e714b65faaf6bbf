"""Fault injection: make the server misbehave the ways real API servers and networks do.

Request faults (answered before the request reaches the registry) and stream faults (applied to
watch streams that are open now). Every fault is explicit: nothing fails at random unless a test
asks, so the tests that use them stay deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RequestFault:
    method: str | None  # None: any method
    path: re.Pattern[str] | None  # None: any path
    remaining: int  # requests still to affect; -1: until cleared
    code: int = 0  # 0: do not fail, only delay
    retry_after: int | None = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining != 0
                and (self.method is None or self.method == method)
                and (self.path is None or bool(self.path.search(path))))


@dataclass(eq=False)
class StreamControl:
    """What a test has asked of one open watch stream."""

    resource: str
    wake: Callable[[], None]  # makes the stream's loop look at its controls now
    stalled: bool = False
    drop: bool = False
    expire: bool = False
    inject: list[bytes] = field(default_factory=list)


class Faults:
    def __init__(self) -> None:
        self.requests: list[RequestFault] = []
        self.streams: set[StreamControl] = set()
        self.stall_new_streams = False

    # request faults --------------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, code: int = 429, retry_after: int | None = 1,
                  method: str | None = None, path: str | None = None) -> None:
        """Answer the next ``count`` matching requests with ``code`` (and ``Retry-After``)."""
        self.requests.append(RequestFault(method, re.compile(path) if path else None, count,
                                          code=code, retry_after=retry_after))

    def slow(self, seconds: float, *, count: int = -1, method: str | None = None,
             path: str | None = None) -> None:
        """Delay matching requests by ``seconds`` before answering them."""
        self.requests.append(RequestFault(method, re.compile(path) if path else None, count,
                                          delay=seconds))

    def take(self, method: str, path: str) -> list[RequestFault]:
        """The faults that apply to this request, each consumed once."""
        hits = [f for f in self.requests if f.matches(method, path)]
        for fault in hits:
            if fault.remaining > 0:
                fault.remaining -= 1
        self.requests = [f for f in self.requests if f.remaining != 0]
        return hits

    # stream faults ---------------------------------------------------------------------------

    def _open(self, resource: str | None) -> list[StreamControl]:
        return [s for s in self.streams if resource is None or s.resource == resource]

    def drop_streams(self, resource: str | None = None) -> int:
        """Cut open watch connections without a clean end (as a proxy or node failure would)."""
        streams = self._open(resource)
        for stream in streams:
            stream.drop = True
            stream.wake()
        return len(streams)

    def stall_streams(self, resource: str | None = None, *, new_too: bool = False) -> int:
        """Keep open watch connections up but send nothing more on them, bookmarks included."""
        streams = self._open(resource)
        for stream in streams:
            stream.stalled = True
            stream.wake()
        self.stall_new_streams = new_too
        return len(streams)

    def unstall(self) -> None:
        self.stall_new_streams = False
        for stream in self.streams:
            stream.stalled = False
            stream.wake()

    def expire_streams(self, resource: str | None = None) -> int:
        """Send ``ERROR`` 410 Expired on open watches and end them (the store is compacted by
        the server so resuming from the old revision is refused too)."""
        streams = self._open(resource)
        for stream in streams:
            stream.expire = True
            stream.wake()
        return len(streams)

    def inject_line(self, line: bytes, resource: str | None = None) -> int:
        """Write ``line`` as-is into open watch streams (malformed JSON, truncated events)."""
        streams = self._open(resource)
        for stream in streams:
            stream.inject.append(line)
            stream.wake()
        return len(streams)

    def clear(self) -> None:
        self.requests.clear()
        self.unstall()
