"""Score a checkpoint on a held-out split: one forward pass, then metrics at any threshold, at the
network's input size (``SplitPredictions``) or at each photo's own size (``PhotoSizePredictions``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core import paths
from ..core.classes import ClassSpec
from ..core.device import resolve_device
from ..core.intervals import Interval, bootstrap_mean
from ..core.splits import SplitInfo, load_split, read_photo_size_masks
from ..model.checkpoint import checkpoint_classes, checkpoint_loss, load_model
from ..model.inputs import SegmentationDataset, eval_transform
from ..model.losses import build_loss
from ..model.metrics import SegmentationMetrics
from ..model.outputs import class_probabilities, predict_logits, predicted_classes
from ..serve.segmenter import at_photo_size, class_map

# Scores do not depend on it, except the loss, whose Dice term is taken per batch as in training.
EVAL_BATCH_SIZE = 8
# The scores reported with their bootstrap interval over the images (docs/metrics.md,
# "Intervals"): each image's score is a column of the per-image file, and their mean the headline.
HEADLINE_METRICS = ("dice", "iou", "precision", "recall")
PER_IMAGE_FIELDS = ("id", *HEADLINE_METRICS, "foreground_fraction")


def interval_names(split: str, name: str) -> tuple[str, str]:
    """The keys of ``<split>_<name>``'s interval bounds in metrics/evaluate.json and MLflow."""
    return f"{split}_{name}_ci_low", f"{split}_{name}_ci_high"


def headline_interval(metrics: dict[str, float], name: str, images: int) -> Interval:
    """``test_<name>`` of ``images`` test images and its interval, as metrics/evaluate.json holds them."""
    low, high = (metrics[key] for key in interval_names("test", name))
    return Interval(metrics[f"test_{name}"], low, high, images)


def interval_bounds(split: str, per_image: list[dict[str, object]]) -> dict[str, float]:
    """The bounds of each HEADLINE_METRICS score's bootstrap interval over the rows
    ``SplitPredictions.per_image`` gave for ``split``, named as interval_names gives them."""
    bounds: dict[str, float] = {}
    for name in HEADLINE_METRICS:
        interval = bootstrap_mean([float(row[name]) for row in per_image])
        bounds.update(zip(interval_names(split, name), (interval.low, interval.high), strict=True))
    return bounds


def named_scores(split: str, metrics: SegmentationMetrics, suffix: str = "") -> dict[str, float]:
    """The metrics named ``<split>_<metric><suffix>`` as in metrics/evaluate.json and MLflow."""
    return {f"{split}_{name}{suffix}": value for name, value in metrics.compute().items()}


def per_image_rows(ids: list[str], metrics: SegmentationMetrics) -> list[dict[str, object]]:
    """metrics/test_per_image.csv's rows: each image's id, its HEADLINE_METRICS scores and the share
    of its pixels that are truly foreground."""
    scores = {name: metrics.per_image(name).tolist() for name in HEADLINE_METRICS}
    foreground = metrics.foreground_fraction().tolist()
    return [
        {"id": id_, **{name: values[index] for name, values in scores.items()}, "foreground_fraction": fraction}
        for index, (id_, fraction) in enumerate(zip(ids, foreground, strict=True))
    ]


@dataclass
class SplitPredictions:
    """The network's logits for every image of a split, kept so any threshold can be scored."""

    split: str
    ids: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, for the gallery
    masks: torch.Tensor  # (N, 1, S, S) float class ids (0/1 for binary)
    logits: torch.Tensor  # (N, 1, S, S) for binary, (N, C, S, S) for C classes
    loss: float  # mean training loss per image (the loss the checkpoint was trained with)
    classes: ClassSpec

    # ``threshold`` cuts binary probabilities; multi-class models take the top class and it is None.
    def metrics(self, threshold: float | None) -> SegmentationMetrics:
        metrics = SegmentationMetrics(threshold, self.classes)
        metrics.update(self.logits, self.masks)
        return metrics

    def scores(self, threshold: float | None) -> dict[str, float]:
        """Loss and metrics, named ``<split>_<metric>`` as in metrics/evaluate.json and MLflow."""
        return {f"{self.split}_loss": self.loss, **named_scores(self.split, self.metrics(threshold))}

    def scores_at_input_size(self, threshold: float | None) -> dict[str, float]:
        """The metrics, named ``<split>_<metric>_at_input_size``: what evaluate reports beside the
        photo-size ones."""
        return named_scores(self.split, self.metrics(threshold), paths.AT_INPUT_SIZE)

    def per_image(self, threshold: float | None) -> list[dict[str, object]]:
        return per_image_rows(self.ids, self.metrics(threshold))

    def predicted_masks(self, threshold: float | None) -> np.ndarray:
        """(N, S, S) class ids, as SegmentationMetrics derives them."""
        return predicted_classes(class_probabilities(self.logits, self.classes), threshold).numpy()


@dataclass(frozen=True)
class PhotoSizePredictions:
    """A split's predictions as ``predict`` delivers them: the network's probabilities resized to
    each photo's own size and cut there, scored against the repaired mask at that size (the split
    stage's photo-size masks). One image at a time, so memory does not grow with the photos."""

    predictions: SplitPredictions
    split_dir: Path
    # Scoring reads every mask and resizes every prediction: done once per threshold, not once
    # for the scores, again for the per-image rows and again for the confusion matrix.
    _scored: dict[float | None, SegmentationMetrics] = field(default_factory=dict, init=False, repr=False)

    def metrics(self, threshold: float | None) -> SegmentationMetrics:
        """The counts at ``threshold`` (shared between calls: read them, do not update them)."""
        if threshold not in self._scored:
            self._scored[threshold] = self._score(threshold)
        return self._scored[threshold]

    def _score(self, threshold: float | None) -> SegmentationMetrics:
        predictions = self.predictions
        metrics = SegmentationMetrics(threshold, predictions.classes)
        masks = read_photo_size_masks(self.split_dir, predictions.split, len(predictions.ids))
        for logits, mask in zip(predictions.logits, masks, strict=True):
            probabilities = class_probabilities(logits[None], predictions.classes)[0].numpy()
            predicted = class_map(at_photo_size(probabilities, mask.shape), threshold)
            metrics.update_classes(torch.from_numpy(predicted)[None], torch.from_numpy(mask)[None])
        return metrics

    def scores(self, threshold: float | None) -> dict[str, float]:
        """The loss (the network's, at its input size) and the metrics at each photo's size, named
        ``<split>_<metric>``: the headline scores."""
        split = self.predictions.split
        return {f"{split}_loss": self.predictions.loss, **named_scores(split, self.metrics(threshold))}

    def per_image(self, threshold: float | None) -> list[dict[str, object]]:
        return per_image_rows(self.predictions.ids, self.metrics(threshold))


@torch.no_grad()
def predict_split(
    model: nn.Module, loss_fn: nn.Module, split_dir: Path, split: str, device: torch.device, tta: bool
) -> SplitPredictions:
    images, masks = load_split(split_dir, split)
    loader = DataLoader(SegmentationDataset(images, masks, eval_transform()), batch_size=EVAL_BATCH_SIZE)
    info = SplitInfo.read(split_dir)
    classes = info.classes
    model.eval()
    logits, truths, total = [], [], 0.0
    for batch, truth in tqdm(loader, desc=f"evaluate {split}", unit="batch", leave=False):
        output = predict_logits(model, batch.to(device), tta).float().cpu()
        total += loss_fn(output, truth).item() * len(batch)
        logits.append(output)
        truths.append(truth)
    return SplitPredictions(
        split, info.ids[split], np.asarray(images), torch.cat(truths), torch.cat(logits), total / len(images), classes
    )


def load_for_evaluation(checkpoint: Path) -> tuple[nn.Module, nn.Module, torch.device]:
    """The network, the loss it was trained with (named in the checkpoint, not read from train.*), the device."""
    device = resolve_device("auto")
    model, payload = load_model(checkpoint)
    return model.to(device), build_loss(checkpoint_loss(checkpoint, payload), checkpoint_classes(payload)), device


def evaluate_checkpoint(
    checkpoint: Path, split_dir: Path, split: str, threshold: float | None, tta: bool = False
) -> dict[str, float]:
    """Loss and metrics of ``checkpoint`` on ``split`` at ``threshold``, prefixed with the split's name."""
    model, loss_fn, device = load_for_evaluation(checkpoint)
    return predict_split(model, loss_fn, split_dir, split, device, tta).scores(threshold)
