"""A dataplane held in memory: what the lab uses without root (no network namespaces), and
what tests use to play kube-proxy's part exactly when they choose."""

from __future__ import annotations

import asyncio

from observer.clock import Clock
from observer.dataplane.model import ChangeSink, DataplaneChange, ProxyMode
from observer.episodes.model import EndpointKey, Timestamp


class MemoryDataplane:
    def __init__(self, *, clock: Clock, mode: ProxyMode = "nftables") -> None:
        self.mode: ProxyMode = mode
        self.clock = clock
        self._selected: dict[EndpointKey, bool] = {}
        self._sink: ChangeSink | None = None

    def selected(self, key: EndpointKey) -> bool | None:
        return self._selected.get(key)

    def set(self, key: EndpointKey, selected: bool) -> None:
        """Program (or unprogram) an endpoint; the change is noticed at once."""
        if self._selected.get(key) == selected:
            return
        self._selected[key] = selected
        if self._sink is not None:
            at = Timestamp(self.clock.monotonic(), self.clock.wall(), "dataplane", 0.0)
            self._sink(DataplaneChange(key, selected, at))

    async def run(self, sink: ChangeSink) -> None:
        self._sink = sink
        try:
            await asyncio.Event().wait()
        finally:
            self._sink = None
