"""The evaluate stage's work: score the checkpoint on validation and test, choose the binary
cut-off, export the verified ONNX file and write every report. Nothing here touches MLflow:
the stage logs what this returns, and the register stage registers what it wrote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import paths
from ..core.classes import ClassSpec
from ..core.config import Config
from ..core.files import sha256_file, write_csv, write_json, write_png, write_text
from ..core.splits import SplitInfo
from ..serve.settings import InferenceSettings
from ..serve.torch_backend import TorchSegmenter
from .card import render_card
from .confusion import CONFUSION_FIELDS, confusion_rows, render_confusion
from .export import ExportCheck, verified_export
from .gallery import CASES_EACH, GalleryCases, render_gallery
from .predictions import (
    HEADLINE_METRICS,
    PER_IMAGE_FIELDS,
    PhotoSizeScores,
    SplitScores,
    headline_interval,
    interval_bounds,
    interval_names,
    load_for_evaluation,
    predict_batches,
    score_split,
)
from .thresholds import SWEEP_FILE_FIELDS, best_threshold, mark_chosen, sweep, sweep_thresholds

# The files evaluate writes that the training run keeps as artifacts.
REPORTS = (
    paths.THRESHOLD_SWEEP,
    paths.TEST_PER_IMAGE,
    paths.VAL_PER_IMAGE,
    paths.CONFUSION_TABLE,
    paths.CONFUSION_IMAGE,
    paths.GALLERY,
    paths.MODEL_CARD,
)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # as written to metrics/evaluate.json
    details: dict[str, float]  # as written to metrics/evaluate_details.json
    export: ExportCheck

    def run_metrics(self) -> dict[str, float]:
        """What the evaluation run records: every score, and the export check."""
        return {**self.metrics, **self.details, **self.export.run_metrics()}

    def summary(self) -> str:
        images = self.export.images  # the test split's, all of which the export check ran on
        described = {
            f"test_{name}": headline_interval(self.metrics, name, images).describe(4) for name in HEADLINE_METRICS
        }
        # The rest of the headline: the loss, the threshold and the champion decision's score.
        rest = {key: f"{value:.4f}" for key, value in self.metrics.items() if not key.startswith(tuple(described))}
        scores = "  ".join(f"{key} {text}" for key, text in {**described, **rest}.items())
        return (
            f"evaluate: {scores}\nevaluate: exported {paths.ONNX_MODEL}; onnxruntime vs PyTorch fp32 on test: "
            f"{self.export.summary()}"
        )


def headline_and_details(scores: dict[str, float], bounds: dict[str, float]) -> tuple[dict[str, Any], dict[str, float]]:
    """Test ``scores`` split in two: the headline (metrics/evaluate.json: each HEADLINE_METRICS
    score followed by its interval ``bounds``, then the loss) and the details
    (metrics/evaluate_details.json: pixel accuracy, the pooled variants, per-class scores)."""
    details = dict(scores)
    headline: dict[str, Any] = {}
    for name in HEADLINE_METRICS:
        headline[f"test_{name}"] = details.pop(f"test_{name}")
        headline.update({key: bounds[key] for key in interval_names("test", name)})
    headline["test_loss"] = details.pop("test_loss")
    return headline, details


def counted_thresholds(cfg: Config, classes: ClassSpec) -> tuple[float | None, ...]:
    """The cut-offs the validation split is counted at: the sweep's, with a fixed
    evaluate.threshold among them (the curve is drawn for it too, with a row for it: it shows
    what that choice costs on val). Multi-class models take the top class: None alone."""
    if not classes.binary:
        return (None,)
    return sweep_thresholds(None if cfg.evaluate.threshold == "auto" else cfg.evaluate.threshold)


def choose_threshold(cfg: Config, val: SplitScores) -> tuple[float | None, list[dict[str, float]], str]:
    """The binary cut-off, the validation sweep behind it (its row marked ``chosen``), and where
    it came from. Multi-class models take the top class: no threshold, an empty sweep, and
    evaluate.threshold does not apply. ``val`` was counted at ``counted_thresholds``."""
    if not val.classes.binary:
        return None, [], "each pixel takes its most probable class"
    curve = sweep(val.counted)
    if cfg.evaluate.threshold == "auto":
        threshold, source = best_threshold(curve), "maximises mean Dice on the validation split"
    else:
        threshold, source = cfg.evaluate.threshold, "fixed by evaluate.threshold"
    return threshold, mark_chosen(curve, threshold), source


def deployed_validation(val: SplitScores, threshold: float | None) -> tuple[float, list[dict[str, object]]]:
    """``val_dice_deployed`` and the per-image Dice it is the mean of (metrics/val_per_image.csv's
    rows), at ``threshold`` and with the TTA ``val`` was predicted with."""
    metrics = val.metrics(threshold)
    rows = [
        dict(zip(paths.VAL_PER_IMAGE_FIELDS, (id_, dice), strict=True))
        for id_, dice in zip(val.ids, metrics.per_image("dice").tolist(), strict=True)
    ]
    return metrics.compute()["dice"], rows


@dataclass
class TestScores:
    """Everything evaluate reports of the test split, counted in its one pass."""

    at_input_size: SplitScores
    at_photo_size: PhotoSizeScores
    gallery: GalleryCases
    export: ExportCheck


def score_test(
    model: nn.Module,
    loss_fn: nn.Module,
    device: torch.device,
    settings: InferenceSettings,
    split_info: SplitInfo,
) -> TestScores:
    """The test split scored at ``settings.threshold`` with its TTA, at the network's input size
    and at each photo's, the gallery's candidates kept, and the ONNX export verified against it."""
    ids = split_info.ids["test"]
    test = SplitScores("test", ids, split_info.classes, (settings.threshold,))
    segmenter = TorchSegmenter(
        image_size=split_info.image_size,
        resize=split_info.resize,
        threshold=settings.threshold,
        tta=settings.tta,
        classes=split_info.classes,
        model=model,
        device=device,
    )
    at_photo_size = PhotoSizeScores(test, paths.SPLIT_DIR, segmenter)
    gallery = GalleryCases(len(ids))
    # A model whose export disagrees with PyTorch writes nothing, so nothing is registered.
    export_to = (paths.ONNX_MODEL, settings, split_info.classes, split_info.image_size, split_info.resize)
    with verified_export(model, *export_to) as export:
        for batch in predict_batches(model, loss_fn, paths.SPLIT_DIR, "test", device, settings.tta):
            test.update(batch)
            gallery.offer(batch, at_photo_size.update(batch), settings.threshold)
            export.update(batch)
    return TestScores(test, at_photo_size, gallery, export.check())


def evaluate_checkpoint(
    cfg: Config, run_id: str, *, data_source: str, encoder_weights_sha256: str | None
) -> Evaluation:
    """Score models/best.pt, export it, write the reports and the model card.

    ``data_source`` and ``encoder_weights_sha256`` are what the training run recorded of its
    data and initial weights, for the card."""
    split_info = SplitInfo.read(paths.SPLIT_DIR)
    model, loss_fn, device = load_for_evaluation(paths.BEST_CHECKPOINT)
    classes = split_info.classes
    val = score_split(
        model, loss_fn, paths.SPLIT_DIR, "val", device, cfg.evaluate.tta, counted_thresholds(cfg, classes)
    )
    threshold, curve, threshold_source = choose_threshold(cfg, val)
    settings = InferenceSettings(threshold, cfg.evaluate.tta, sha256_file(paths.BEST_CHECKPOINT))
    test = score_test(model, loss_fn, device, settings, split_info)
    # The headline scores are those of the masks predict delivers, at each photo's own size.
    per_image = test.at_photo_size.per_image()
    scores = {**test.at_photo_size.scores(), **test.at_input_size.scores_at_input_size(threshold)}
    metrics, details = headline_and_details(scores, interval_bounds("test", per_image))
    if classes.binary:
        metrics["threshold"] = threshold
    metrics[paths.VAL_DICE_DEPLOYED], val_per_image = deployed_validation(val, threshold)

    write_csv(paths.THRESHOLD_SWEEP, curve, SWEEP_FILE_FIELDS)
    write_csv(paths.TEST_PER_IMAGE, per_image, PER_IMAGE_FIELDS)
    write_csv(paths.VAL_PER_IMAGE, val_per_image, paths.VAL_PER_IMAGE_FIELDS)
    confusion = test.at_photo_size.metrics.confusion
    write_csv(paths.CONFUSION_TABLE, confusion_rows(confusion, classes), CONFUSION_FIELDS)
    write_png(paths.CONFUSION_IMAGE, render_confusion(confusion, classes))
    dice = [row["dice"] for row in per_image]
    write_png(paths.GALLERY, render_gallery(test.gallery.kept, split_info.ids["test"], dice, classes))
    card = render_card(
        run_id=run_id,
        data_source=data_source,
        encoder_weights_sha256=encoder_weights_sha256,
        params=cfg.flat(),
        split_info=split_info,
        metrics={**metrics, **details},
        val_dice=metrics[paths.VAL_DICE_DEPLOYED],
        threshold_source=threshold_source,
        worst=sorted(per_image, key=lambda row: row["dice"])[:CASES_EACH],
        classes=classes,
    )
    write_text(paths.MODEL_CARD, card)
    write_json(paths.EVALUATE_METRICS, metrics)
    write_json(paths.EVALUATE_DETAILS, details)
    write_json(paths.EXPORT_CHECK, test.export.to_dict())
    return Evaluation(metrics, details, test.export)
