"""A trained model ready to turn photos into masks, from a checkpoint or a registered MLflow model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.errors import ModelError
from ..core.files import sha256_file
from ..core.paths import ONNX_MODEL
from ..core.resizing import resize_mode
from ..model.checkpoint import checkpoint_classes, load_model
from ..model.inputs import eval_transform
from ..model.outputs import class_probabilities, predict_logits
from .onnx_backend import ONNX_ARTIFACT
from .registered import CHECKPOINT_ARTIFACT, registered_artifacts
from .segmenter import Segmenter
from .settings import MAX_IMAGE_SIZE, UNEVALUATED, InferenceSettings, read_description


def load_predictor(model_ref: str, *, threshold: float | None, device: str) -> TorchSegmenter:
    """A local checkpoint path, or a registered model by MLflow URI (``models:/name@champion``,
    ``models:/name/3``). The threshold and TTA recorded in the model's ONNX export apply
    unless ``threshold`` overrides the former."""
    if model_ref.startswith(("models:/", "runs:/")):
        predictor = _registered_predictor(model_ref)
    else:
        path = Path(model_ref)
        if not path.is_file():
            raise ModelError(
                f"--model {model_ref}: no such checkpoint file (or use an MLflow URI like models:/NAME@champion)"
            )
        predictor = TorchSegmenter.load(path, _settings_beside(path))
    target = resolve_device(device)
    # --threshold only means something to a binary model; a multi-class one takes the top class.
    keep = threshold is None or not predictor.classes.binary
    return replace(
        predictor, model=predictor.model.to(target), device=target, threshold=predictor.threshold if keep else threshold
    )


def _settings_beside(checkpoint: Path) -> InferenceSettings:
    """The settings in the ONNX file evaluate exported beside ``checkpoint``, if it was exported
    from that very file: a retrained checkpoint must not inherit the old threshold."""
    onnx_file = checkpoint.parent / ONNX_MODEL.name
    settings = read_description(onnx_file).settings if onnx_file.is_file() else None
    if settings is not None and settings.checkpoint_sha256 == sha256_file(checkpoint):
        return settings
    # Settings only for the binary cut-off: a multi-class model takes the top class either way.
    reason = "no ONNX export" if settings is None else f"{onnx_file} was exported from another checkpoint"
    print(
        f"predict: {reason} beside {checkpoint} (run the evaluate stage); using threshold "
        f"{UNEVALUATED.threshold} (binary models) without TTA"
    )
    return UNEVALUATED


def _registered_predictor(model_ref: str) -> TorchSegmenter:
    """The registered version's checkpoint, run as its ONNX export records, and nothing else:
    its code is never imported or run, so a version anyone with registry access logged cannot
    run code here."""
    with tempfile.TemporaryDirectory(prefix="unet-predict-") as tmp:
        found = registered_artifacts(model_ref, (CHECKPOINT_ARTIFACT, ONNX_ARTIFACT), Path(tmp))
        checkpoint, onnx_file = found[CHECKPOINT_ARTIFACT], found[ONNX_ARTIFACT]
        if checkpoint is None or onnx_file is None:
            raise ModelError(
                f"--model {model_ref}: not a model registered by this pipeline (it needs a {CHECKPOINT_ARTIFACT!r} "
                f"and an {ONNX_ARTIFACT!r} artifact); register it with the register stage"
            )
        settings = read_description(onnx_file, f"--model {model_ref}").settings
        if sha256_file(checkpoint) != settings.checkpoint_sha256:
            raise ModelError(
                f"--model {model_ref}: the checkpoint is not the one its ONNX export was made from "
                "(SHA-256 differs); register the model again with the register stage"
            )
        return TorchSegmenter.load(checkpoint, settings)


@dataclass(frozen=True)
class TorchSegmenter(Segmenter):
    """The PyTorch backend: the network rebuilt from its checkpoint."""

    backend: ClassVar[str] = "torch"
    model: torch.nn.Module
    device: torch.device

    @classmethod
    def load(cls, checkpoint: Path, settings: InferenceSettings = UNEVALUATED, device: str = "auto") -> TorchSegmenter:
        model, meta = load_model(checkpoint)
        image_size = meta.get("image_size")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 32 <= image_size <= MAX_IMAGE_SIZE:
            raise ModelError(f"{checkpoint}: no usable image_size in its metadata (got {image_size!r})")
        resize = resize_mode(meta.get("resize"), str(checkpoint), ModelError)
        target = resolve_device(device)
        classes = checkpoint_classes(meta)
        return cls(
            image_size=image_size,
            resize=resize,
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
