"""The per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..core.config import TrainConfig


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: linear warm-up, then constant, cosine decay or one-cycle."""
    total = cfg.epochs * steps_per_epoch
    # Capped so that a short run (`-S train.epochs=1`) still trains at full rate for a while.
    warmup = min(cfg.warmup_epochs, cfg.epochs - 1) * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(warmup, 1) / total
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
