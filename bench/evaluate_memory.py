"""Peak memory of the evaluate stage's work for two sizes of the validation and test splits.

    python bench/evaluate_memory.py [--image-size 128] [--images 32 128] [--encoder resnet18]

One model (params.yaml's model section and classes, random weights: what evaluate keeps does
not depend on them), saved as models/best.pt, and generated photos and masks written as the
split stage writes them: --images photos of --image-size px in each of val and test (the test
split's photo-size masks at twice that side). Each size runs evaluate's own code
(`evaluate_checkpoint`: both passes, the threshold sweep, the ONNX export and its check, every
report) in a fresh process, so that its peak resident memory is its own.

Each line: images per split, seconds, peak resident memory. The last line is
`peak_growth_per_image_mib: X.XXX`, the difference of the two peaks over the difference of the
images (val and test together), beside `logits_per_image_mib`, what one image's logits alone
take at this size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

# Run as a script: the project root, not bench/, must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline  # noqa: E402, F401  (environment set-up before albumentations is imported)

os.environ.setdefault("TQDM_DISABLE", "1")
MIB = 1024 * 1024


def _model_config(encoder: str | None):
    from pipeline.core.config import load_config

    cfg = load_config()
    return cfg, cfg.model.model_copy(update={"encoder": encoder or cfg.model.encoder, "encoder_weights": None})


def _prepare(project: Path, image_size: int, images: int, encoder: str | None) -> None:
    """models/best.pt and data/split/ under ``project``, made in a process that is then gone."""
    import torch

    from pipeline.core import paths
    from pipeline.core.classes import ClassSpec
    from pipeline.core.extensions import AUTO
    from pipeline.core.splits import SPLITS, SplitInfo, StagedRows, write_photo_size_mask, write_split
    from pipeline.model.checkpoint import save_checkpoint
    from pipeline.model.losses import resolve_loss
    from pipeline.model.network import build_model

    cfg, model_cfg = _model_config(encoder)
    classes = ClassSpec.of(cfg.data.classes, cfg.data.palette)
    torch.manual_seed(0)
    save_checkpoint(
        project / paths.BEST_CHECKPOINT,
        build_model(model_cfg, classes),
        model_cfg,
        classes,
        loss=resolve_loss(AUTO, classes.binary),
        image_size=image_size,
    )
    rng = np.random.default_rng(0)
    total = 2 * images
    # Smooth fields, as photos and masks are, not pixel noise.
    small = rng.integers(0, 256, (total, 8, 8, 3), dtype=np.uint8)
    photos = np.stack([cv2.resize(field, (image_size, image_size), interpolation=cv2.INTER_CUBIC) for field in small])
    masks = (photos[..., 0] > 127).astype(np.uint8) * (classes.count - 1)
    ids = [f"photo{index:05d}" for index in range(total)]
    split_ids = {"train": [], "val": ids[:images], "test": ids[images:]}
    counts = {name: len(split_ids[name]) for name in SPLITS}
    side = 2 * image_size  # the photos' own size: the test masks are kept at it below
    shapes = {name: [(side, side)] * len(split_ids[name]) for name in SPLITS}
    info = SplitInfo("0" * 64, image_size, classes, counts, split_ids, "squash", shapes)
    split_dir = project / paths.SPLIT_DIR
    split_dir.mkdir(parents=True)
    with StagedRows(split_dir, image_size) as rows:
        for photo, mask in zip(photos, masks, strict=True):
            rows.append(photo, mask)
        write_split(split_dir, ids, rows, info)
    for index, mask in enumerate(masks[images:]):
        write_photo_size_mask(split_dir, "test", index, cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST))


def measure(project: Path, encoder: str | None) -> tuple[float, float]:
    """Seconds of evaluate's work on ``project`` and this process's peak resident memory (MiB)."""
    from pipeline.evaluate.evaluation import evaluate_checkpoint

    cfg, model_cfg = _model_config(encoder)  # from this project's params.yaml, before moving to ``project``
    cfg = cfg.model_copy(update={"model": model_cfg})
    os.chdir(project)  # evaluate reads and writes paths relative to the project root
    started = time.perf_counter()
    evaluate_checkpoint(cfg, "bench", data_source="generated", encoder_weights_sha256=None)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="photo side in px, a multiple of 32")
    parser.add_argument("--images", type=int, nargs=2, default=[32, 128], help="images in each of val and test")
    parser.add_argument("--encoder", help="another encoder than params.yaml's")
    args = parser.parse_args()
    small, large = sorted(args.images)
    if small == large:
        parser.error("--images needs two different sizes")

    peaks = {}
    print(f"bench: evaluate of a {args.image_size} px model on val and test of {small} and {large} images each")
    print(f"{'images':>7} {'seconds':>8} {'peak RSS':>12}")
    for images in (small, large):
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
            project = Path(tmp)
            _fresh_process(_prepare, project, args.image_size, images, args.encoder)
            seconds, peaks[images] = _fresh_process(measure, project, args.encoder)
        print(f"{images:>7} {seconds:>8.1f} {peaks[images]:>8.1f} MiB")
    growth = (peaks[large] - peaks[small]) / (2 * (large - small))
    print(f"peak_growth_per_image_mib: {growth:.3f}")
    print(f"logits_per_image_mib: {args.image_size**2 * 4 / MIB:.3f}")


if __name__ == "__main__":
    main()
