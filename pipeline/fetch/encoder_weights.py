"""Pretrained encoder weights into models/pretrained/ once, in the fetch stage, so training never
needs the network nor any file outside the project's DVC outputs."""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..core.files import atomic_dir, sha256_file, write_json, write_torch
from ..core.paths import PRETRAINED_INFO_FILE, PRETRAINED_WEIGHTS_FILE
from ..core.weights import check_state_dict, is_weights_file, read_state_dict


def fetch_pretrained_encoder(cfg: ModelConfig, out_dir: Path) -> None:
    """Download ``cfg.encoder_weights`` for ``cfg.encoder``, or copy and verify a local weights
    file, into ``out_dir`` (a DVC output)."""
    with atomic_dir(out_dir) as staging:
        info: dict[str, str | None] = {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights}
        if is_weights_file(cfg.encoder_weights):
            state, info["sha256"] = _local_weights(cfg)
            write_torch(staging / PRETRAINED_WEIGHTS_FILE, state)
        elif cfg.encoder_weights is not None:
            write_torch(staging / PRETRAINED_WEIGHTS_FILE, _download(cfg).state_dict())
        write_json(staging / PRETRAINED_INFO_FILE, info)


def _download(cfg: ModelConfig) -> torch.nn.Module:
    # smp's own encoders take a weights name; timm ("tu-") encoders only a flag, the variant
    # being part of the encoder name.
    weights: str | bool = True if cfg.encoder.startswith("tu-") else cfg.encoder_weights
    try:
        return smp.encoders.get_encoder(cfg.encoder, in_channels=3, weights=weights)
    except Exception as exc:  # hub, network and "no such weights" errors all land here
        raise ModelError(
            f"could not get pretrained weights model.encoder_weights={cfg.encoder_weights!r} for "
            f"model.encoder={cfg.encoder!r}: {type(exc).__name__}: {exc}\n"
            "They come from the Hugging Face hub. Offline, set model.encoder_weights to a local weights "
            "file (a name ending in .pth, .pt or .safetensors) or to null (random initialisation), "
            "e.g. `dvc exp run -S model.encoder_weights=null`."
        ) from None


def _local_weights(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """The file's state dict, checked against the encoder ``cfg.encoder`` builds, and its SHA-256."""
    given = Path(cfg.encoder_weights).expanduser()
    # Stages run in the project folder: a relative path is relative to the project.
    path = given if given.is_absolute() else Path.cwd() / given
    what = f"model.encoder_weights: {cfg.encoder_weights}"
    if not path.is_file():
        raise ModelError(
            f"{what} does not exist (resolved to {path}); point it at a .pth or .safetensors file "
            "holding the encoder's state dict, or set it to null for random initialisation"
        )
    digest = sha256_file(path)
    state = read_state_dict(path, what)
    encoder = smp.encoders.get_encoder(cfg.encoder, in_channels=3, weights=None)
    check_state_dict(encoder.state_dict(), state, f"{what} (model.encoder={cfg.encoder})")
    return state, digest
