"""A tiny checkpoint, a stand-in training session and a throwaway MLflow store with registered
versions, for tracking, registry, predict and serving tests."""

from __future__ import annotations

from pathlib import Path

import mlflow
import onnx
import torch

from pipeline.core import paths
from pipeline.core.classes import PERSON, ClassSpec
from pipeline.core.config import ModelConfig
from pipeline.core.extensions import AUTO
from pipeline.core.files import sha256_file, write_csv
from pipeline.core.splits import SplitInfo
from pipeline.evaluate.export import onnx_graph
from pipeline.model.checkpoint import checkpoint_classes, load_model, save_checkpoint
from pipeline.model.losses import resolve_loss
from pipeline.model.network import build_model
from pipeline.register.registry import EvaluatedModel, register_model
from pipeline.serve.registered import COMPLETE_TAG
from pipeline.serve.settings import InferenceSettings
from pipeline.tracking import EVALUATION_ARTIFACTS

TINY_MODEL = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=None)
NAME = "test-unet"
# A registry decision's paired comparison, as its reason states it: "+0.004 [-0.010, +0.018] on 58 validation images".
PAIRED = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] on 58 validation images"


def tiny_checkpoint(
    path: Path, seed: int = 0, image_size: int = 32, classes: ClassSpec = PERSON, resize: str = "squash"
) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(
        path,
        build_model(TINY_MODEL, classes),
        TINY_MODEL,
        classes,
        loss=resolve_loss(AUTO, classes.binary),
        image_size=image_size,
        resize=resize,
    )
    return path


def tiny_onnx(checkpoint: Path, settings: InferenceSettings, path: Path) -> Path:
    """The checkpoint exported as evaluate exports it, with ``settings`` in its metadata."""
    model, meta = load_model(checkpoint)
    onnx.save(onnx_graph(model, checkpoint_classes(meta), settings, int(meta["image_size"]), meta["resize"]), path)
    return path


def use_store(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("tests") is None:
        mlflow.create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
    return uri


def write_val_scores(path: Path, scores: dict[str, float]) -> Path:
    """``scores`` (Dice by validation image id) as evaluate writes metrics/val_per_image.csv."""
    write_csv(path, [{"id": id_, "dice": dice} for id_, dice in scores.items()], paths.VAL_PER_IMAGE_FIELDS)
    return path


def register(
    root: Path,
    checkpoint: Path,
    *,
    threshold: float,
    tta: bool = False,
    tags: dict[str, str] | None = None,
    val_scores: dict[str, float] | None = None,
    parent: str | None = None,
) -> tuple[str, str]:
    """A finished run holding ``checkpoint`` (and ``val_scores`` where the evaluate stage logs its
    per-image validation Dice), registered as a new version of NAME and marked complete, as the
    register stage leaves it; returns (run id, version). ``parent``: the training run it is nested
    under, as evaluation runs are."""
    use_store(root)
    experiment = mlflow.get_experiment_by_name("tests").experiment_id
    with mlflow.start_run(experiment_id=experiment, parent_run_id=parent) as run:
        if val_scores is not None:
            scores = write_val_scores(root / paths.VAL_PER_IMAGE.name, val_scores)
            mlflow.log_artifact(str(scores), artifact_path=EVALUATION_ARTIFACTS)
    card = root / "card.md"
    card.write_text("# card\n")
    settings = InferenceSettings(threshold, tta, sha256_file(checkpoint))
    onnx_model = tiny_onnx(checkpoint, settings, root / f"{checkpoint.stem}.onnx")
    evaluated = EvaluatedModel(checkpoint, onnx_model, card, metrics={}, val_dice=0.0, val_scores={})
    version = register_model(run_id=run.info.run_id, name=NAME, evaluated=evaluated, tags=tags or {})
    mlflow.MlflowClient().set_model_version_tag(NAME, version, COMPLETE_TAG, "true")
    return run.info.run_id, version


def project_client(project: Path) -> mlflow.MlflowClient:
    """A client of the MLflow store a project copy's stages write (its mlflow.db)."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


class FakeSession:
    """What train_tracked needs of a TrainingSession; fit logs one more epoch and returns the tracker's ids."""

    def __init__(self, best_path: Path, run_id: str | None = None, history: list[dict] | None = None):
        self.split_info = SplitInfo("f" * 64, 32, PERSON, {"train": 2, "val": 1, "test": 1}, {}, "squash", {})
        self.encoder_weights_sha256 = "e" * 64
        self.best_path, self.run_id, self.history = best_path, run_id, history or []

    def fit(self, tracker) -> tuple[str, str]:
        tracker.log_epoch({"epoch": len(self.history) + 1, "val_loss": 0.5})
        return tracker.run_id, tracker.experiment_id
