"""From the network's output to masks: the forward pass (with optional flip TTA), logits to
probabilities, probabilities to predicted class ids. Training, evaluation and predict share these."""

from __future__ import annotations

import torch
from torch import nn

from ..core.classes import ClassSpec


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


def predicted_classes(probabilities: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """N x H x W class ids: binary, foreground where the probability reaches ``threshold``;
    multi-class, the most probable class (``threshold`` is None: there is nothing to cut)."""
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] >= threshold).long()
    return probabilities.argmax(dim=1)
