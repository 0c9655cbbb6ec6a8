"""Predict masks for arbitrary photos with a checkpoint or a registered MLflow model."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .data import IMAGE_SUFFIXES, decode_image, eval_transform
from .engine import resolve_device
from .errors import DataError, ModelError
from .inference import InferenceSettings, predict_logits
from .io import write_png
from .model import load_model

DEFAULT_THRESHOLD = 0.5
OVERLAY_COLOUR = np.array([255, 64, 64], np.float32)


def load_predictor(model_ref: str, *, threshold: float | None, device: str) -> Predictor:
    """A local checkpoint path, or a registered model by MLflow URI (``models:/name@champion``,
    ``models:/name/3``, ``runs:/<run id>/model``). The model's stored threshold and TTA apply
    unless ``threshold`` overrides the former."""
    if model_ref.startswith(("models:/", "runs:/")):
        predictor = _registered_predictor(model_ref)
    else:
        path = Path(model_ref)
        if not path.is_file():
            raise ModelError(f"--model {model_ref}: no such checkpoint file (or use an MLflow URI like models:/NAME@champion)")
        settings = InferenceSettings.beside(path)
        if settings is None:
            print(f"predict: no evaluated settings beside {path} (run the evaluate stage); "
                  f"using threshold {DEFAULT_THRESHOLD} without TTA")
        predictor = Predictor.load(path, settings or InferenceSettings(DEFAULT_THRESHOLD, False, ""), device)
    target = resolve_device(device)
    return replace(predictor, model=predictor.model.to(target), device=target,
                   threshold=predictor.threshold if threshold is None else threshold)


def _registered_predictor(model_ref: str) -> Predictor:
    import mlflow

    from .tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(model_ref).unwrap_python_model().predictor
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"--model {model_ref}: {exc.message}") from None
    except AttributeError:
        raise ModelError(f"--model {model_ref}: not a model registered by this pipeline (no segmentation predictor in it)") from None


def expand_inputs(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, folders searched recursively for images, and glob patterns expanded."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            yield path
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"{item}: no such file, folder or matching glob")
            yield from (Path(match) for match in matches)


@dataclass(frozen=True)
class Predictor:
    model: torch.nn.Module
    image_size: int
    threshold: float
    tta: bool
    device: torch.device

    @classmethod
    def load(cls, checkpoint: Path, settings: InferenceSettings, device: str = "auto") -> Predictor:
        model, meta = load_model(checkpoint)
        target = resolve_device(device)
        return cls(model.to(target), int(meta["image_size"]), settings.threshold, settings.tta, target)

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Foreground probability per pixel, at each image's own size."""
        normalise = eval_transform()
        batch = np.stack(
            [
                normalise(image=cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA))["image"]
                for image in images
            ]
        )
        tensor = torch.from_numpy(batch.transpose(0, 3, 1, 2)).to(self.device)
        probs = predict_logits(self.model, tensor, self.tta).sigmoid()[:, 0].float().cpu().numpy()
        return [
            cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
            for prob, image in zip(probs, images)
        ]

    def masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [(prob >= self.threshold).astype(np.uint8) * 255 for prob in self.probabilities(images)]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    blended = image.astype(np.float32)
    foreground = mask > 0
    blended[foreground] = 0.5 * blended[foreground] + 0.5 * OVERLAY_COLOUR
    return blended.astype(np.uint8)


def predict_files(
    predictor: Predictor, files: list[Path], out_dir: Path, *, batch_size: int = 8, with_overlay: bool = False
) -> tuple[list[Path], list[str]]:
    """Write ``<stem>.png`` masks (0/255, original size) into ``out_dir``; bad files are reported, not fatal."""
    written: list[Path] = []
    failures: list[str] = []
    used_names: set[str] = set()
    progress = tqdm(total=len(files), desc="predict", unit="image")
    for start in range(0, len(files), batch_size):
        batch: list[tuple[Path, np.ndarray]] = []
        for path in files[start : start + batch_size]:
            try:
                batch.append((path, decode_image(path.read_bytes(), path)))
            except (DataError, OSError) as exc:
                failures.append(f"{path}: {exc}" if isinstance(exc, OSError) else str(exc))
                progress.update(1)
        if not batch:
            continue
        for (path, image), mask in zip(batch, predictor.masks([image for _, image in batch])):
            name = path.stem
            while name in used_names:  # same stem from two folders: keep both
                name += "_"
            used_names.add(name)
            write_png(out_dir / f"{name}.png", mask)
            if with_overlay:
                write_png(out_dir / f"{name}_overlay.png", overlay(image, mask))
            written.append(out_dir / f"{name}.png")
            progress.update(1)
    progress.close()
    return written, failures


def run(inputs: list[str], model_ref: str, out_dir: Path, *, threshold: float | None, batch_size: int,
        with_overlay: bool, device: str) -> int:
    files = list(expand_inputs(inputs))
    predictor = load_predictor(model_ref, threshold=threshold, device=device)
    written, failures = predict_files(predictor, files, out_dir, batch_size=batch_size, with_overlay=with_overlay)
    print(f"predict: wrote {len(written)} mask(s) to {out_dir} (threshold {predictor.threshold:g}"
          f"{', flip TTA' if predictor.tta else ''})")
    for failure in failures:
        print(f"predict: skipped {failure}")
    return 1 if failures else 0
