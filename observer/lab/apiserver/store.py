"""The versioned object store: one revision counter, a bounded history, and watchers.

It plays the part etcd and the watch cache play in the real server (see the "Resource versions"
and "Efficient detection of changes" sections of the Kubernetes API concepts page):

* every write gets the next value of one global revision, which becomes the object's
  ``metadata.resourceVersion``; writes that change nothing get no revision;
* the history keeps the last ``history_limit`` changes. A watch may resume from any revision at
  or after the oldest one kept; older ones are "too old" (HTTP 410 / reason Expired), as after an
  etcd compaction;
* a list may be served at an older revision (``resourceVersionMatch=Exact`` and ``continue``
  tokens) by rolling the current state back through the history;
* watchers receive changes synchronously at commit time, so an event can never be missed
  between "list" and "watch from the list's revision".

Stored objects are never mutated: each write stores a new dict.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class TooOld(Exception):
    """The requested revision is older than the oldest one the history keeps."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True)
class Change:
    revision: int
    type: EventType
    resource: str
    key: Key
    obj: Obj  # the object after the change; for DELETED its last state, at the delete revision
    prev: Obj | None


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta["name"])


@dataclass(eq=False)
class Watcher:
    """One open watch: filters changes for its client and queues them."""

    resource: str
    namespace: str | None
    predicate: Callable[[Obj], bool]
    capacity: int
    queue: deque[tuple[EventType, Obj]] = field(default_factory=deque)
    closed: str | None = None  # why the server closed it, once it has
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def visible(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace", "") != self.namespace:
            return False
        return self.predicate(obj)

    def offer(self, change: Change) -> None:
        """Translate a change into what this watcher sees, as the watch cache does: an object
        that starts matching the selector is ADDED, one that stops matching is DELETED."""
        if self.closed or change.resource != self.resource:
            return
        was = change.type != "ADDED" and self.visible(change.prev)
        now = change.type != "DELETED" and self.visible(change.obj)
        if was and now:
            self.push("MODIFIED", change.obj)
        elif now:
            self.push("ADDED", change.obj)
        elif was:
            self.push("DELETED", change.obj)

    def push(self, event_type: EventType, obj: Obj) -> None:
        if len(self.queue) >= self.capacity:
            # The real cacher terminates a watcher that does not keep up; the client re-watches.
            self.close("watcher could not keep up")
            return
        self.queue.append((event_type, obj))
        self._wakeup.set()

    def nudge(self) -> None:
        """Wake the stream's loop without queueing anything."""
        self._wakeup.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wakeup.set()

    async def wait(self, seconds: float) -> None:
        """Return when there is something queued, the watcher closed, or ``seconds`` passed."""
        if self.queue or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        self._wakeup.clear()


class Store:
    def __init__(self, *, history_limit: int = 10_000, watcher_capacity: int = 10_000) -> None:
        self.revision = 1
        self.oldest = 1  # the oldest revision a watch or list may still start from
        self._objects: dict[str, dict[Key, Obj]] = {}
        # Per resource, the current objects' "namespace/name" in order, kept as they come and
        # go: a list (and each page of one) costs no sort of every key.
        self._order: dict[str, list[str]] = {}
        self._history: deque[Change] = deque()
        self._history_limit = history_limit
        self._watcher_capacity = watcher_capacity
        self._watchers: set[Watcher] = set()

    # reads ---------------------------------------------------------------------------------

    def get(self, resource: str, key: Key) -> Obj | None:
        return self._objects.get(resource, {}).get(key)

    def last_change(self, resource: str) -> int | None:
        """The revision of the latest change to ``resource`` the history keeps."""
        return next((c.revision for c in reversed(self._history) if c.resource == resource),
                    None)

    def items(self, resource: str, revision: int | None = None) -> dict[Key, Obj]:
        """All objects of a resource, now or as they were at ``revision``."""
        current = self._objects.get(resource, {})
        if revision is None or revision >= self.revision:
            return dict(current)
        self._check_revision(revision)
        state = dict(current)
        for change in reversed(self._history):
            if change.revision <= revision:
                break
            if change.resource != resource:
                continue
            if change.prev is None:
                state.pop(change.key, None)
            else:
                state[change.key] = change.prev
        return state

    def ordered(self, resource: str, revision: int | None = None
                ) -> tuple[Mapping[Key, Obj], list[str]]:
        """The objects of a resource (now, or as they were at ``revision``) and their
        "namespace/name" in order — the order of lists and of continue tokens. Both are the
        store's own when current: to read, not to change, before the next write."""
        if revision is None or revision >= self.revision:
            return self._objects.get(resource, {}), self._order.get(resource, [])
        state = self.items(resource, revision)
        return state, sorted(f"{ns}/{name}" for ns, name in state)

    def _check_revision(self, revision: int) -> None:
        if revision < self.oldest:
            raise TooOld(revision, self.oldest)

    def changes_since(self, revision: int) -> Iterator[Change]:
        self._check_revision(revision)
        for change in self._history:
            if change.revision > revision:
                yield change

    # writes --------------------------------------------------------------------------------

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or replace; stamps the new revision into ``metadata.resourceVersion``."""
        key = key_of(obj)
        prev = self.get(resource, key)
        self.revision += 1
        stored = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.revision)}}
        self._objects.setdefault(resource, {})[key] = stored
        if prev is None:
            bisect.insort(self._order.setdefault(resource, []), f"{key[0]}/{key[1]}")
        self._record(Change(self.revision, "MODIFIED" if prev else "ADDED", resource, key,
                            stored, prev))
        return stored

    def delete(self, resource: str, key: Key) -> Obj:
        prev = self._objects[resource].pop(key)
        order = self._order[resource]
        del order[bisect.bisect_left(order, f"{key[0]}/{key[1]}")]
        self.revision += 1
        gone = {**prev, "metadata": {**prev["metadata"], "resourceVersion": str(self.revision)}}
        self._record(Change(self.revision, "DELETED", resource, key, gone, prev))
        return gone

    def _record(self, change: Change) -> None:
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self.oldest = self._history.popleft().revision
        for watcher in list(self._watchers):
            watcher.offer(change)

    def compact(self) -> None:
        """Forget all history, as an etcd compaction at the current revision would."""
        self._history.clear()
        self.oldest = self.revision

    # watches -------------------------------------------------------------------------------

    def watch(self, resource: str, *, namespace: str | None, predicate: Callable[[Obj], bool],
              since: int | None) -> Watcher:
        """Open a watcher. With ``since`` it first replays the changes after that revision;
        without, it starts with a synthetic ADDED for every current object."""
        watcher = Watcher(resource, namespace, predicate, self._watcher_capacity)
        if since is None:
            for obj in self._objects.get(resource, {}).values():
                if watcher.visible(obj):
                    watcher.push("ADDED", obj)
        else:
            for change in self.changes_since(since):
                watcher.offer(change)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def watchers(self, resource: str | None = None) -> list[Watcher]:
        return [w for w in self._watchers if resource is None or w.resource == resource]
