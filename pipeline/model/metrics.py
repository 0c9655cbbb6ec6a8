"""Segmentation metrics, from smp's implementations.

Binary models (two classes) have one logit channel, and a pixel is foreground when its
probability reaches the threshold. Multi-class models have a channel per class, and a pixel
takes the class with the highest logit. Either way the metrics compare class maps, so both
reduce the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch

from ..core.classes import ClassSpec
from .outputs import class_probabilities, predicted_classes

METRIC_FUNCTIONS = {
    "dice": smp.metrics.f1_score,
    "iou": smp.metrics.iou_score,
    "pixel_accuracy": smp.metrics.accuracy,
    "precision": smp.metrics.precision,
    "recall": smp.metrics.recall,
}
# Reported for every class of a multi-class model, as <metric>_<class>.
PER_CLASS_METRICS = ("dice", "iou")


class SegmentationMetrics:
    """Accumulates per-image, per-class confusion counts over batches and reduces them at the end.

    Two reductions are reported: the mean over images (each image counts the same; the
    plain names) and pooled over all pixels (``*_pooled``; large subjects weigh more).
    An image where a class is absent and not predicted scores 1 for that class. The plain
    names are the mean over the foreground classes (for binary: the foreground's score);
    multi-class models also get ``dice_<class>`` and ``iou_<class>`` for every class.
    Binary predictions are cut at ``threshold``; multi-class ones take the top class.
    """

    def __init__(self, threshold: float | None, classes: ClassSpec):
        self.threshold, self.classes = threshold, classes
        self._counts: list[tuple[torch.Tensor, ...]] = []
        self.confusion = torch.zeros(classes.count, classes.count, dtype=torch.long)  # [truth, prediction] pixels

    def update(
        self, logits: torch.Tensor, masks: torch.Tensor, content: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Count a batch of logits against N x 1 x H x W masks (``update_classes``)."""
        predicted = predicted_classes(class_probabilities(logits.detach().float(), self.classes), self.threshold)
        self.update_classes(predicted, masks[:, 0], content)

    def update_classes(
        self, predicted: torch.Tensor, truth: torch.Tensor, content: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Count N x H x W predicted class ids against the true ones; with ``content``, only each
        image's (height, width) at its top left: the rest is padding (``data.resize: longest``),
        which no score counts. Each update may have an image size of its own: the counts are
        kept per image."""
        predicted, truth = predicted.long().cpu(), truth.long().cpu()
        full = tuple(truth.shape[-2:])
        if content is None or all(tuple(shape) == full for shape in content):
            self._counts.append(self._count(predicted, truth))
            return
        # One image at a time: the counts of each image's content alone, in order, as one update.
        counts = [
            self._count(image[None, :height, :width], true[None, :height, :width])
            for image, true, (height, width) in zip(predicted, truth, content, strict=True)
        ]
        self._counts.append(tuple(torch.cat(column) for column in zip(*counts, strict=True)))

    def _count(self, predicted: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The per-image, per-class (tp, fp, fn, tn) of N x H x W class ids; the pixels go into ``confusion``."""
        count = self.classes.count
        self.confusion += torch.bincount((truth * count + predicted).flatten(), minlength=count**2).reshape(
            count, count
        )
        return tuple(smp.metrics.get_stats(predicted, truth, mode="multiclass", num_classes=count))

    def _stats(self) -> tuple[torch.Tensor, ...]:
        if not self._counts:
            raise ValueError("no batches were scored")
        return tuple(torch.cat(column) for column in zip(*self._counts, strict=True))  # each N x classes

    def per_image(self, name: str = "dice") -> torch.Tensor:
        """Each image's score: the mean over its foreground classes."""
        return self._per_image_and_class(name)[:, 1:].mean(dim=1)

    def latest_per_image(self, name: str = "dice") -> torch.Tensor:
        """``per_image`` of the images the latest update counted, without reducing all the others."""
        if not self._counts:
            raise ValueError("no batches were scored")
        return _scores(name, self._counts[-1])[:, 1:].mean(dim=1)

    def foreground_fraction(self) -> torch.Tensor:
        """Each image's share of pixels whose true class is not the background."""
        tp, fp, fn, tn = self._stats()
        return (tp + fn)[:, 1:].sum(dim=1) / (tp + fp + fn + tn)[:, 0]

    def _per_image_and_class(self, name: str) -> torch.Tensor:
        return _scores(name, self._stats())

    def compute(self) -> dict[str, float]:
        tp, fp, fn, tn = self._stats()
        results: dict[str, float] = {}
        for name, function in METRIC_FUNCTIONS.items():
            # The mean over images of each image's mean over its foreground classes (per_image).
            results[name] = float(self.per_image(name).mean())
            pooled = function(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), reduction="none", zero_division=1.0)
            results[f"{name}_pooled"] = float(pooled[1:].mean())
            if not self.classes.binary and name in PER_CLASS_METRICS:
                per_class = self._per_image_and_class(name).mean(dim=0)
                results.update(
                    {
                        f"{name}_{class_name}": float(value)
                        for class_name, value in zip(self.classes.names, per_class, strict=True)
                    }
                )
        return results


def _scores(name: str, stats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Metric ``name`` of each image and class from their confusion counts."""
    return METRIC_FUNCTIONS[name](*stats, reduction="none", zero_division=1.0)
