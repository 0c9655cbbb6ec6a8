"""Bootstrap confidence intervals of a mean over images (docs/metrics.md, "Intervals").

One routine for every interval the pipeline reports: a score's interval over the test images,
and the paired interval of a challenger's per-image advantage over the champion on the same
validation images. Percentile bootstrap with a fixed seed, so identical scores give identical
bytes in every report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
# Resamples are drawn in blocks of at most this many indices, so memory stays bounded however
# many images a split holds.
BLOCK_INDICES = 1 << 22


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and its bootstrap interval at ``confidence``."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def excludes_zero_from_above(self) -> bool:
        """True when the whole interval lies above zero: a real improvement, not noise."""
        return self.low > 0

    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def describe(self, digits: int = 3) -> str:
        """``0.825 [0.780, 0.866]``: the mean and its interval."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def describe_signed(self, digits: int = 3) -> str:
        """``+0.004 [-0.010, +0.018]``: a difference and its interval."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """The mean of ``values`` with its percentile bootstrap interval: ``resamples`` draws of
    ``len(values)`` values with replacement, the interval between the draws' means at the
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    if not np.isfinite(data).all():
        raise ValueError("a bootstrap interval needs finite values (a score is NaN or infinite)")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, BLOCK_INDICES // data.size)
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        means[start : start + count] = data[rng.integers(0, data.size, size=(count, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(data.mean())
    # Rounding inside the quantiles can put a bound a hair past the mean of constant values.
    return Interval(mean, min(float(low), mean), max(float(high), mean), int(data.size), confidence)
