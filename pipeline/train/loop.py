"""One epoch of training, the BatchNorm statistics pass and one validation pass: the whole loop, no framework."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core.device import Precision
from ..core.errors import TrainingError
from ..model.metrics import SegmentationMetrics


class NonFiniteLossError(TrainingError):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; training stopped. "
            "Lower train.lr, or check the data for corrupt masks. The best model so far is kept."
        )
        self.epoch, self.step = epoch, step


def out_of_memory_message(batch_size: int, epoch: int, step: int) -> str:
    smaller = max(1, batch_size // 2)
    return (
        f"CUDA ran out of memory at epoch {epoch}, step {step} with a batch of {batch_size} images. "
        f"Try `dvc exp run -S train.batch_size={smaller}`"
        + (" (or a smaller data.image_size)." if batch_size == 1 else ", or a smaller data.image_size.")
        + " The best model and models/last.pt so far are kept."
    )


def _images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: faster train steps in fp32 and with bf16 (bench/encoders.py; measurements
    # in docs/performance.md); also the layout tensor cores want.
    return images.to(device, non_blocking=True, memory_format=torch.channels_last)


def _to_device(images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return _images_to_device(images, device), masks.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    precision: Precision | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    """Train for one pass over ``loader``; returns the summed loss over images and the image count."""
    precision = precision or Precision(device.type)
    model.train()
    total, seen = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False)
    for step, (images, masks) in enumerate(progress, start=1):
        images, masks = _to_device(images, masks, device)
        optimizer.zero_grad(set_to_none=True)
        try:
            with precision.autocast():
                logits = model(images)
            loss = loss_fn(logits.float(), masks)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, step, value)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(out_of_memory_message(len(images), epoch, step)) from None
        if scheduler is not None:
            scheduler.step()
        total += value * len(images)
        seen += len(images)
        progress.set_postfix(loss=f"{total / seen:.4f}")
    return total, seen


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module, loader: DataLoader, device: torch.device, desc: str, precision: Precision | None = None
) -> None:
    """Set every BatchNorm layer's running mean and variance to their average over ``loader``'s
    images under the current weights, each batch weighted by its image count.

    The running averages training keeps lag the weights: they start from 0 and 1 (or the
    pretrained values) and move a little per step, while the weights change a lot per epoch early
    on. Recomputed before each validation, they are the statistics of the weights being scored,
    and the checkpoint keeps them. Only the BatchNorm layers run in training mode (no dropout),
    and training never reads these statistics: the weights are the same as without this pass.
    Leaves ``model`` in eval mode.
    """
    layers = [layer for layer in model.modules() if isinstance(layer, _BatchNorm) and layer.track_running_stats]
    if not layers:
        return
    precision = precision or Precision(device.type)
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.train()
    seen = 0
    try:
        for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False):
            seen += len(images)
            for layer in layers:
                # new = old + (batch - old) * share: the running value is the mean over the images so far.
                layer.momentum = len(images) / seen
            with precision.autocast():
                model(_images_to_device(images, device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    metrics: SegmentationMetrics,
    desc: str,
    precision: Precision | None = None,
    content: Sequence[tuple[int, int]] | None = None,
) -> float:
    """Mean loss per image over ``loader``, in eval mode; ``metrics`` accumulates the scores,
    over each image's ``content`` (its (height, width) at the top left, in the loader's order)
    where given. The loss is taken over the whole input, padding included, as training takes it."""
    precision = precision or Precision(device.type)
    model.eval()
    total, seen = 0.0, 0
    for images, masks in tqdm(loader, desc=desc, unit="batch", leave=False):
        images, masks = _to_device(images, masks, device)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        total += loss_fn(logits, masks).item() * len(images)
        metrics.update(logits, masks, None if content is None else content[seen : seen + len(images)])
        seen += len(images)
    return total / seen
