"""How a trained network turns images into masks: the forward pass (with optional flip TTA),
logits to class maps, and the settings evaluate chooses for it (threshold, TTA), stored
beside the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .classes import ClassSpec
from .errors import ModelError
from .io import read_json, sha256_file, write_json

SETTINGS_FILE = "inference.json"


def predict_logits(model: nn.Module, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits for a normalised NCHW batch. With ``tta``, the mean of the logits for the image
    and for its mirror image: a horizontal flip only, the one the training augmentation uses
    (people stand upright, so a vertical flip would show the network something it never saw)."""
    logits = model(images)
    if tta:
        logits = (logits + model(images.flip(-1)).flip(-1)) / 2
    return logits


def class_probabilities(logits: torch.Tensor, classes: ClassSpec) -> torch.Tensor:
    """N x 1 x H x W foreground probability for a binary model (sigmoid), N x C x H x W class
    probabilities for a multi-class one (softmax)."""
    return logits.sigmoid() if classes.binary else logits.softmax(dim=1)


def class_map(probabilities: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """N x H x W class ids: binary, foreground where the probability reaches ``threshold``;
    multi-class, the most probable class (``threshold`` is None: there is nothing to cut)."""
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] >= threshold).long()
    return probabilities.argmax(dim=1)


@dataclass(frozen=True)
class InferenceSettings:
    """The probability cut-off and TTA a checkpoint was evaluated with, and so must be used with.
    Multi-class models have no cut-off (``threshold`` None): each pixel takes its top class."""

    threshold: float | None
    tta: bool
    checkpoint_sha256: str

    def save_beside(self, checkpoint: Path) -> None:
        write_json(checkpoint.parent / SETTINGS_FILE, asdict(self))

    @classmethod
    def beside(cls, checkpoint: Path) -> InferenceSettings | None:
        """The settings evaluate wrote next to ``checkpoint``; None if there are none for this very file."""
        path = checkpoint.parent / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            settings = cls(**read_json(path))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: not inference settings written by the evaluate stage ({exc})") from None
        # A retrained checkpoint whose evaluation has not run yet must not inherit the old threshold.
        return settings if settings.checkpoint_sha256 == sha256_file(checkpoint) else None
