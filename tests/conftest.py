from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = PROJECT_ROOT.parent / "shared" / "datasets" / "human-segmentation-dataset-master.zip"


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.fail(f"reference dataset missing: {SHARED_ZIP} (CI lays ../shared beside the clone)")
    return SHARED_ZIP


def load_params(path: Path | None = None) -> dict:
    return YAML(typ="safe", pure=True).load((path or PROJECT_ROOT / "params.yaml").read_text())


@pytest.fixture
def params() -> dict:
    """A fresh copy of the committed params.yaml as plain data."""
    return load_params()


def tiny_params(params: dict, source: str) -> dict:
    """Params for a fast end-to-end run: 64 px, 2 epochs, a small random-init encoder."""
    params["data"].update(source=source, image_size=64)
    params["model"].update(encoder="resnet18", encoder_weights=None)
    params["train"].update(epochs=2, batch_size=16, num_workers=0, device="cpu")
    return params


def write_params(path: Path, params: dict) -> None:
    yaml = YAML()
    with path.open("w") as handle:
        yaml.dump(params, handle)


def make_dataset(root: Path, count: int = 12, size: int = 48, *, image_dir="images", mask_dir="masks", seed: int = 0) -> Path:
    """A folder dataset of random photos with one filled rectangle each as the mask."""
    import cv2

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


def build_test_split(
    raw: Path, out: Path, image_size: int, val_fraction: float, test_fraction: float, seed: int = 0,
    classes: tuple[str, ...] = ("background", "person"),
) -> Path:
    """Run the split stage's work on ``raw`` into ``out/split`` (report beside it); returns the split folder."""
    from pipeline.config import DataConfig, SplitConfig
    from pipeline.preparation import build_split

    data = DataConfig(source="unused", manifest=None, layout="auto", classes=list(classes), palette=None,
                      on_bad_sample="error", image_size=image_size)
    split = SplitConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    build_split(raw, out / "split", out / "report.json", data, split)
    return out / "split"


def copy_project(dest: Path) -> Path:
    """Copy the project as a clean clone would hold it (tracked and unignored files) into ``dest``, as a git repo."""
    from scripts.demo import copy_tracked_files

    copy_tracked_files(PROJECT_ROOT, dest)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest
