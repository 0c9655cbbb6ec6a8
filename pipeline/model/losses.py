"""Training losses by name (``train.loss``), from smp's implementations.

Binary models have one logit channel and masks of 0/1; multi-class ones a channel per class
and masks of class ids. ``auto`` is Dice + binary cross-entropy for binary models and Dice +
cross-entropy for multi-class ones. Which names exist and which class counts each fits is
declared in ``core/extensions.py``, so a misfit fails at start-up, naming ``train.loss``.
"""

from __future__ import annotations

from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
from torch import nn

from ..core.classes import ClassSpec
from ..core.errors import ConfigError
from ..core.extensions import loss_misfit, resolve_loss


def _target(masks: torch.Tensor, binary: bool) -> torch.Tensor:
    # Masks arrive as N x 1 x H x W floats: 0/1 for binary, class ids otherwise (smp wants N x H x W ids).
    return masks if binary else masks[:, 0].long()


def _mode(classes: ClassSpec) -> str:
    return smp.losses.BINARY_MODE if classes.binary else smp.losses.MULTICLASS_MODE


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
        classes = _target(masks, binary=False)
        return self.dice(logits, classes) + self.cross_entropy(logits, classes)


class FocalDiceLoss(nn.Module):
    """Focal loss (easy, confidently right pixels weigh less) plus soft Dice, on logits."""

    def __init__(self, classes: ClassSpec) -> None:
        super().__init__()
        self.binary = classes.binary
        self.focal = smp.losses.FocalLoss(_mode(classes))
        self.dice = smp.losses.DiceLoss(_mode(classes), from_logits=True)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = _target(masks, self.binary)
        return self.focal(logits, target) + self.dice(logits, target)


class LovaszLoss(nn.Module):
    """Lovász hinge (binary) or Lovász-softmax (multi-class): a direct surrogate of IoU, over the batch."""

    def __init__(self, classes: ClassSpec) -> None:
        super().__init__()
        self.binary = classes.binary
        self.lovasz = smp.losses.LovaszLoss(_mode(classes))

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.lovasz(logits, _target(masks, self.binary))


# train.loss names (declared with the class counts they fit in core/extensions.py) -> the loss for a class spec.
LOSSES: dict[str, Callable[[ClassSpec], nn.Module]] = {
    "dice_bce": lambda classes: DiceBCELoss(),
    "dice_ce": lambda classes: DiceCELoss(),
    "focal_dice": FocalDiceLoss,
    "lovasz": LovaszLoss,
}


def build_loss(name: str, classes: ClassSpec) -> nn.Module:
    """The loss ``name`` (a train.loss value, or the name a checkpoint records) for ``classes``."""
    problem = loss_misfit(name, classes.count)
    if problem:
        raise ConfigError(f"train.loss: {problem}")
    return LOSSES[resolve_loss(name, classes.binary)](classes)
