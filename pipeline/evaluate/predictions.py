"""Score a checkpoint on a held-out split in one forward pass, batch by batch (``predict_batches``):
each batch is counted and dropped, at the network's input size for every threshold asked for up
front (``SplitScores``) and at each photo's own size (``PhotoSizeScores``), so memory does not
grow with the split's images, only its per-image counts do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
from ..core.resizing import padded_shape
from ..core.splits import SplitInfo, load_split, read_photo_size_masks
from ..model.checkpoint import checkpoint_classes, checkpoint_loss, load_model
from ..model.inputs import SegmentationDataset, eval_transform
from ..model.losses import build_loss
from ..model.metrics import SegmentationMetrics
from ..model.outputs import class_probabilities, predict_logits, predicted_classes
from ..serve.segmenter import Segmenter, at_photo_size, class_map

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
    ``PhotoSizeScores.per_image`` gave for ``split``, named as interval_names gives them."""
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


@dataclass(frozen=True)
class Batch:
    """One batch of a split as the network saw it; scorers count it, then it is dropped."""

    start: int  # the position of its first image in the split
    photos: np.ndarray  # (B, S, S, 3) uint8, as the split holds them
    masks: torch.Tensor  # (B, 1, S, S) float class ids (0/1 for binary)
    probabilities: torch.Tensor  # class_probabilities of the network's logits (B, 1 or C, S, S)
    loss: float  # the training loss on this batch (its Dice term is taken per batch, as in training), padding included
    # Each image's (height, width) at the top left of its S x S array, the rest padding that no
    # score counts (SplitInfo.content_shapes).
    content: list[tuple[int, int]]


@torch.no_grad()
def predict_batches(
    model: nn.Module, loss_fn: nn.Module, split_dir: Path, split: str, device: torch.device, tta: bool
) -> Iterator[Batch]:
    images, masks = load_split(split_dir, split)
    loader = DataLoader(SegmentationDataset(images, masks, eval_transform()), batch_size=EVAL_BATCH_SIZE)
    info = SplitInfo.read(split_dir)
    content = info.content_shapes(split)
    model.eval()
    start = 0
    for batch, truth in tqdm(loader, desc=f"evaluate {split}", unit="batch", leave=False):
        end = start + len(batch)
        logits = predict_logits(model, batch.to(device), tta).float().cpu()
        photos = np.ascontiguousarray(images[start:end])
        probabilities = class_probabilities(logits, info.classes)
        yield Batch(start, photos, truth, probabilities, loss_fn(logits, truth).item(), content[start:end])
        start = end


class SplitScores:
    """A split's loss and its counts at the network's input size at each of ``thresholds``
    (binary cut-offs; None for a multi-class model's top class), added up batch by batch."""

    def __init__(self, split: str, ids: list[str], classes: ClassSpec, thresholds: tuple[float | None, ...]):
        self.split, self.ids, self.classes = split, ids, classes
        self.counted = {threshold: SegmentationMetrics(threshold, classes) for threshold in thresholds}
        self._loss_total, self._images = 0.0, 0

    def update(self, batch: Batch) -> None:
        self._loss_total += batch.loss * len(batch.masks)
        self._images += len(batch.masks)
        for threshold, metrics in self.counted.items():
            metrics.update_classes(predicted_classes(batch.probabilities, threshold), batch.masks[:, 0], batch.content)

    @property
    def loss(self) -> float:
        """The mean training loss per image (the loss the checkpoint was trained with), padding included."""
        return self._loss_total / self._images

    def metrics(self, threshold: float | None) -> SegmentationMetrics:
        """The counts at ``threshold``, one of those given when scoring began."""
        return self.counted[threshold]

    def scores(self, threshold: float | None) -> dict[str, float]:
        """Loss and metrics, named ``<split>_<metric>`` as in metrics/evaluate.json and MLflow."""
        return {f"{self.split}_loss": self.loss, **named_scores(self.split, self.metrics(threshold))}

    def scores_at_input_size(self, threshold: float | None) -> dict[str, float]:
        """The metrics, named ``<split>_<metric>_at_input_size``: what evaluate reports beside the
        photo-size ones."""
        return named_scores(self.split, self.metrics(threshold), paths.AT_INPUT_SIZE)

    def per_image(self, threshold: float | None) -> list[dict[str, object]]:
        return per_image_rows(self.ids, self.metrics(threshold))


class PhotoSizeScores:
    """A split's predictions as ``predict`` delivers them: the network's probabilities resized to
    each photo's own size and cut there, scored against the repaired mask at that size (the split
    stage's photo-size masks, read one at a time as the batches come).

    Where an image's S x S array is what predict feeds the network (``squash``; a square photo
    under ``longest``), its probabilities are the batch's; otherwise ``segmenter`` (the same
    network) runs its content padded only to multiples of 32, as predict does."""

    def __init__(self, network: SplitScores, split_dir: Path, segmenter: Segmenter):
        self.network = network  # the same split at the network's input size, for the loss
        self.segmenter = segmenter
        self.metrics = SegmentationMetrics(segmenter.threshold, network.classes)
        self._masks = read_photo_size_masks(split_dir, network.split, len(network.ids))

    def update(self, batch: Batch) -> list[float]:
        """Count the batch's images; their Dice at their photos' sizes, in order."""
        dice = []
        for probabilities in self._content_probabilities(batch):
            mask = next(self._masks)
            predicted = class_map(at_photo_size(probabilities, mask.shape), self.metrics.threshold)
            self.metrics.update_classes(torch.from_numpy(predicted)[None], torch.from_numpy(mask)[None])
            dice.extend(self.metrics.latest_per_image("dice").tolist())
        return dice

    def _content_probabilities(self, batch: Batch) -> list[np.ndarray]:
        """Each image's C x h x w probabilities over its content at the network's scale, as
        predict computes them for its photo."""
        stored = tuple(batch.probabilities.shape[-2:])
        probabilities: dict[int, np.ndarray] = {}
        rerun: dict[int, np.ndarray] = {}
        for index, (height, width) in enumerate(batch.content):
            # The whole array is the content, or the content padded exactly as predict pads it.
            if stored in ((height, width), padded_shape((height, width))):
                probabilities[index] = batch.probabilities[index, :, :height, :width].numpy()
            else:
                rerun[index] = batch.photos[index, :height, :width]
        probabilities.update(zip(rerun, self.segmenter.content_probabilities(list(rerun.values())), strict=True))
        return [probabilities[index] for index in range(len(batch.content))]

    def scores(self) -> dict[str, float]:
        """The loss (the network's, at its input size) and the metrics at each photo's size, named
        ``<split>_<metric>``: the headline scores."""
        split = self.network.split
        return {f"{split}_loss": self.network.loss, **named_scores(split, self.metrics)}

    def per_image(self) -> list[dict[str, object]]:
        return per_image_rows(self.network.ids, self.metrics)


def score_split(
    model: nn.Module,
    loss_fn: nn.Module,
    split_dir: Path,
    split: str,
    device: torch.device,
    tta: bool,
    thresholds: tuple[float | None, ...],
) -> SplitScores:
    """``split`` scored at the network's input size at each of ``thresholds``."""
    info = SplitInfo.read(split_dir)
    scores = SplitScores(split, info.ids[split], info.classes, thresholds)
    for batch in predict_batches(model, loss_fn, split_dir, split, device, tta):
        scores.update(batch)
    return scores


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
    return score_split(model, loss_fn, split_dir, split, device, tta, (threshold,)).scores(threshold)
