"""Training losses, from smp's implementations: Dice + binary cross-entropy for binary models
(one logit channel), Dice + cross-entropy for multi-class ones (a channel per class)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from ..core.classes import ClassSpec


class DiceBCELoss(nn.Module):
    """Soft Dice loss plus binary cross-entropy, both on logits, as in the reference notebook."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce = smp.losses.SoftBCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, masks) + self.bce(logits, masks)


class DiceCELoss(nn.Module):
    """Soft Dice over every class plus cross-entropy, on logits: the multi-class counterpart of DiceBCELoss."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        classes = masks[:, 0].long()  # masks arrive as N x 1 x H x W class ids
        return self.dice(logits, classes) + self.cross_entropy(logits, classes)


def build_loss(classes: ClassSpec) -> nn.Module:
    return DiceBCELoss() if classes.binary else DiceCELoss()
