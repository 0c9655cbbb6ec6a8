"""Training session: data loaders, model, optimiser, resume from ``last.pt``, best checkpoint.

Kept free of MLflow and DVC: per-epoch results go to any object with ``log_epoch(row)``,
so the loop can be tested and reused on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from ..core.classes import ClassSpec
from ..core.config import Config
from ..core.device import choose_precision, resolve_device
from ..core.errors import ModelError
from ..core.extensions import resolve_loss
from ..core.files import write_csv, write_torch
from ..core.splits import SplitInfo, load_split
from ..model.checkpoint import read_checkpoint, save_checkpoint
from ..model.inputs import SegmentationDataset, eval_transform
from ..model.losses import build_loss
from ..model.metrics import PER_CLASS_METRICS, SegmentationMetrics
from ..model.network import build_model, load_pretrained_encoder
from . import distributed
from .augmentation import train_transform
from .loop import train_one_epoch, validate
from .schedule import build_scheduler

# Dice/IoU during training only monitor progress (model selection uses val loss); a fixed
# threshold keeps evaluate.threshold out of training, so changing it reruns evaluate alone.
# Multi-class models take the top class and ignore it.
MONITOR_THRESHOLD = 0.5
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds")
RESUME_FORMAT = "unet-pipeline/resume-v1"
# Keys that change how training runs but not what it computes; resuming across them is fine.
RUNTIME_ONLY_KEYS = frozenset({"num_workers", "device", "resume", "compile"})


class Tracker(Protocol):
    def log_epoch(self, row: dict[str, float]) -> None: ...


class NoTracker:
    """For DDP ranks other than 0, which train but log nothing."""

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


def history_fields(classes: ClassSpec) -> tuple[str, ...]:
    """Columns of metrics/history.csv: per-class validation scores too for multi-class models."""
    if classes.binary:
        return HISTORY_FIELDS
    per_class = tuple(f"val_{metric}_{name}" for metric in PER_CLASS_METRICS for name in classes.names)
    return HISTORY_FIELDS[:-2] + per_class + HISTORY_FIELDS[-2:]


def training_fingerprint(cfg: Config, data_hash: str, classes: ClassSpec) -> str:
    """Identifies what a run computes, so ``last.pt`` is only resumed into the same run."""
    train = {key: value for key, value in cfg.train.model_dump().items() if key not in RUNTIME_ONLY_KEYS}
    relevant = {
        "data_hash": data_hash,
        "data": cfg.data.image_size,
        "model": cfg.model.model_dump(),
        "train": train,
        "classes": classes.to_dict(),
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


class TrainingSession:
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
        cuda = self.device.type == "cuda"
        self.workers = loader_workers(cfg.train.num_workers, self.device)
        self.train_data = SegmentationDataset(*load_split(split_dir, "train"), train_transform())
        # Every rank draws its share of the same seeded permutation; set_epoch reseeds it.
        self.sampler = DistributedSampler(
            self.train_data,
            num_replicas=self.topology.world_size,
            rank=self.topology.rank,
            shuffle=True,
            seed=cfg.train.seed,
        )
        self.generator = torch.Generator()
        loader_options = dict(
            batch_size=cfg.train.batch_size,
            num_workers=self.workers,
            pin_memory=cuda,
            # Re-forked workers each epoch keep augmentation reproducible across a resume;
            # on CUDA throughput matters more.
            persistent_workers=cuda and self.workers > 0,
        )
        self.train_loader = DataLoader(
            self.train_data,
            sampler=self.sampler,
            drop_last=len(self.sampler) > cfg.train.batch_size,
            generator=self.generator,
            worker_init_fn=_seed_worker,
            **loader_options,
        )
        self.val_loader = DataLoader(
            SegmentationDataset(*load_split(split_dir, "val"), eval_transform()), shuffle=False, **loader_options
        )
        self.model = build_model(cfg.model, self.classes)
        # Recorded in the run and the model card: which local weights file the encoder started from.
        self.encoder_weights_sha256 = load_pretrained_encoder(self.model, cfg.model, pretrained_dir)
        self.model.to(self.device, memory_format=torch.channels_last)
        # What the loop calls; checkpoints always hold the plain model's weights.
        self.network: torch.nn.Module = self.model
        if self.topology.enabled:
            self.network = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        if cfg.train.compile:
            self.network = torch.compile(self.network)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, len(self.train_loader))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_grad_scaler else None
        self.state = TrainState(training_fingerprint(cfg, self.split_info.data_hash, self.classes))
        self.resume_note = self._maybe_resume()

    def _maybe_resume(self) -> str:
        if not self.cfg.train.resume or not self.last_path.exists():
            return "starting a new run"
        try:
            saved = torch.load(self.last_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file must not block a fresh start
            return f"starting a new run ({self.last_path} is unreadable: {type(exc).__name__})"
        if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT:
            return f"starting a new run ({self.last_path} is not a resume checkpoint)"
        state = TrainState(**saved["state"])
        if state.fingerprint != self.state.fingerprint:
            return f"starting a new run ({self.last_path} belongs to other params or data)"
        if state.finished:
            return f"starting a new run ({self.last_path} records a finished run)"
        try:
            best_fingerprint = read_checkpoint(self.best_path).get("fingerprint")
        except ModelError:
            best_fingerprint = None
        if best_fingerprint != state.fingerprint:
            return f"starting a new run ({self.best_path} is missing or from another run)"
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = state
        return f"resuming after epoch {state.epoch} of {self.cfg.train.epochs} (run {state.run_id})"

    def _save_last(self) -> None:
        payload = {
            "format": RESUME_FORMAT,
            "state": self.state.__dict__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "torch_rng": torch.get_rng_state(),
        }
        write_torch(self.last_path, payload)

    def interrupted_note(self) -> str:
        done = self.state.epoch
        where = f"{self.last_path} holds epoch {done} of {self.cfg.train.epochs}" if done else "no epoch had finished"
        return f"interrupted; {where}. Run `dvc repro` to resume (train.resume: true), MLflow run {self.state.run_id}."

    def start_epoch(self, epoch: int) -> None:
        # Shuffle order and augmentation depend on (seed, epoch) only, never on how many
        # epochs this process has run: a resumed run sees the same batches.
        epoch_seed = self.cfg.train.seed * 100_003 + epoch
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(epoch_seed + self.topology.rank)
        self.train_data.transform.set_random_seed(epoch_seed + self.topology.rank)

    def _validate(self, epoch: int, train_loss: float, started: float) -> dict[str, float]:
        val_metrics = SegmentationMetrics(MONITOR_THRESHOLD, self.classes)
        val_loss = validate(
            self.model,
            self.val_loader,
            self.loss_fn,
            self.device,
            val_metrics,
            desc=f"epoch {epoch} val",
            precision=self.precision,
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

    def fit(self, tracker: Tracker) -> TrainState:
        """Train the remaining epochs. Under DDP every rank trains; rank 0 validates, saves and logs."""
        main = self.topology.is_main
        for epoch in range(self.state.epoch + 1, self.cfg.train.epochs + 1):
            started = time.perf_counter()
            self.start_epoch(epoch)
            total, seen = train_one_epoch(
                self.network,
                self.train_loader,
                self.loss_fn,
                self.optimizer,
                self.device,
                epoch,
                self.precision,
                self.scheduler,
                self.scaler,
            )
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
                save_checkpoint(
                    self.best_path,
                    self.model,
                    self.cfg.model,
                    self.classes,
                    image_size=self.cfg.data.image_size,
                    loss=resolve_loss(self.cfg.train.loss, self.classes.binary),
                    epoch=epoch,
                    val_loss=row["val_loss"],
                    val_dice=row["val_dice"],
                    data_hash=self.split_info.data_hash,
                    fingerprint=self.state.fingerprint,
                )
            # Before last.pt: whatever epoch last.pt records, the history file holds it too, so
            # `dvc plots show` follows a run live and still shows every epoch after a kill.
            write_csv(self.history_path, self.state.history, history_fields(self.classes))
            self._save_last()
            tracker.log_epoch(row)
            print(
                f"epoch {epoch}/{self.cfg.train.epochs}: "
                f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_dice {row['val_dice']:.4f}  lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s"
                + ("  *best*" if improved else ""),
                flush=True,
            )
        return self.state


def summary(state: TrainState) -> dict[str, Any]:
    best = state.best_row
    return {"best_epoch": state.best_epoch, "best_val_loss": best["val_loss"], "val_dice_at_best": best["val_dice"]}
