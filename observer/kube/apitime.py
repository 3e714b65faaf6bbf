"""``metav1.Time`` on the wire: RFC 3339 in UTC with whole-second precision (and
``metav1.MicroTime``, which only Events carry).

Every timestamp the API carries in ``metav1.Time`` (creationTimestamp, deletionTimestamp,
condition transition times, container start/finish times) is truncated to the second when
serialised (``k8s.io/apimachinery/pkg/apis/meta/v1/time.go`` marshals with ``time.RFC3339``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def format_time(epoch_seconds: float) -> str:
    """Seconds since the epoch -> ``2026-11-22T03:50:39Z``, floored to the second."""
    return datetime.fromtimestamp(math.floor(epoch_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(epoch_seconds: float) -> str:
    """``metav1.MicroTime`` (an Event's ``eventTime``, its series' ``lastObservedTime``):
    microseconds, ``2026-11-22T03:50:39.123456Z`` (``micro_time.go``, ``RFC3339Micro``)."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """RFC 3339 (as the API writes it) -> seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
