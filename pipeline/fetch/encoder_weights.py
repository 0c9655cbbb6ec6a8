"""Download pretrained encoder weights once, in the fetch stage, so training never needs the network."""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..core.files import atomic_dir, write_json
from ..core.paths import PRETRAINED_INFO_FILE, PRETRAINED_WEIGHTS_FILE


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
            torch.save(encoder.state_dict(), staging / PRETRAINED_WEIGHTS_FILE)
        write_json(staging / PRETRAINED_INFO_FILE, {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights})
