"""Checkpoints: the trained weights with what is needed to rebuild and use the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.classes import ClassSpec
from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..core.files import write_torch
from .losses import LOSSES, loss_misfit
from .network import build_model

CHECKPOINT_FORMAT = "unet-pipeline/checkpoint-v1"
# What every checkpoint of this format holds besides its free-form metadata.
REQUIRED_KEYS = ("model_config", "classes", "loss", "state_dict")


def save_checkpoint(
    path: Path, model: nn.Module, cfg: ModelConfig, classes: ClassSpec, *, loss: str, **metadata: Any
) -> None:
    """State dict plus what is needed to rebuild and use the network (``loss``: the resolved
    train.loss, so evaluation reports the same loss); replaces ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": cfg.model_dump(),
        "classes": classes.to_dict(),
        "loss": loss,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        **metadata,
    }
    write_torch(path, payload)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only); errors name the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: checkpoint not found (has the train stage run?)") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        # Some (weights_only's refusal of a pickled class) run to pages of advice: the first line says it.
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a checkpoint written by this pipeline (expected format {CHECKPOINT_FORMAT})")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ModelError(f"{path}: checkpoint lacks {', '.join(missing)}; use a checkpoint written by the train stage")
    return payload


def checkpoint_classes(payload: dict[str, Any]) -> ClassSpec:
    return ClassSpec.from_dict(payload["classes"])


def checkpoint_loss(path: Path, payload: dict[str, Any]) -> str:
    """The train.loss the checkpoint was trained with, so evaluation reports the same loss."""
    name = payload["loss"]
    known = isinstance(name, str) and name in LOSSES
    if not known or loss_misfit(name, checkpoint_classes(payload).count):
        raise ModelError(
            f"{path}: records a loss this pipeline cannot build for its classes ({name!r}); "
            "use a checkpoint written by the train stage"
        )
    return name


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a checkpoint, offline; returns it in eval mode with the metadata."""
    payload = read_checkpoint(path)
    try:
        model = build_model(ModelConfig(**payload["model_config"]), checkpoint_classes(payload))
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        detail = str(exc).splitlines()[0]
        raise ModelError(
            f"{path}: its metadata does not describe a model this pipeline can build ({detail}); "
            "use a checkpoint written by the train stage"
        ) from None
    misfit = weights_misfit(model, payload["state_dict"])
    if misfit:
        raise ModelError(f"{path}: weights do not fit the model described in it: {misfit}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:200]
        raise ModelError(f"{path}: weights do not fit the model described in it ({detail})") from None
    return model.eval(), payload


def _first(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(name[:60] for name in names[:shown])
    return listed + (", ..." if len(names) > shown else "")


def weights_misfit(model: nn.Module, state_dict: Any) -> str | None:
    """What keeps ``state_dict`` from loading into ``model``, in one short line (the first few
    tensor names and the counts, never the whole list), or None if it fits."""
    if not isinstance(state_dict, dict):
        return f"its state_dict is a {type(state_dict).__name__}, not a mapping of tensors"
    expected = model.state_dict()
    unknown = [str(key) for key in state_dict if key not in expected]
    missing = [key for key in expected if key not in state_dict]
    wrong = [
        key
        for key, tensor in state_dict.items()
        if key in expected and (not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(expected)} tensors missing ({_first(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} of its {len(state_dict)} tensors unknown to the model ({_first(unknown)})")
    if wrong:
        key = wrong[0]
        given = state_dict[key]
        got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
        parts.append(
            f"{len(wrong)} tensors of another shape ({key[:60]}: {got}, the model's {tuple(expected[key].shape)})"
        )
    return "; ".join(parts) + "; use a checkpoint written by the train stage" if parts else None
