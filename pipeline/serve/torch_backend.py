"""A trained model ready to turn photos into masks, from a checkpoint or a registered MLflow model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.errors import ModelError
from ..core.files import sha256_file
from ..model.checkpoint import checkpoint_classes, load_model
from ..model.inputs import eval_transform
from ..model.outputs import class_probabilities, predict_logits
from .registered import registered_artifact
from .segmenter import Segmenter
from .settings import InferenceSettings

DEFAULT_THRESHOLD = 0.5
# The registered model's artifact that holds the weights (see pipeline/evaluate/registry.py).
CHECKPOINT_ARTIFACT = "checkpoint"


def load_predictor(model_ref: str, *, threshold: float | None, device: str) -> TorchSegmenter:
    """A local checkpoint path, or a registered model by MLflow URI (``models:/name@champion``,
    ``models:/name/3``, ``runs:/<run id>/model``). The model's stored threshold and TTA apply
    unless ``threshold`` overrides the former."""
    if model_ref.startswith(("models:/", "runs:/")):
        predictor = _registered_predictor(model_ref)
    else:
        path = Path(model_ref)
        if not path.is_file():
            raise ModelError(
                f"--model {model_ref}: no such checkpoint file (or use an MLflow URI like models:/NAME@champion)"
            )
        settings = InferenceSettings.beside(path)
        predictor = TorchSegmenter.load(path, settings or InferenceSettings(DEFAULT_THRESHOLD, False, ""), device)
        if settings is None:
            rule = f"threshold {DEFAULT_THRESHOLD}" if predictor.classes.binary else "the top class"
            print(f"predict: no evaluated settings beside {path} (run the evaluate stage); using {rule} without TTA")
    target = resolve_device(device)
    # --threshold only means something to a binary model; a multi-class one takes the top class.
    keep = threshold is None or not predictor.classes.binary
    return replace(
        predictor, model=predictor.model.to(target), device=target, threshold=predictor.threshold if keep else threshold
    )


def _registered_predictor(model_ref: str) -> TorchSegmenter:
    """The registered version's checkpoint and inference settings, and nothing else: its code is
    never imported or run, so a version anyone with registry access logged cannot run code here."""
    with tempfile.TemporaryDirectory(prefix="unet-predict-") as tmp:
        config, checkpoint = registered_artifact(model_ref, CHECKPOINT_ARTIFACT, Path(tmp))
        try:
            settings = InferenceSettings(**{field.name: config[field.name] for field in fields(InferenceSettings)})
        except (KeyError, TypeError):
            settings = None
        if checkpoint is None or settings is None:
            raise ModelError(
                f"--model {model_ref}: not a model registered by this pipeline (it needs a {CHECKPOINT_ARTIFACT!r} "
                "artifact and threshold/tta/checkpoint_sha256 settings); register it with the evaluate stage"
            )
        if sha256_file(checkpoint) != settings.checkpoint_sha256:
            raise ModelError(
                f"--model {model_ref}: the checkpoint is not the one its settings were evaluated for "
                "(SHA-256 differs); register the model again with the evaluate stage"
            )
        return TorchSegmenter.load(checkpoint, settings)


@dataclass(frozen=True)
class TorchSegmenter(Segmenter):
    """The PyTorch backend: the network rebuilt from its checkpoint."""

    backend: ClassVar[str] = "torch"
    model: torch.nn.Module
    device: torch.device

    @classmethod
    def load(cls, checkpoint: Path, settings: InferenceSettings, device: str = "auto") -> TorchSegmenter:
        model, meta = load_model(checkpoint)
        image_size = meta.get("image_size")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 32 <= image_size <= 4096:
            raise ModelError(f"{checkpoint}: no usable image_size in its metadata (got {image_size!r})")
        target = resolve_device(device)
        classes = checkpoint_classes(meta)
        return cls(
            image_size=image_size,
            threshold=settings.threshold if classes.binary else None,
            tta=settings.tta,
            classes=classes,
            model=model.to(target),
            device=target,
        )

    @torch.no_grad()
    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        normalise = eval_transform()
        normalised = np.stack([normalise(image=image)["image"] for image in batch])
        tensor = torch.from_numpy(normalised.transpose(0, 3, 1, 2)).to(self.device)
        return class_probabilities(predict_logits(self.model, tensor, self.tta), self.classes).float().cpu().numpy()
