"""Classic Prometheus histograms as the report reads them: cumulative bucket counts, merged
by adding, and quantiles computed exactly as PromQL's ``histogram_quantile`` does
(``promql/quantile.go`` ``bucketQuantile``: linear interpolation inside the bucket holding
the rank; the lowest bucket starts at 0; a rank in the ``+Inf`` bucket gives the highest
finite bound). Using PromQL's own estimator is what lets ``--agent`` (merged here) and
``--prometheus`` (merged by Prometheus) agree."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Histogram:
    """Cumulative counts by upper bound (``le``), ``+Inf`` included once anything is."""

    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, le: float, count: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + count

    def merge(self, other: Histogram) -> None:
        for le, count in other.buckets.items():
            self.add(le, count)

    @property
    def count(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    def quantile(self, q: float) -> float:
        """PromQL's estimate; NaN without observations or without a ``+Inf`` bucket."""
        bounds = sorted(self.buckets)
        if len(bounds) < 2 or bounds[-1] != math.inf:
            return math.nan
        counts = [self.buckets[b] for b in bounds]
        for i in range(1, len(counts)):  # ensureMonotonic: scrape skew can break it
            counts[i] = max(counts[i], counts[i - 1])
        total = counts[-1]
        if total == 0:
            return math.nan
        rank = q * total
        b = bisect.bisect_left(counts, rank, hi=len(counts) - 1)
        if b == len(counts) - 1:
            return bounds[-2]
        if b == 0 and bounds[0] <= 0:
            return bounds[0]
        start = bounds[b - 1] if b > 0 else 0.0
        below = counts[b - 1] if b > 0 else 0.0
        in_bucket = counts[b] - below
        return start + (bounds[b] - start) * (rank - below) / in_bucket

    def bucket_of(self, value: float) -> int:
        """Index of the bucket ``value`` falls in (for "within one bucket" comparisons)."""
        return bisect.bisect_left(sorted(self.buckets), value)


def merged(histograms: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for histogram in histograms:
        out.merge(histogram)
    return out

