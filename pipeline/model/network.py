"""Build the smp network and load pretrained encoder weights into it, offline.

The fetch stage downloads encoder weights once into ``models/pretrained/``; the network is
always constructed with ``encoder_weights=None`` before those weights (or a checkpoint) are
loaded from disk.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
from torch import nn

from ..core.classes import ClassSpec
from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..core.files import read_json
from ..core.paths import PRETRAINED_INFO_FILE, PRETRAINED_WEIGHTS_FILE
from ..core.weights import check_state_dict, read_state_dict


def build_model(cfg: ModelConfig, classes: ClassSpec) -> nn.Module:
    """A segmentation network with randomly initialised weights: one logit channel for binary,
    one per class otherwise."""
    return smp.create_model(
        cfg.arch, encoder_name=cfg.encoder, encoder_weights=None, in_channels=3, classes=classes.channels
    )


def load_pretrained_encoder(model: nn.Module, cfg: ModelConfig, pretrained_dir: Path) -> str | None:
    """Load the fetch stage's encoder weights; returns the SHA-256 of the local weights file they
    were copied from (``model.encoder_weights`` a path), else None."""
    if cfg.encoder_weights is None:
        return None
    try:
        info = read_json(pretrained_dir / PRETRAINED_INFO_FILE)
    except FileNotFoundError:
        raise ModelError(
            f"{pretrained_dir}/{PRETRAINED_INFO_FILE} is missing: run the fetch stage (dvc repro)"
        ) from None
    wanted = {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights}
    held = {key: info.get(key) for key in wanted}
    if held != wanted:
        raise ModelError(
            f"{pretrained_dir} holds {held}, but params ask for {wanted}: rerun the fetch stage (dvc repro)"
        )
    path = pretrained_dir / PRETRAINED_WEIGHTS_FILE
    state = read_state_dict(path, str(path))
    check_state_dict(model.encoder.state_dict(), state, str(path))
    model.encoder.load_state_dict(state)
    return info.get("sha256")
