"""Small datasets made on the spot, and the split stage's work on them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.config import DataConfig, SplitConfig
from pipeline.split.preparation import build_split


def make_dataset(
    root: Path, count: int = 12, size: int = 48, *, image_dir="images", mask_dir="masks", seed: int = 0
) -> Path:
    """A folder dataset of random photos with one filled rectangle each as the mask."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        top, left = rng.integers(0, size // 2, 2)
        mask[top : top + size // 3, left : left + size // 3] = 255
        image[mask > 0] //= 3
        cv2.imwrite(str(root / image_dir / f"{index:03d}.jpg"), image)
        cv2.imwrite(str(root / mask_dir / f"{index:03d}.png"), mask)
    return root


def data_config(
    classes: tuple[str, ...] = ("background", "person"), image_size: int = 32, resize: str = "squash"
) -> DataConfig:
    """The data section of a split of a local folder dataset, read with the auto layout."""
    return DataConfig(
        source="unused",
        manifest=None,
        layout="auto",
        classes=list(classes),
        palette=None,
        on_bad_sample="error",
        image_size=image_size,
        resize=resize,
    )


def build_test_split(
    raw: Path,
    out: Path,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    classes: tuple[str, ...] = ("background", "person"),
    resize: str = "squash",
) -> Path:
    """Run the split stage's work on ``raw`` into ``out/split`` (report beside it); returns the split folder."""
    data = data_config(classes, image_size, resize)
    split = SplitConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    build_split(raw, out / "split", out / "report.json", data, split)
    return out / "split"
