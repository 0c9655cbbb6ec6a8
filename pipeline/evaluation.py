"""Score a checkpoint on a held-out split."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from .data import SegmentationDataset, eval_transform, load_split
from .engine import evaluate, resolve_device
from .metrics import DiceBCELoss
from .model import load_model

# Scores do not depend on it; it only bounds memory.
EVAL_BATCH_SIZE = 8


def evaluate_checkpoint(checkpoint: Path, split_dir: Path, split: str, threshold: float) -> dict[str, float]:
    """Loss and metrics of ``checkpoint`` on ``split``, prefixed with the split's name."""
    device = resolve_device("auto")
    model, _ = load_model(checkpoint)
    model.to(device)
    loader = DataLoader(SegmentationDataset(*load_split(split_dir, split), eval_transform()), batch_size=EVAL_BATCH_SIZE)
    loss, metrics = evaluate(model, loader, DiceBCELoss(), device, threshold, desc=f"evaluate {split}")
    scores = {"loss": loss, **metrics.compute()}
    return {f"{split}_{name}": value for name, value in scores.items()} | {"threshold": threshold}
