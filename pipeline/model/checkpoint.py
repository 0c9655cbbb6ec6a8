"""Build the smp model, fetch/load pretrained encoder weights, save/load checkpoints.

Training never touches the network: the fetch stage downloads encoder weights once into
``models/pretrained/``, and the model is always constructed with ``encoder_weights=None``
before those weights (or a checkpoint) are loaded from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .classes import PERSON, ClassSpec
from .config import ModelConfig
from .errors import ModelError
from .io import atomic_dir, atomic_path, read_json, write_json

CHECKPOINT_FORMAT = "unet-pipeline/checkpoint-v1"


def build_model(cfg: ModelConfig, classes: ClassSpec) -> nn.Module:
    """A segmentation network with randomly initialised weights: one logit channel for binary, one per class otherwise."""
    return smp.create_model(cfg.arch, encoder_name=cfg.encoder, encoder_weights=None, in_channels=3, classes=classes.channels)


def fetch_pretrained_encoder(cfg: ModelConfig, out_dir: Path) -> None:
    """Download ``cfg.encoder_weights`` for ``cfg.encoder`` into ``out_dir`` (a DVC output)."""
    with atomic_dir(out_dir) as staging:
        if cfg.encoder_weights is not None:
            # smp's own encoders take a weights name; timm ("tu-") encoders only a flag, the
            # variant being part of the encoder name.
            weights: str | bool = True if cfg.encoder.startswith("tu-") else cfg.encoder_weights
            try:
                encoder = smp.encoders.get_encoder(cfg.encoder, in_channels=3, weights=weights)
            except Exception as exc:  # hub, network and "no such weights" errors all land here
                raise ModelError(
                    f"could not get pretrained weights model.encoder_weights={cfg.encoder_weights!r} for "
                    f"model.encoder={cfg.encoder!r}: {type(exc).__name__}: {exc}\n"
                    "They come from the Hugging Face hub. Offline, set model.encoder_weights: null "
                    "(random initialisation), e.g. `dvc exp run -S model.encoder_weights=null`."
                ) from None
            torch.save(encoder.state_dict(), staging / "encoder.pt")
        write_json(staging / "info.json", {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights})


def load_pretrained_encoder(model: nn.Module, cfg: ModelConfig, pretrained_dir: Path) -> None:
    if cfg.encoder_weights is None:
        return
    try:
        info = read_json(pretrained_dir / "info.json")
    except FileNotFoundError:
        raise ModelError(f"{pretrained_dir}/info.json is missing: run the fetch stage (dvc repro)") from None
    wanted = {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights}
    if info != wanted:
        raise ModelError(f"{pretrained_dir} holds {info}, but params ask for {wanted}: rerun the fetch stage (dvc repro)")
    path = pretrained_dir / "encoder.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load pretrained encoder weights: {exc}") from None


def save_checkpoint(path: Path, model: nn.Module, cfg: ModelConfig, classes: ClassSpec, **metadata: Any) -> None:
    """State dict plus what is needed to rebuild and use the network; replaces ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": cfg.model_dump(),
        "classes": classes.to_dict(),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        **metadata,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only); errors name the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: checkpoint not found (has the train stage run?)") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a checkpoint written by this pipeline (expected format {CHECKPOINT_FORMAT})")
    return payload


def checkpoint_classes(payload: dict[str, Any]) -> ClassSpec:
    # Checkpoints written before classes were configurable are all binary person models.
    return ClassSpec.from_dict(payload["classes"]) if "classes" in payload else PERSON


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a checkpoint, offline; returns it in eval mode with the metadata."""
    payload = read_checkpoint(path)
    model = build_model(ModelConfig(**payload["model_config"]), checkpoint_classes(payload))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the model described in it: {exc}") from None
    return model.eval(), payload
