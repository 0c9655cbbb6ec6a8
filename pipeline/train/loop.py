"""One epoch of training and one pass of evaluation: the whole loop, no framework."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: fp32 (``dtype`` None) or autocast to bf16/fp16."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def choose_precision(amp: bool, device: torch.device) -> Precision:
    """bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise or when ``amp`` is off.

    On CPUs without native bf16 instructions autocast would emulate it, slower than fp32.
    """
    if not amp:
        return Precision(device.type)
    if device.type == "cuda":
        return Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return Precision("cpu", torch.bfloat16)
    return Precision(device.type)


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


def _to_device(images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # channels_last: 1.6x faster convolutions in fp32 and 2.1x with bf16 on this project's CPU
    # (bench/encoders.py); also the layout tensor cores want.
    images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True)


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
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    metrics: SegmentationMetrics,
    desc: str,
    precision: Precision | None = None,
) -> float:
    """Mean loss per image over ``loader``, in eval mode; ``metrics`` accumulates the scores."""
    precision = precision or Precision(device.type)
    model.eval()
    total, seen = 0.0, 0
    for images, masks in tqdm(loader, desc=desc, unit="batch", leave=False):
        images, masks = _to_device(images, masks, device)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        total += loss_fn(logits, masks).item() * len(images)
        seen += len(images)
        metrics.update(logits, masks)
    return total / seen
