"""Training session: data loaders, model, optimiser, resume from ``last.pt``, best checkpoint.

The session is put together from builder functions, one per part, in the order they depend on
each other. Kept free of MLflow and DVC: per-epoch results go to any object with ``log_epoch(row)``
and the run's ids, so the loop can be tested and reused on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from ..core.classes import ClassSpec
from ..core.config import Config, ModelConfig, TrainConfig
from ..core.device import Precision, choose_precision, resolve_device
from ..core.errors import ModelError
from ..core.files import write_csv, write_torch
from ..core.splits import SplitInfo, load_split
from ..model.checkpoint import read_checkpoint, save_checkpoint
from ..model.inputs import SegmentationDataset, eval_transform
from ..model.losses import build_loss, resolve_loss
from ..model.metrics import PER_CLASS_METRICS, SegmentationMetrics
from ..model.network import build_model, load_pretrained_encoder
from . import distributed
from .augmentation import train_transform
from .loop import recompute_batchnorm_statistics, train_one_epoch, validate
from .schedule import build_scheduler

# Dice/IoU during training only monitor progress (model selection uses val loss); a fixed
# threshold keeps evaluate.threshold out of training, so changing it reruns evaluate alone.
# Multi-class models take the top class and ignore it.
MONITOR_THRESHOLD = 0.5
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds")
RESUME_FORMAT = "unet-pipeline/resume-v1"
# Keys that change how training runs but not what it computes; resuming across them is fine.
RUNTIME_ONLY_KEYS = frozenset({"num_workers", "device", "resume", "compile"})
NEW_RUN = "starting a new run"
# The training images the BatchNorm statistics are recomputed on before each validation (all of
# them up to this many, evenly spread beyond): plenty for a stable mean and variance per channel,
# and a small share of an epoch once the training split is larger.
BATCHNORM_STATISTICS_IMAGES = 256


class Tracker(Protocol):
    """Where a session's epochs go, and the run they belong to (recorded in ``last.pt``)."""

    run_id: str | None
    experiment_id: str | None

    def log_epoch(self, row: dict[str, float]) -> None: ...


class NoTracker:
    """For DDP ranks other than 0, which train but log nothing."""

    run_id: str | None = None
    experiment_id: str | None = None

    def log_epoch(self, row: dict[str, float]) -> None:
        pass


@dataclass
class TrainState:
    """Everything besides tensors that ``last.pt`` must restore to continue a run."""

    fingerprint: str
    epoch: int = 0
    finished: bool = False
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def best_row(self) -> dict[str, float]:
        return next(row for row in self.history if row["epoch"] == self.best_epoch)


@dataclass(frozen=True)
class TrainResult:
    """What a finished ``fit`` hands the train stage: the best epoch's scores and the run that holds them."""

    best_epoch: int
    best_val_loss: float
    val_dice_at_best: float
    run_id: str | None
    experiment_id: str | None

    @classmethod
    def of(cls, state: TrainState, experiment_id: str | None) -> TrainResult:
        best = state.best_row
        return cls(state.best_epoch, best["val_loss"], best["val_dice"], state.run_id, experiment_id)

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics/train.json."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "val_dice_at_best": self.val_dice_at_best,
        }


def history_fields(classes: ClassSpec) -> tuple[str, ...]:
    """Columns of metrics/history.csv: per-class validation scores too for multi-class models."""
    if classes.binary:
        return HISTORY_FIELDS
    per_class = tuple(f"val_{metric}_{name}" for metric in PER_CLASS_METRICS for name in classes.names)
    return HISTORY_FIELDS[:-2] + per_class + HISTORY_FIELDS[-2:]


def training_fingerprint(cfg: Config, split_info: SplitInfo) -> str:
    """Identifies what a run computes, so ``last.pt`` is only resumed into the same run."""
    train = {key: value for key, value in cfg.train.model_dump().items() if key not in RUNTIME_ONLY_KEYS}
    relevant = {
        "data_hash": split_info.data_hash,
        "data": cfg.data.image_size,
        "resize": split_info.resize,
        "model": cfg.model.model_dump(),
        "train": train,
        "classes": split_info.classes.to_dict(),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _seed_worker(worker_id: int) -> None:
    # Albumentations keeps its own RNG; give each worker a distinct, reproducible stream.
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def loader_workers(setting: int | str, device: torch.device) -> int:
    """``auto``: none on CPU, where worker processes take cores from the training threads (measured
    in docs/performance.md); on a GPU, enough to keep it fed."""
    if setting != "auto":
        return int(setting)
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def _augmented_loader(
    images: np.ndarray, masks: np.ndarray, cfg: TrainConfig, options: dict[str, Any], replicas: int = 1, rank: int = 0
) -> DataLoader:
    """Training pairs augmented, in a seeded permutation (this rank's share of it); ``start_epoch``
    reseeds both."""
    data = SegmentationDataset(images, masks, train_transform())
    sampler = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=True, seed=cfg.seed)
    return DataLoader(
        data,
        sampler=sampler,
        drop_last=len(sampler) > cfg.batch_size,
        generator=torch.Generator(),
        worker_init_fn=_seed_worker,
        **options,
    )


def build_loaders(
    cfg: TrainConfig, split_dir: Path, device: torch.device, topology: distributed.Topology
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The training loader (this rank's share), the statistics loader (the BatchNorm statistics'
    training images, up to ``BATCHNORM_STATISTICS_IMAGES``, all in the main process) and the
    validation loader. ``start_epoch`` reseeds the first two."""
    cuda = device.type == "cuda"
    workers = loader_workers(cfg.num_workers, device)
    options = dict(
        batch_size=cfg.batch_size,
        num_workers=workers,
        pin_memory=cuda,
        # Re-forked workers each epoch keep augmentation reproducible across a resume;
        # on CUDA throughput matters more.
        persistent_workers=cuda and workers > 0,
    )
    images, masks = load_split(split_dir, "train")
    # Every rank draws its share of the same seeded permutation.
    train = _augmented_loader(images, masks, cfg, options, topology.world_size, topology.rank)
    stride = math.ceil(len(images) / BATCHNORM_STATISTICS_IMAGES)
    statistics = _augmented_loader(images[::stride], masks[::stride], cfg, options)
    val = DataLoader(SegmentationDataset(*load_split(split_dir, "val"), eval_transform()), shuffle=False, **options)
    return train, statistics, val


def start_epoch(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Reseed ``loader`` (from ``build_loaders``) for ``epoch``.

    Shuffle order and augmentation depend on (seed, epoch) only, never on how many epochs
    this process has run: a resumed run sees the same batches.
    """
    epoch_seed = seed * 100_003 + epoch
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(epoch_seed + rank)
    loader.dataset.transform.set_random_seed(epoch_seed + rank)


def build_training_model(
    cfg: ModelConfig, classes: ClassSpec, pretrained_dir: Path, device: torch.device
) -> tuple[nn.Module, str | None]:
    """The network training starts from, on ``device`` and channels-last, with the encoder
    weights fetched into ``pretrained_dir``; and that file's SHA-256 (None without one), which
    the run and the model card record."""
    model = build_model(cfg, classes)
    weights_sha256 = load_pretrained_encoder(model, cfg, pretrained_dir)
    model.to(device, memory_format=torch.channels_last)
    return model, weights_sha256


def wrap_model(model: nn.Module, cfg: TrainConfig, topology: distributed.Topology, device: torch.device) -> nn.Module:
    """What the loop calls: ``model`` under DDP when torchrun started several processes, compiled
    when ``train.compile`` asks; checkpoints always hold the plain model's weights."""
    network = model
    if topology.enabled:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        network = torch.compile(network)
    return network


def build_optimiser(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def build_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for the precisions that need one (fp16); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision.needs_grad_scaler else None


def read_resume_checkpoint(
    last_path: Path, best_path: Path, fingerprint: str, epochs: int
) -> tuple[dict[str, Any] | None, str]:
    """``last.pt``'s contents when they continue the run ``fingerprint`` names, else None; and
    what the session does, in words. A torn, foreign or finished ``last.pt`` means a new run."""
    if not last_path.exists():
        return None, NEW_RUN
    try:
        saved = torch.load(last_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file must not block a fresh start
        return None, f"{NEW_RUN} ({last_path} is unreadable: {type(exc).__name__})"
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT:
        return None, f"{NEW_RUN} ({last_path} is not a resume checkpoint)"
    state = saved["state"]
    if state["fingerprint"] != fingerprint:
        return None, f"{NEW_RUN} ({last_path} belongs to other params or data)"
    if state["finished"]:
        return None, f"{NEW_RUN} ({last_path} records a finished run)"
    try:
        best_fingerprint = read_checkpoint(best_path).get("fingerprint")
    except ModelError:
        best_fingerprint = None
    if best_fingerprint != fingerprint:
        return None, f"{NEW_RUN} ({best_path} is missing or from another run)"
    return saved, f"resuming after epoch {state['epoch']} of {epochs} (run {state['run_id']})"


def restore_resume_checkpoint(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> TrainState:
    """Load what ``read_resume_checkpoint`` accepted into the session's parts; returns its state."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(**saved["state"])


def save_resume_checkpoint(
    path: Path,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    payload = {
        "format": RESUME_FORMAT,
        "state": state.__dict__,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "torch_rng": torch.get_rng_state(),
    }
    write_torch(path, payload)


class TrainingSession:
    """One training run's parts, built by the functions above; ``fit`` trains the epochs left."""

    def __init__(
        self,
        cfg: Config,
        *,
        split_dir: Path,
        pretrained_dir: Path,
        best_path: Path,
        last_path: Path,
        history_path: Path,
    ):
        self.cfg, self.best_path, self.last_path, self.history_path = cfg, best_path, last_path, history_path
        self.topology, self.device = distributed.setup(resolve_device(cfg.train.device))
        self.precision = choose_precision(cfg.train.amp, self.device)
        self.split_info = SplitInfo.read(split_dir)
        self.classes = self.split_info.classes
        # Before any work: a loss that does not fit the classes fails at start-up, naming train.loss.
        self.loss_fn = build_loss(cfg.train.loss, self.classes)
        torch.manual_seed(cfg.train.seed)
        self.train_loader, self.statistics_loader, self.val_loader = build_loaders(
            cfg.train, split_dir, self.device, self.topology
        )
        self.model, self.encoder_weights_sha256 = build_training_model(
            cfg.model, self.classes, pretrained_dir, self.device
        )
        self.network = wrap_model(self.model, cfg.train, self.topology, self.device)
        self.optimizer = build_optimiser(self.model, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, len(self.train_loader))
        self.scaler = build_scaler(self.precision, self.device)
        fingerprint = training_fingerprint(cfg, self.split_info)
        saved, self.resume_note = (
            read_resume_checkpoint(last_path, best_path, fingerprint, cfg.train.epochs)
            if cfg.train.resume
            else (None, NEW_RUN)
        )
        self.state = (
            restore_resume_checkpoint(saved, self.model, self.optimizer, self.scheduler, self.scaler)
            if saved is not None
            else TrainState(fingerprint)
        )

    @property
    def run_id(self) -> str | None:
        """The MLflow run a resumed session continues; None for a new one."""
        return self.state.run_id

    @property
    def history(self) -> list[dict[str, float]]:
        """The epochs done so far (those of the interrupted run, when resuming)."""
        return self.state.history

    def describe(self) -> str:
        return (
            f"{self.resume_note}; device {self.device}, {self.precision.name}, {self.topology.world_size} process(es)"
        )

    def interrupted_note(self) -> str:
        done = self.state.epoch
        where = f"{self.last_path} holds epoch {done} of {self.cfg.train.epochs}" if done else "no epoch had finished"
        return f"interrupted; {where}. Run `dvc repro` to resume (train.resume: true), MLflow run {self.state.run_id}."

    def start_epoch(self, epoch: int) -> None:
        start_epoch(self.train_loader, self.cfg.train.seed, epoch, self.topology.rank)

    def recompute_statistics(self, epoch: int) -> None:
        """Set the BatchNorm statistics to those of the weights after ``epoch``, on the statistics
        loader's images shuffled and augmented as training does (the inputs the network learnt
        on), seeded as ``epoch``'s training batches are but with generators of their own, which
        leaves training's untouched. In one process with at most ``BATCHNORM_STATISTICS_IMAGES``
        training images, these are the epoch's training batches again."""
        start_epoch(self.statistics_loader, self.cfg.train.seed, epoch, rank=0)
        recompute_batchnorm_statistics(
            self.model, self.statistics_loader, self.device, desc=f"epoch {epoch} BatchNorm", precision=self.precision
        )

    def _validate(self, epoch: int, train_loss: float, started: float) -> dict[str, float]:
        self.recompute_statistics(epoch)
        val_metrics = SegmentationMetrics(MONITOR_THRESHOLD, self.classes)
        val_loss = validate(
            self.model,
            self.val_loader,
            self.loss_fn,
            self.device,
            val_metrics,
            desc=f"epoch {epoch} val",
            precision=self.precision,
            content=self.split_info.content_shapes("val"),
        )
        scores = val_metrics.compute()
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
            **{f"val_{name}": value for name, value in scores.items() if not name.endswith("_pooled")},
        }
        return {field: row[field] for field in history_fields(self.classes)}

    def _save_best(self, row: dict[str, float]) -> None:
        save_checkpoint(
            self.best_path,
            self.model,
            self.cfg.model,
            self.classes,
            image_size=self.cfg.data.image_size,
            resize=self.split_info.resize,
            loss=resolve_loss(self.cfg.train.loss, self.classes.binary),
            epoch=int(row["epoch"]),
            val_loss=row["val_loss"],
            val_dice=row["val_dice"],
            data_hash=self.split_info.data_hash,
            fingerprint=self.state.fingerprint,
        )

    def train_epoch(self, epoch: int, loader: Iterable | None = None) -> tuple[float, int]:
        """One epoch of training steps on ``loader`` (the training loader unless a benchmark wraps
        it); the summed loss and the image count of this process."""
        return train_one_epoch(
            self.network,
            self.train_loader if loader is None else loader,
            self.loss_fn,
            self.optimizer,
            self.device,
            epoch,
            self.precision,
            self.scheduler,
            self.scaler,
        )

    def fit(self, tracker: Tracker) -> TrainResult:
        """Train the remaining epochs into ``tracker``'s run. Under DDP every rank trains; rank 0
        validates, saves and logs. Ctrl-C raises KeyboardInterrupt saying what ``last.pt`` holds."""
        if self.topology.is_main:  # other ranks log nothing and keep no run
            self.state.run_id = tracker.run_id
        try:
            self._train_epochs(tracker)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(self.interrupted_note()) from None
        return TrainResult.of(self.state, tracker.experiment_id)

    def _train_epochs(self, tracker: Tracker) -> None:
        main = self.topology.is_main
        for epoch in range(self.state.epoch + 1, self.cfg.train.epochs + 1):
            started = time.perf_counter()
            self.start_epoch(epoch)
            total, seen = self.train_epoch(epoch)
            total, seen = distributed.sum_across([total, seen], self.topology, self.device)
            row = distributed.from_main(self._validate(epoch, total / seen, started) if main else None, self.topology)
            self.state.history.append(row)
            improved = row["val_loss"] < self.state.best_val_loss
            if improved:
                self.state.best_epoch, self.state.best_val_loss = epoch, row["val_loss"]
            self.state.epoch = epoch
            self.state.finished = epoch == self.cfg.train.epochs
            if not main:
                continue
            if improved:
                self._save_best(row)
            # Before last.pt: whatever epoch last.pt records, the history file holds it too, so
            # `dvc plots show` follows a run live and still shows every epoch after a kill.
            write_csv(self.history_path, self.state.history, history_fields(self.classes))
            save_resume_checkpoint(self.last_path, self.state, self.model, self.optimizer, self.scheduler, self.scaler)
            tracker.log_epoch(row)
            print(
                f"epoch {epoch}/{self.cfg.train.epochs}: "
                f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_dice {row['val_dice']:.4f}  lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s"
                + ("  *best*" if improved else ""),
                flush=True,
            )
