"""Encoder weights files: reading a state dict from disk and checking that it fits a network."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ModelError

# `model.encoder_weights` values ending in one of these are files; anything else is a weights name.
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors")
SHOWN_KEYS = 5


def is_weights_file(value: str | None) -> bool:
    return value is not None and value.lower().endswith(WEIGHTS_SUFFIXES)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors in a `.safetensors` file or a `torch.save`d dict (tensors only, nothing executed)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, another format, pickled code: all refused alike
        raise ModelError(f"{what}: cannot read a state dict: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{what}: holds no state dict (a mapping of names to tensors), e.g. a whole pickled model")
    return dict(state)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse ``given`` unless it has exactly the keys and shapes of ``expected``, naming the difference."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    mismatched = [
        f"{key} {tuple(given[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in given and given[key].shape != value.shape
    ]
    problems = [
        f"{label} {len(keys)}: {_names(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise ModelError(
            f"{what} does not fit the encoder ({'; '.join(problems)}); it must hold "
            "`model.encoder.state_dict()` of the network model.encoder builds"
        )
