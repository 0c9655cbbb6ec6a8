"""Loss and segmentation metrics, from smp's implementations."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

METRIC_FUNCTIONS = {
    "dice": smp.metrics.f1_score,
    "iou": smp.metrics.iou_score,
    "pixel_accuracy": smp.metrics.accuracy,
    "precision": smp.metrics.precision,
    "recall": smp.metrics.recall,
}


class DiceBCELoss(nn.Module):
    """Soft Dice loss plus binary cross-entropy, both on logits, as in the reference notebook."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce = smp.losses.SoftBCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, masks) + self.bce(logits, masks)


class SegmentationMetrics:
    """Accumulates per-image confusion counts over batches and reduces them at the end.

    Two reductions are reported: the mean over images (each image counts the same; the
    plain names) and pooled over all pixels (``*_pooled``; large subjects weigh more).
    An image with no foreground that is predicted empty scores 1.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._counts: list[tuple[torch.Tensor, ...]] = []

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        stats = smp.metrics.get_stats(
            logits.detach().float().sigmoid(), masks.long(), mode="binary", threshold=self.threshold
        )
        self._counts.append(tuple(count.cpu() for count in stats))

    def per_image(self, name: str = "dice") -> torch.Tensor:
        tp, fp, fn, tn = (torch.cat(column) for column in zip(*self._counts))
        return METRIC_FUNCTIONS[name](tp, fp, fn, tn, reduction="none", zero_division=1.0).flatten()

    def compute(self) -> dict[str, float]:
        if not self._counts:
            raise ValueError("no batches were scored")
        tp, fp, fn, tn = (torch.cat(column) for column in zip(*self._counts))
        results: dict[str, float] = {}
        for name, function in METRIC_FUNCTIONS.items():
            results[name] = float(function(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=1.0))
            results[f"{name}_pooled"] = float(function(tp, fp, fn, tn, reduction="micro", zero_division=1.0))
        return results
