"""A trained model ready to turn photos into masks, from a checkpoint or a registered MLflow model."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import TypeVar

import cv2
import numpy as np
import torch
from ruamel.yaml import YAML, YAMLError

from ..core.classes import ClassSpec
from ..core.device import resolve_device
from ..core.errors import ModelError
from ..core.files import sha256_file
from ..core.images import MAX_IMAGE_PIXELS
from ..model.checkpoint import checkpoint_classes, load_model
from ..model.inputs import eval_transform
from ..model.outputs import class_map, class_probabilities, predict_logits
from .settings import InferenceSettings

T = TypeVar("T")

DEFAULT_THRESHOLD = 0.5
# The registered model's artifact that holds the weights (see pipeline/evaluate/registry.py).
CHECKPOINT_ARTIFACT = "checkpoint"


def image_batches(images: Iterable[tuple[T, np.ndarray]], size: int) -> Iterator[list[tuple[T, np.ndarray]]]:
    """Consecutive groups of at most ``size`` (key, image) pairs holding at most MAX_IMAGE_PIXELS
    pixels between them (one image may have that many), so only one group is decoded at a time."""
    batch: list[tuple[T, np.ndarray]] = []
    pixels = 0
    for key, image in images:
        if batch and (len(batch) == size or pixels + image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS):
            yield batch
            batch, pixels = [], 0
        batch.append((key, image))
        pixels += image.shape[0] * image.shape[1]
    if batch:
        yield batch


def load_predictor(model_ref: str, *, threshold: float | None, device: str) -> Predictor:
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
        predictor = Predictor.load(path, settings or InferenceSettings(DEFAULT_THRESHOLD, False, ""), device)
        if settings is None:
            rule = f"threshold {DEFAULT_THRESHOLD}" if predictor.classes.binary else "the top class"
            print(f"predict: no evaluated settings beside {path} (run the evaluate stage); using {rule} without TTA")
    target = resolve_device(device)
    # --threshold only means something to a binary model; a multi-class one takes the top class.
    keep = threshold is None or not predictor.classes.binary
    return replace(
        predictor, model=predictor.model.to(target), device=target, threshold=predictor.threshold if keep else threshold
    )


def _registered_predictor(model_ref: str) -> Predictor:
    """The registered version's checkpoint and inference settings, and nothing else: its code is
    never imported or run, so a version anyone with registry access logged cannot run code here."""
    import mlflow

    from ..tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with tempfile.TemporaryDirectory(prefix="unet-predict-") as tmp:
        try:
            description = Path(mlflow.artifacts.download_artifacts(f"{model_ref}/MLmodel", dst_path=tmp))
            spec = YAML(typ="safe", pure=True).load(description.read_text(encoding="utf-8"))
            pyfunc = spec["flavors"]["python_function"]
            settings = InferenceSettings(
                **{field.name: pyfunc["config"][field.name] for field in fields(InferenceSettings)}
            )
            relative = PurePosixPath(pyfunc["artifacts"][CHECKPOINT_ARTIFACT]["path"])
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"checkpoint path {relative} leaves the model")
            checkpoint = Path(mlflow.artifacts.download_artifacts(f"{model_ref}/{relative}", dst_path=tmp))
        except mlflow.exceptions.MlflowException as exc:
            raise ModelError(f"--model {model_ref}: {exc.message.splitlines()[0]}") from None
        except (KeyError, TypeError, ValueError, YAMLError):
            raise ModelError(
                f"--model {model_ref}: not a model registered by this pipeline (it needs a {CHECKPOINT_ARTIFACT!r} "
                "artifact and threshold/tta/checkpoint_sha256 settings); register it with the evaluate stage"
            ) from None
        if sha256_file(checkpoint) != settings.checkpoint_sha256:
            raise ModelError(
                f"--model {model_ref}: the checkpoint is not the one its settings were evaluated for "
                "(SHA-256 differs); register the model again with the evaluate stage"
            )
        return Predictor.load(checkpoint, settings)


@dataclass(frozen=True)
class Predictor:
    model: torch.nn.Module
    image_size: int
    threshold: float | None  # binary models only; multi-class ones take the top class
    tta: bool
    device: torch.device
    classes: ClassSpec

    @classmethod
    def load(cls, checkpoint: Path, settings: InferenceSettings, device: str = "auto") -> Predictor:
        model, meta = load_model(checkpoint)
        image_size = meta.get("image_size")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 32 <= image_size <= 4096:
            raise ModelError(f"{checkpoint}: no usable image_size in its metadata (got {image_size!r})")
        target = resolve_device(device)
        classes = checkpoint_classes(meta)
        threshold = settings.threshold if classes.binary else None
        return cls(model.to(target), image_size, threshold, settings.tta, target, classes)

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per pixel, at each image's own size: the foreground probability (H x W) of a binary
        model, the class probabilities (H x W x C) of a multi-class one."""
        normalise = eval_transform()
        batch = np.stack(
            [
                normalise(image=cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA))[
                    "image"
                ]
                for image in images
            ]
        )
        tensor = torch.from_numpy(batch.transpose(0, 3, 1, 2)).to(self.device)
        probs = class_probabilities(predict_logits(self.model, tensor, self.tta), self.classes).float().cpu().numpy()
        # Resized as probabilities, then cut: smoother edges than resizing a class map.
        return [
            cv2.resize(prob.transpose(1, 2, 0), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
            for prob, image in zip(probs, images, strict=True)
        ]

    def class_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """H x W uint8 class ids per image (0/1 for binary)."""
        maps = []
        for prob in self.probabilities(images):
            channels_first = prob[None, None] if prob.ndim == 2 else prob.transpose(2, 0, 1)[None]
            maps.append(
                class_map(torch.from_numpy(np.ascontiguousarray(channels_first)), self.threshold)[0]
                .numpy()
                .astype(np.uint8)
            )
        return maps

    def mask_values(self, classes_map: np.ndarray) -> np.ndarray:
        """What a mask file holds: 0/255 for binary (viewable, as always), class ids otherwise."""
        return classes_map * 255 if self.classes.binary else classes_map

    def masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.mask_values(classes_map) for classes_map in self.class_maps(images)]
