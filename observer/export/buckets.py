"""Each histogram family's buckets: the defaults, and ``--histogram-buckets`` overriding them
family by family (docs/metrics.md, "Buckets").

A bucket is a series (per label set, per workload for the per-workload families), and PromQL's
``histogram_quantile`` interpolates inside the bucket a quantile falls in: buckets decide both
what a family costs and how precisely its quantiles come out. The defaults are dense where
preStop delays are decided (under 2 s, and a second apart up to 6 s per workload); a cluster
whose propagation takes minutes (cloud load balancers) or tens of milliseconds wants its own.
The recording rules, the dashboards and ``observer report`` read whatever ``le`` values there
are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Dense below 2 s, where preStop delays are decided; up to 300 s for pathological cases.
DURATION = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75,
            0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
            45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
SHUTDOWN = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
            120.0, 180.0, 300.0, 600.0)
SCAN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A preStop is sized in whole seconds, and each bucket is a series of every workload: a second
# apart up to 6 s (where kube-proxy and ingress controllers land; PromQL's interpolation puts a
# p99 near its bucket's top, so a coarser bucket would cost every rollout step seconds), then
# coarser up to the minutes cloud load balancers take.
WORKLOAD = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)

_P = "endpoint_propagation_"
DEFAULTS: dict[str, tuple[float, ...]] = {
    f"{_P}duration_seconds": DURATION,
    f"{_P}unsafe_window_seconds": DURATION,
    f"{_P}headroom_seconds": DURATION,
    f"{_P}last_connection_seconds": DURATION,
    f"{_P}pod_shutdown_seconds": SHUTDOWN,
    f"{_P}app_shutdown_seconds": SHUTDOWN,
    f"{_P}dataplane_scan_duration_seconds": SCAN,
    f"{_P}workload_last_connection_seconds": WORKLOAD,
    f"{_P}workload_app_shutdown_seconds": WORKLOAD,
}
MAX_BUCKETS = 60  # per family: each one a series per label set (and per workload)


class BucketsError(ValueError):
    """A ``--histogram-buckets`` value that cannot be used; the message says why."""


def parse(text: str) -> dict[str, tuple[float, ...]]:
    """``FAMILY=B1,B2,...[;FAMILY=...]`` (the families' full names), each checked: a known
    family, once; at most ``MAX_BUCKETS`` upper bounds, positive, finite, strictly increasing
    (``+Inf`` is always added)."""
    out: dict[str, tuple[float, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        family, sep, values = part.partition("=")
        family = family.strip()
        if not sep:
            raise BucketsError(f"{part!r}: expected FAMILY=B1,B2,...")
        if family not in DEFAULTS:
            raise BucketsError(f"{family!r} is not a histogram family of the agent; one of "
                               + ", ".join(sorted(DEFAULTS)))
        if family in out:
            raise BucketsError(f"{family}: given twice")
        out[family] = check(family, values.split(","))
    return out


def check(family: str, values: list[str] | tuple[float, ...]) -> tuple[float, ...]:
    try:
        bounds = tuple(float(v) for v in values)
    except ValueError:
        raise BucketsError(f"{family}: buckets are seconds, comma-separated "
                           f"({','.join(map(str, values))!r})") from None
    if not 1 <= len(bounds) <= MAX_BUCKETS:
        raise BucketsError(f"{family}: 1 to {MAX_BUCKETS} buckets (each is a series per label "
                           f"set), not {len(bounds)}")
    if not all(math.isfinite(b) and b > 0 for b in bounds):
        raise BucketsError(f"{family}: buckets are positive, finite seconds (+Inf is added)")
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        raise BucketsError(f"{family}: buckets must increase strictly")
    return bounds


def buckets(overrides: Mapping[str, tuple[float, ...]], family: str) -> tuple[float, ...]:
    """``family``'s buckets: overridden, or its default."""
    return overrides.get(family, DEFAULTS[family])
