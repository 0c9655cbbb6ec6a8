"""BatchNorm statistics: validation with the running averages training keeps vs the recomputed ones.

    python bench/batchnorm.py [--seeds 42 43 44] [--source synthetic:96] [--epochs 12]

Runs on `make demo`'s settings (scripts/demo.py: generated shapes, 64 px, U-Net + resnet18
from random weights, 12 epochs, batch 16) over params.yaml, on another data.source or number
of epochs if asked. Per seed, one training session trains epoch by epoch, and after each
epoch the same weights are scored on the validation split twice: with the running averages
BatchNorm kept while training (carried from epoch to epoch as if nothing else touched them:
what eval mode uses without the recomputation) and with the statistics the train stage
recomputes on the training images before each validation. Training reads neither, so both
score the same weights.

Printed per epoch: train loss, val loss and Dice with each, and the seconds of the training
epoch, the statistics pass and one validation. Then, per kind of statistics, the mean ±
standard deviation over seeds of the val loss of the first three epochs, of the last epoch,
and of the epoch with the lowest val loss (the one the train stage keeps) with its Dice; the
last line is `statistics_pass_vs_training: X.XX`, the pass's seconds over the training
epoch's (medians over all epochs).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ruamel.yaml import YAML
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.core.config import parse_config
from pipeline.core.paths import PRETRAINED_DIR
from pipeline.fetch.dataset import fetch_dataset
from pipeline.model.metrics import SegmentationMetrics
from pipeline.split.preparation import build_split
from pipeline.train.loop import validate
from pipeline.train.session import MONITOR_THRESHOLD, TrainingSession

PROJECT = Path(__file__).resolve().parents[1]
# The demo's settings live in scripts/demo.py, which imports its neighbour project_copy.
sys.path[:0] = [str(PROJECT), str(PROJECT / "scripts")]
from scripts.demo import DEMO_PARAMS  # noqa: E402

KINDS = ("running", "recomputed")


def batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    layers = [layer for layer in model.modules() if isinstance(layer, _BatchNorm) and layer.track_running_stats]
    return [buffer for layer in layers for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked)]


def score(session: TrainingSession) -> tuple[float, float]:
    """Val loss and Dice, as the train stage scores an epoch."""
    metrics = SegmentationMetrics(MONITOR_THRESHOLD, session.classes)
    loss = validate(
        session.model, session.val_loader, session.loss_fn, session.device, metrics, "val", session.precision
    )
    return loss, metrics.compute()["dice"]


def train_seed(params: dict, seed: int, split_dir: Path, workdir: Path) -> list[dict[str, float]]:
    params = copy.deepcopy(params)
    params["train"]["seed"] = seed
    cfg = parse_config(params)
    session = TrainingSession(
        cfg,
        split_dir=split_dir,
        pretrained_dir=PROJECT / PRETRAINED_DIR,
        best_path=workdir / "best.pt",
        last_path=workdir / "last.pt",
        history_path=workdir / "history.csv",
    )
    buffers = batchnorm_buffers(session.model)
    running = [buffer.clone() for buffer in buffers]
    rows = []
    for epoch in range(1, cfg.train.epochs + 1):
        session.start_epoch(epoch)
        for buffer, kept in zip(buffers, running, strict=True):
            buffer.copy_(kept)  # the running averages go on from where training left them
        started = time.perf_counter()
        total, seen = session.train_epoch(epoch)
        train_seconds = time.perf_counter() - started
        running = [buffer.clone() for buffer in buffers]
        running_loss, running_dice = score(session)
        started = time.perf_counter()
        session.recompute_statistics(epoch)
        statistics_seconds = time.perf_counter() - started
        started = time.perf_counter()
        recomputed_loss, recomputed_dice = score(session)
        row = {
            "epoch": epoch,
            "train_loss": total / seen,
            "running_val_loss": running_loss,
            "running_val_dice": running_dice,
            "recomputed_val_loss": recomputed_loss,
            "recomputed_val_dice": recomputed_dice,
            "train_seconds": train_seconds,
            "statistics_seconds": statistics_seconds,
            "val_seconds": time.perf_counter() - started,
        }
        print(
            f"seed {seed} epoch {epoch:2d}: train_loss {row['train_loss']:.4f}  "
            + "  ".join(
                f"{kind}: val_loss {row[f'{kind}_val_loss']:.4f} val_dice {row[f'{kind}_val_dice']:.4f}"
                for kind in KINDS
            )
            + f"  seconds: train {train_seconds:.1f} statistics {statistics_seconds:.1f} val {row['val_seconds']:.1f}",
            flush=True,
        )
        rows.append(row)
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def summary(runs: list[list[dict[str, float]]]) -> list[str]:
    """Per kind of statistics: val loss of the first epochs, of the last, and at the lowest val loss with its Dice."""
    first = range(min(3, len(runs[0])))
    lines = []
    for kind in KINDS:
        loss = f"{kind}_val_loss"
        best = [min(rows, key=lambda row: row[loss]) for rows in runs]
        lines.append(
            f"{kind:10s}  "
            + "  ".join(f"epoch {epoch + 1} val_loss {spread([rows[epoch][loss] for rows in runs])}" for epoch in first)
            + f"  last val_loss {spread([rows[-1][loss] for rows in runs])}"
            + f"  best val_loss {spread([row[loss] for row in best])}"
            + f" val_dice {spread([row[f'{kind}_val_dice'] for row in best])}"
            + f" (epochs {', '.join(str(row['epoch']) for row in best)})"
        )
    rows = [row for run in runs for row in run]
    share = statistics.median(row["statistics_seconds"] for row in rows) / statistics.median(
        row["train_seconds"] for row in rows
    )
    return [*lines, f"statistics_pass_vs_training: {share:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="train.seed values")
    parser.add_argument("--source", default=DEMO_PARAMS["data"]["source"], help="data.source (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=DEMO_PARAMS["train"]["epochs"], help="default: the demo's")
    args = parser.parse_args()
    params = YAML(typ="safe", pure=True).load((PROJECT / "params.yaml").read_text())
    for section, values in DEMO_PARAMS.items():
        params[section].update(values)
    params["data"]["source"], params["train"]["epochs"] = args.source, args.epochs
    cfg = parse_config(params)
    print(
        f"bench: {cfg.data.source}, {cfg.data.image_size} px, {cfg.model.arch} {cfg.model.encoder} "
        f"({cfg.model.encoder_weights or 'random init'}), {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
        f"seeds {' '.join(map(str, args.seeds))}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="batchnorm-") as scratch:
        workdir = Path(scratch)
        raw = fetch_dataset(
            cfg.data.source, workdir / "raw", manifest=None, cache_dir=workdir / "cache", classes=len(cfg.data.classes)
        )
        build_split(raw, workdir / "split", workdir / "report.json", cfg.data, cfg.split)
        runs = [train_seed(params, seed, workdir / "split", workdir) for seed in args.seeds]
    print("\n".join(summary(runs)))


if __name__ == "__main__":
    main()
