"""Driving a polling source on a manual clock: its ``sleep`` advances the clock and, once the
test has seen enough, parks the source until the test cancels it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from observer.dataplane.model import ChangeSink, DataplaneChange
from tests.conftest import ManualClock


class Parking:
    """``sleep`` for the source: records each wait, advances ``clock`` by it, and parks for
    good once ``parked()`` is true (called after each advance)."""

    def __init__(self, clock: ManualClock, parked: Callable[[], bool]) -> None:
        self.clock = clock
        self.parked = parked
        self.sleeps: list[float] = []
        self._done = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        if self.parked():
            self._done.set()
            await asyncio.Event().wait()  # parked until cancelled

    async def changes(self, run: Callable[[ChangeSink], Coroutine[Any, Any, None]],
                      into: list[DataplaneChange] | None = None) -> list[DataplaneChange]:
        """What ``run`` reported until it was parked (appended to ``into`` as it comes);
        then it is cancelled, and must end as cancelled."""
        changes = [] if into is None else into
        task = asyncio.create_task(run(changes.append))
        await self._done.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return changes
