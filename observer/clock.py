"""The clocks this project reads, behind one small interface so tests can drive time.

Two clocks, never mixed:

* ``monotonic()`` — seconds from an arbitrary origin, never jumps (``time.monotonic``,
  CLOCK_MONOTONIC on Linux, nanosecond resolution). Every *duration* is a difference of two
  readings of this clock taken in the same process.
* ``wall()`` — seconds since the Unix epoch (``time.time``, CLOCK_REALTIME). It can step
  (NTP, an operator), so it is used only for timestamps that leave the process: object
  timestamps the lab API server writes, ``*_timestamp_seconds`` metrics, log lines.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never steps; only differences are meaningful."""

    def wall(self) -> float:
        """Seconds since the Unix epoch; may step, so never used for durations."""


class SystemClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
