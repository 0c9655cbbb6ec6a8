"""One epoch of training and one pass of evaluation: the whole loop, no framework."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .errors import TrainingError
from .metrics import SegmentationMetrics


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


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but PyTorch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(choice)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
) -> float:
    """Train for one pass over ``loader``; returns the mean loss per image."""
    model.train()
    total, seen = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False)
    for step, (images, masks) in enumerate(progress, start=1):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = loss_fn(model(images), masks)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, step, value)
            loss.backward()
            optimizer.step()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(out_of_memory_message(len(images), epoch, step)) from None
        total += value * len(images)
        seen += len(images)
        progress.set_postfix(loss=f"{total / seen:.4f}")
    return total / seen


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device, threshold: float, desc: str
) -> tuple[float, SegmentationMetrics]:
    """Mean loss per image and accumulated metrics over ``loader``, in eval mode."""
    model.eval()
    metrics = SegmentationMetrics(threshold)
    total, seen = 0.0, 0
    for images, masks in tqdm(loader, desc=desc, unit="batch", leave=False):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = model(images)
        total += loss_fn(logits, masks).item() * len(images)
        seen += len(images)
        metrics.update(logits, masks)
    return total / seen, metrics
