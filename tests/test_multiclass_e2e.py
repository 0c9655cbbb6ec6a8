"""End to end, multi-class: `dvc repro` trains a 3-class model on the synthetic source, then
evaluate, the registry, predict and the served model all speak class maps."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import onnx
import pytest

from pipeline.core.files import read_json
from pipeline.core.splits import SplitInfo, read_photo_size_masks
from tests.helpers.project import STAGES, copy_project, load_params, repro, run, tiny_params, write_params

pytestmark = pytest.mark.e2e
CLASSES = ["background", "ellipse", "rectangle"]
EPOCHS = 25


@pytest.fixture(scope="module")
def project(module_folder):
    root = copy_project(module_folder("multiclass"))
    params = tiny_params(load_params(root / "params.yaml"), "synthetic:160")
    params["data"].update(manifest=None, classes=CLASSES)
    params["split"].update(test_fraction=0.2)
    params["train"].update(epochs=EPOCHS, batch_size=8)
    # 96 px, not tiny_params' 64: at 64 a small ellipse is a few pixels wide, too few to tell it
    # from a rectangle reliably in 25 epochs, and which class wins would depend on library versions.
    params["data"].update(image_size=96)
    params["mlflow"].update(registered_model="shapes-unet")
    write_params(root / "params.yaml", params)
    assert repro(root) == set(STAGES)
    yield root


def confusion_of(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    count = len(CLASSES)
    return np.bincount((truth.astype(np.int64) * count + predicted).ravel(), minlength=count**2).reshape(count, count)


def pooled_iou(confusion: np.ndarray) -> np.ndarray:
    """Per class, over all test pixels: true positives over (truth + prediction - true positives)."""
    hits = np.diag(confusion).astype(float)
    return hits / (confusion.sum(axis=0) + confusion.sum(axis=1) - hits)


def chance_iou(truth: np.ndarray) -> np.ndarray:
    """Per class, the best IoU a prediction blind to the image gets on these masks: any one
    class everywhere, or pixels drawn at random with the classes' frequencies."""
    frequencies = np.bincount(truth.ravel(), minlength=len(CLASSES)) / truth.size
    blind = [np.full_like(truth, class_id) for class_id in range(len(CLASSES))]
    blind.append(np.random.default_rng(0).choice(len(CLASSES), size=truth.shape, p=frequencies).astype(truth.dtype))
    return np.max([np.nan_to_num(pooled_iou(confusion_of(guess, truth))) for guess in blind], axis=0)


def photo_size_truth(project: Path) -> np.ndarray:
    """Every test pixel's true class, at its photo's own size, where the confusion matrix counts it."""
    split = project / "data" / "split"
    masks = read_photo_size_masks(split, "test", SplitInfo.read(split).counts["test"])
    return np.concatenate([mask.ravel() for mask in masks])


def read_confusion(project: Path) -> np.ndarray:
    rows = list(csv.DictReader((project / "metrics" / "confusion.csv").open()))
    assert [(row["actual"], row["predicted"]) for row in rows] == [(a, p) for a in CLASSES for p in CLASSES]
    return np.array([int(row["pixels"]) for row in rows]).reshape(len(CLASSES), len(CLASSES))


def test_per_class_metrics_beat_chance(project):
    truth = photo_size_truth(project)
    assert set(np.unique(truth).tolist()) == {0, 1, 2}
    achieved, chance = pooled_iou(read_confusion(project)), chance_iou(truth)
    for class_id, name in enumerate(CLASSES):
        assert achieved[class_id] > chance[class_id] + 0.1, (name, achieved[class_id], chance[class_id])
    evaluation = read_json(project / "metrics" / "evaluate.json")
    details = read_json(project / "metrics" / "evaluate_details.json")
    for name in CLASSES:
        assert 0 < details[f"test_iou_{name}"] <= details[f"test_dice_{name}"] <= 1
    # The headline is the mean over the foreground classes; binary-only keys are absent.
    assert evaluation["test_dice"] == pytest.approx((details["test_dice_ellipse"] + details["test_dice_rectangle"]) / 2)
    assert not [key for key in evaluation if key.endswith(tuple(CLASSES))]
    # Each per-image row is the image's mean over the foreground classes: the columns average to the headline.
    per_image = list(csv.DictReader((project / "metrics" / "test_per_image.csv").open()))
    for name in ("dice", "iou", "precision", "recall"):
        assert np.mean([float(row[name]) for row in per_image]) == pytest.approx(evaluation[f"test_{name}"]), name
    assert "threshold" not in evaluation and 0 < evaluation["val_dice_deployed"] <= 1
    # Nor does the deployable model carry a threshold: a pixel takes its most probable class.
    exported = onnx.load(project / "models" / "model.onnx")
    metadata = {entry.key: json.loads(entry.value) for entry in exported.metadata_props}
    assert metadata["threshold"] is None and metadata["classes"] == CLASSES


def test_confusion_matrix_counts_every_test_pixel(project):
    truth = photo_size_truth(project)
    assert read_confusion(project).sum(axis=1).tolist() == np.bincount(truth.ravel(), minlength=len(CLASSES)).tolist()
    assert cv2.imread(str(project / "metrics" / "confusion.png")) is not None
    assert "Per class (mean per image)" in (project / "models" / "model_card.md").read_text()


def test_history_and_mlflow_hold_per_class_curves(project):
    with (project / "metrics" / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == EPOCHS and {f"val_dice_{name}" for name in CLASSES} <= set(history[0])
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run_id = read_json(project / "models" / "run.json")["run_id"]
    for name in CLASSES:
        steps = [metric.step for metric in client.get_metric_history(run_id, f"val_dice_{name}")]
        assert steps == list(range(1, EPOCHS + 1)), name
    evaluation_run_id = read_json(project / "models" / "evaluation_run.json")["run_id"]
    assert (
        client.get_run(evaluation_run_id).data.metrics["test_dice_ellipse"]
        == read_json(project / "metrics" / "evaluate_details.json")["test_dice_ellipse"]
    )


def test_predict_writes_index_masks_and_palette_overlays_and_serving_returns_class_maps(project, tmp_path):
    photos = sorted((project / "data" / "raw" / "images").glob("*.jpg"))[:3]
    run(
        project,
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        *map(str, photos),
        "--model",
        "models:/shapes-unet@champion",
        "--out",
        str(tmp_path / "masks"),
        "--overlay",
        check=True,
    )
    for photo in photos:
        mask = cv2.imread(str(tmp_path / "masks" / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(str(photo)).shape[:2] and set(np.unique(mask).tolist()) <= {0, 1, 2}
        assert (tmp_path / "masks" / f"{photo.stem}_overlay.png").exists()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/shapes-unet@champion")
    image = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
    served = model.predict(image[None])[0]
    on_disk = cv2.imread(str(tmp_path / "masks" / f"{photos[0].stem}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(served, on_disk)
