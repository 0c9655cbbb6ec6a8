"""Choose the probability cut-off on the validation split: sweep it, keep the best mean Dice."""

from __future__ import annotations

from collections.abc import Mapping

from ..model.metrics import SegmentationMetrics

# 0.05, 0.10, ..., 0.95: finer steps move Dice by less than its spread across images.
SWEEP_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))
SWEEP_FIELDS = ("threshold", "dice", "iou", "precision", "recall")
# metrics/threshold_sweep.csv: the sweep, and `chosen`, 1 on the row of the cut-off used and 0 on the
# others (drawn beside the scores, it rises to 1 at that threshold).
SWEEP_FILE_FIELDS = (*SWEEP_FIELDS, "chosen")


def sweep(counted: Mapping[float, SegmentationMetrics]) -> list[dict[str, float]]:
    """Mean per-image Dice, IoU, precision and recall of a binary model at each threshold it was
    counted at, in their order (the reduction of the headline test metrics)."""
    rows = []
    for threshold, metrics in counted.items():
        scores = metrics.compute()
        rows.append({"threshold": threshold, **{name: scores[name] for name in SWEEP_FIELDS[1:]}})
    return rows


def sweep_thresholds(fixed: float | None = None) -> tuple[float, ...]:
    """``SWEEP_THRESHOLDS``, and a fixed cut-off between them, so the curve has a row for it."""
    return tuple(sorted({*SWEEP_THRESHOLDS, fixed})) if fixed is not None else SWEEP_THRESHOLDS


def mark_chosen(rows: list[dict[str, float]], threshold: float) -> list[dict[str, float]]:
    """The sweep with ``chosen``: 1 on the row of ``threshold``, 0 on every other."""
    if not any(row["threshold"] == threshold for row in rows):
        raise ValueError(f"threshold {threshold} is not one of the sweep's")
    return [{**row, "chosen": int(row["threshold"] == threshold)} for row in rows]


def best_threshold(rows: list[dict[str, float]]) -> float:
    """The threshold with the highest Dice; on a plateau the one nearest 0.5, the untuned default,
    so a flat curve does not push the cut-off to an extreme for nothing."""
    return max(rows, key=lambda row: (row["dice"], -abs(row["threshold"] - 0.5)))["threshold"]
