"""Training losses by name (``train.loss``), from smp's implementations.

Binary models have one logit channel and masks of 0/1; multi-class ones a channel per class
and masks of class ids. Each loss registers itself in ``LOSSES`` with ``@register_loss``,
under its ``train.loss`` name and with the models it fits; ``core/config.py`` checks a name
against it at start-up, so an unknown loss or a misfit fails naming ``train.loss``. ``auto``
is Dice + binary cross-entropy for binary models and Dice + cross-entropy for multi-class ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import segmentation_models_pytorch as smp
import torch
from torch import nn

from ..core.classes import ClassSpec
from ..core.errors import ConfigError
from ..core.extensions import AUTO, Registry

# Which models a loss can train: "binary" (two classes, one logit channel), "multiclass" (a
# logit channel per class) or "any".
Fit = Literal["binary", "multiclass", "any"]


@dataclass(frozen=True)
class RegisteredLoss:
    build: Callable[[ClassSpec], nn.Module]
    fits: Fit


LOSSES: Registry[RegisteredLoss] = Registry("train.loss")


def register_loss(name: str, fits: Fit) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: the loss is ``train.loss: <name>`` for the models it ``fits``; it is built
    with the ``ClassSpec`` and called with ``(logits, masks)``."""

    def register(loss: type[nn.Module]) -> type[nn.Module]:
        LOSSES.register(name, RegisteredLoss(loss, fits))
        return loss

    return register


def resolve_loss(name: str, binary: bool) -> str:
    """The loss ``train.loss`` means: ``auto`` is dice_bce for two classes, dice_ce for more."""
    if name != AUTO:
        return name
    return "dice_bce" if binary else "dice_ce"


def loss_misfit(name: str, class_count: int) -> str | None:
    """Why registered loss ``name`` (or ``auto``) cannot train a model of ``class_count`` classes; None when it can."""
    needed = "binary" if class_count == 2 else "multiclass"
    fit = LOSSES[resolve_loss(name, class_count == 2)].fits
    if fit in ("any", needed):
        return None
    fitting = [AUTO, *(other for other, entry in LOSSES.items() if entry.fits in ("any", needed))]
    kind = "binary models (two classes)" if fit == "binary" else "models of more than two classes"
    return f"{name!r} is for {kind}, but data.classes has {class_count}; use one of: {', '.join(fitting)}"


def _target(masks: torch.Tensor, binary: bool) -> torch.Tensor:
    # Masks arrive as N x 1 x H x W floats: 0/1 for binary, class ids otherwise (smp wants N x H x W ids).
    return masks if binary else masks[:, 0].long()


def _mode(classes: ClassSpec) -> str:
    return smp.losses.BINARY_MODE if classes.binary else smp.losses.MULTICLASS_MODE


@register_loss("dice_bce", fits="binary")
class DiceBCELoss(nn.Module):
    """Soft Dice loss plus binary cross-entropy, both on logits, as in the reference notebook."""

    def __init__(self, classes: ClassSpec | None = None) -> None:  # binary only: nothing to take from classes
        super().__init__()
        self.dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce = smp.losses.SoftBCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, masks) + self.bce(logits, masks)


@register_loss("dice_ce", fits="multiclass")
class DiceCELoss(nn.Module):
    """Soft Dice over every class plus cross-entropy, on logits: the multi-class counterpart of DiceBCELoss."""

    def __init__(self, classes: ClassSpec | None = None) -> None:  # the channel count comes with the logits
        super().__init__()
        self.dice = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        classes = _target(masks, binary=False)
        return self.dice(logits, classes) + self.cross_entropy(logits, classes)


@register_loss("focal_dice", fits="any")
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


@register_loss("lovasz", fits="any")
class LovaszLoss(nn.Module):
    """Lovász hinge (binary) or Lovász-softmax (multi-class): a direct surrogate of IoU, over the batch."""

    def __init__(self, classes: ClassSpec) -> None:
        super().__init__()
        self.binary = classes.binary
        self.lovasz = smp.losses.LovaszLoss(_mode(classes))

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.lovasz(logits, _target(masks, self.binary))


def build_loss(name: str, classes: ClassSpec) -> nn.Module:
    """The loss ``name`` (a train.loss value, or the name a checkpoint records) for ``classes``."""
    problem = loss_misfit(name, classes.count)
    if problem:
        raise ConfigError(f"train.loss: {problem}")
    return LOSSES[resolve_loss(name, classes.binary)].build(classes)
