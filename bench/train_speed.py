"""Training throughput: a seed-notebook-style loop against this pipeline, side by side.

    python bench/train_speed.py [--source data/raw] [--image-size 320] [--epochs 4]

Both loops train the same model (params.yaml's model section, same initial weights) at the
same image size and batch size on the same split, one after the other in fresh processes
of this invocation. The notebook loop decodes every full-size photo and resizes it in
the main process at every step, in fp32; the pipeline reads the split prepared once,
with its loader, precision and layout choices from params.yaml. Reported per loop:
training images/s, the share of step time spent waiting for data, peak memory, val Dice
after each epoch and the training time until val Dice first reaches --target-dice
(the pipeline's includes its one-off decode-and-resize and the BatchNorm statistics it
recomputes before each validation, as the train stage does). Then
`time_to_dice_vs_notebook: X.XX`: the training time the notebook loop needs to reach its
best val Dice within these epochs, divided by the time the pipeline needs to reach that
Dice (0.00 when it does not within these epochs). The last line is
`speedup_vs_notebook_loop: X.XX` (pipeline images/s / notebook images/s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import albumentations as A
import torch
from ruamel.yaml import YAML
from torch.utils.data import DataLoader, Dataset

import pipeline  # noqa: F401  (environment set-up before albumentations is imported)
from pipeline.core.classes import ClassSpec
from pipeline.core.config import load_config, parse_config
from pipeline.core.device import Precision, resolve_device
from pipeline.core.paths import PRETRAINED_DIR
from pipeline.core.splits import SplitInfo, load_split
from pipeline.fetch.dataset import fetch_dataset
from pipeline.model.inputs import SegmentationDataset, eval_transform
from pipeline.model.losses import build_loss
from pipeline.model.metrics import SegmentationMetrics
from pipeline.model.network import build_model, load_pretrained_encoder
from pipeline.split.layouts import Pair, find_inventory
from pipeline.split.preparation import build_split
from pipeline.split.samples import read_pair
from pipeline.train.loop import validate
from pipeline.train.session import TrainingSession

MONITOR_THRESHOLD = 0.5


class Timed:
    """Wraps a loader and adds up the time spent waiting for each batch."""

    def __init__(self, loader):
        self.loader, self.waiting = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waiting += time.perf_counter() - started
            yield batch


class NotebookDataset(Dataset):
    """As in the reference notebook: read, decode and resize the full-size files at every access."""

    def __init__(self, pairs: list[Pair], size: int, augment: bool, classes: ClassSpec):
        steps = [A.Resize(size, size)] + ([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if augment else [])
        self.pairs, self.classes = pairs, classes
        self.transform = A.Compose(steps + [A.Normalize()], seed=0)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        sample = read_pair(pair, pair.image.read_bytes(), pair.mask.read_bytes(), self.classes)
        out = self.transform(image=sample.image, mask=sample.mask)
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), torch.from_numpy(out["mask"])[None].float()


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_utilisation(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # needs NVML (pynvml), which a CPU-only install lacks
        return None


def val_dice(model, loader, loss_fn, device, classes) -> float:
    """Both loops are scored the same way: fp32, the pipeline's metrics, the monitor threshold."""
    metrics = SegmentationMetrics(MONITOR_THRESHOLD, classes)
    validate(model, loader, loss_fn, device, metrics, "val", Precision(device.type))
    return metrics.compute()["dice"]


def notebook_loop(cfg, pairs, val_loader, epochs, target):
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    classes = ClassSpec.of(cfg.data.classes, cfg.data.palette)
    model = build_model(cfg.model, classes)
    load_pretrained_encoder(model, cfg.model, PRETRAINED_DIR)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = build_loss(cfg.train.loss, classes)
    loader = Timed(
        DataLoader(
            NotebookDataset(pairs, cfg.data.image_size, augment=True, classes=classes),
            batch_size=cfg.train.batch_size,
            shuffle=True,
            drop_last=True,
        )
    )
    train_seconds, images, dice, elapsed, utilisation = 0.0, 0, [], [], []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for batch_images, batch_masks in loader:
            batch_images, batch_masks = batch_images.to(device), batch_masks.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(batch_images), batch_masks)
            loss.backward()
            optimizer.step()
            images += len(batch_images)
        train_seconds += time.perf_counter() - started
        utilisation.append(_gpu_utilisation(device))
        dice.append(val_dice(model, val_loader, loss_fn, device, classes))
        elapsed.append(train_seconds)
    return _result(images, train_seconds, loader.waiting, dice, elapsed, target, device, utilisation)


def pipeline_loop(cfg, split_dir, prepare_seconds, val_loader, epochs, target):
    with tempfile.TemporaryDirectory() as workdir:
        session = TrainingSession(
            cfg,
            split_dir=split_dir,
            pretrained_dir=PRETRAINED_DIR,
            best_path=Path(workdir) / "best.pt",
            last_path=Path(workdir) / "last.pt",
            history_path=Path(workdir) / "history.csv",
        )
        loader = Timed(session.train_loader)
        train_seconds, statistics_seconds, images, dice, elapsed, utilisation = 0.0, 0.0, 0, [], [], []
        for epoch in range(1, epochs + 1):
            session.start_epoch(epoch)
            started = time.perf_counter()
            images += session.train_epoch(epoch, loader)[1]
            train_seconds += time.perf_counter() - started
            utilisation.append(_gpu_utilisation(session.device))
            started = time.perf_counter()
            session.recompute_statistics(epoch)
            statistics_seconds += time.perf_counter() - started
            dice.append(val_dice(session.model, val_loader, session.loss_fn, session.device, session.classes))
            elapsed.append(prepare_seconds + train_seconds + statistics_seconds)
        result = _result(images, train_seconds, loader.waiting, dice, elapsed, target, session.device, utilisation)
        return result | {"prepare_seconds": prepare_seconds, "precision": session.precision.name}


def time_to_dice(result: dict, target: float) -> float | None:
    """Training time (after each epoch's validation) until val Dice first reaches ``target``."""
    reached = (seconds for dice, seconds in zip(result["dice"], result["elapsed"], strict=True) if dice >= target)
    return next(reached, None)


def _result(images, seconds, waiting, dice, elapsed, target, device, utilisation):
    busy = [value for value in utilisation if value is not None]
    return {
        "images_per_second": images / seconds,
        "data_share": waiting / seconds,
        "peak_mib": _peak_memory_mib(device),
        "dice": dice,
        "elapsed": elapsed,
        "time_to_dice": time_to_dice({"dice": dice, "elapsed": elapsed}, target),
        "gpu_utilisation": sum(busy) / len(busy) if busy else None,
    }


def _run(loop_name, params, split_dir, prepare_seconds, train_pairs, epochs, target):
    cfg = parse_config(params)
    # Both loops are scored on the same prepared val split.
    val_loader = DataLoader(SegmentationDataset(*load_split(split_dir, "val"), eval_transform()), batch_size=16)
    if loop_name == "notebook_loop":
        return notebook_loop(cfg, train_pairs, val_loader, epochs, target)
    return pipeline_loop(cfg, split_dir, prepare_seconds, val_loader, epochs, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", default="data/raw", help="dataset folder or archive (default: data/raw from `dvc repro`)"
    )
    parser.add_argument("--image-size", type=int, help="default: params.yaml's data.image_size")
    parser.add_argument("--epochs", type=int, help="default: 10 on CUDA, 4 on CPU")
    parser.add_argument("--target-dice", type=float, default=0.6)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for this run, as with `dvc exp run -S` (repeatable)",
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    cfg = load_config()
    params = cfg.model_dump()
    params["data"]["image_size"] = args.image_size or cfg.data.image_size
    epochs = args.epochs or (10 if cuda else 4)
    params["train"].update(epochs=epochs)
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = YAML(typ="safe", pure=True).load(value)
    if cfg.model.encoder_weights and not (PRETRAINED_DIR / "encoder.pt").exists():
        print(
            f"bench: {PRETRAINED_DIR}/encoder.pt missing (run `dvc repro fetch`): both loops start from random weights"
        )
        params["model"]["encoder_weights"] = None

    with tempfile.TemporaryDirectory() as workdir:
        source = Path(args.source)
        if not source.is_dir():
            source = fetch_dataset(
                args.source,
                Path(workdir) / "raw",
                manifest=None,
                cache_dir=Path(workdir) / "cache",
                classes=len(cfg.data.classes),
            )
        # The pipeline's one-off cost: the split stage itself (decode, repair, resize, split).
        started = time.perf_counter()
        split_dir = Path(workdir) / "split"
        build_split(source, split_dir, Path(workdir) / "report.json", parse_config(params).data, cfg.split)
        prepare_seconds = time.perf_counter() - started
        by_id = {pair.id: pair for pair in find_inventory(source, cfg.data.layout).pairs}
        ids = SplitInfo.read(split_dir).ids
        train_pairs = [by_id[i] for i in ids["train"]]

        device = (
            "cuda: " + torch.cuda.get_device_name() if cuda else f"cpu: {platform.processor() or platform.machine()}"
        )
        print(
            f"bench: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.model.arch} "
            f"{cfg.model.encoder} ({'pretrained' if params['model']['encoder_weights'] else 'random init'}), "
            f"{params['data']['image_size']}px, batch {cfg.train.batch_size}, {epochs} epochs, "
            f"{len(train_pairs)} train / {len(ids['val'])} val pairs"
        )
        results = {}
        for name in ("notebook_loop", "pipeline"):
            # A fresh process each, for a clean peak-memory reading; not a daemon, so the
            # pipeline's loader can start its workers.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[name] = pool.submit(
                    _run, name, params, split_dir, prepare_seconds, train_pairs, epochs, args.target_dice
                ).result()

    print(
        f"{'loop':15s} {'images/s':>9s} {'data wait':>10s} {'peak MiB':>9s} {'GPU util':>9s} "
        f"{'time to Dice ' + str(args.target_dice):>18s}  val Dice per epoch"
    )
    for name, result in results.items():
        reached = f"{result['time_to_dice']:.1f} s" if result["time_to_dice"] is not None else "not reached"
        utilisation = f"{result['gpu_utilisation']:.0f}%" if result["gpu_utilisation"] is not None else "n/a"
        print(
            f"{name:15s} {result['images_per_second']:9.2f} {result['data_share']:9.1%} {result['peak_mib']:9.0f} "
            f"{utilisation:>9s} {reached:>18s}  " + " ".join(f"{value:.3f}" for value in result["dice"])
        )
    pipeline_result, notebook = results["pipeline"], results["notebook_loop"]
    print(
        f"pipeline: {pipeline_result['precision']}, "
        f"prepare (decode + resize once) {pipeline_result['prepare_seconds']:.1f} s, "
        f"included in its time to Dice"
    )
    best = max(notebook["dice"])
    notebook_time, pipeline_time = time_to_dice(notebook, best), time_to_dice(pipeline_result, best)
    print(
        f"notebook_loop's best val Dice {best:.3f}: notebook_loop {notebook_time:.1f} s, pipeline "
        + (f"{pipeline_time:.1f} s" if pipeline_time is not None else f"not within {epochs} epochs")
    )
    print(f"time_to_dice_vs_notebook: {notebook_time / pipeline_time if pipeline_time else 0.0:.2f}")
    print(f"speedup_vs_notebook_loop: {pipeline_result['images_per_second'] / notebook['images_per_second']:.2f}")


if __name__ == "__main__":
    main()
