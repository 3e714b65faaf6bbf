"""A dataplane held in memory: what the lab uses without root (no network namespaces), and
what tests use to play kube-proxy's part exactly when they choose."""

from __future__ import annotations

import asyncio

from observer.clock import Clock
from observer.dataplane.model import ChangeSink, DataplaneChange
from observer.values import EndpointKey, ProxyMode, ServicePort, Timestamp


class MemoryDataplane:
    def __init__(self, *, clock: Clock, mode: ProxyMode = "nftables") -> None:
        self.mode: ProxyMode = mode
        self.clock = clock
        self._selected: dict[EndpointKey, bool] = {}
        self._sink: ChangeSink | None = None
        self._service_ports: set[ServicePort] = set()

    def selected(self, key: EndpointKey) -> bool | None:
        if key in self._selected:
            return self._selected[key]
        if key.service_port in self._service_ports:
            return False
        return None

    def primed(self) -> bool:
        """Always: it is told every change, from the start."""
        return True

    def expect(self, key: EndpointKey, selected: bool) -> None:
        """Nothing to do: every change is noticed at once."""

    def set(self, key: EndpointKey, selected: bool) -> None:
        """Program (or unprogram) an endpoint; the change is noticed at once."""
        if self._selected.get(key) == selected:
            return
        self._selected[key] = selected
        self._service_ports.add(key.service_port)
        if self._sink is not None:
            at = Timestamp(self.clock.monotonic(), self.clock.wall(), "dataplane", 0.0)
            self._sink(DataplaneChange(key, selected, at))

    async def run(self, sink: ChangeSink) -> None:
        self._sink = sink
        try:
            await asyncio.Event().wait()
        finally:
            self._sink = None
