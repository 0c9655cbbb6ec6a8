import math
from pathlib import Path

import pytest
import torch

from pipeline.core.config import parse_config
from pipeline.core.device import Precision
from pipeline.core.errors import ModelError
from pipeline.evaluate.predictions import evaluate_checkpoint
from pipeline.model.checkpoint import load_model, read_checkpoint
from pipeline.train import distributed
from pipeline.train.loop import NonFiniteLossError, recompute_batchnorm_statistics
from pipeline.train.session import (
    TrainingSession,
    build_optimiser,
    build_scaler,
    read_resume_checkpoint,
    wrap_model,
)
from tests.helpers.datasets import build_test_split, make_dataset
from tests.helpers.modelstore import tiny_checkpoint


class ListTracker:
    def __init__(self, stop_after: int | None = None, run_id: str = "run-1", experiment_id: str = "7"):
        self.rows: list[dict] = []
        self.stop_after = stop_after
        self.run_id, self.experiment_id = run_id, experiment_id

    def log_epoch(self, row: dict) -> None:
        self.rows.append(row)
        if self.stop_after is not None and row["epoch"] == self.stop_after:
            raise KeyboardInterrupt("simulated Ctrl-C")


@pytest.fixture(scope="module")
def split_dir(module_folder) -> Path:
    root = module_folder("data")
    return build_test_split(make_dataset(root / "raw", count=16, size=40), root, 32, 0.25, 0.25)


def tiny_config(params: dict, **train) -> object:
    params["data"]["image_size"] = 32
    params["model"].update(encoder="resnet18", encoder_weights=None)
    defaults = {"epochs": 3, "batch_size": 4, "num_workers": 0, "device": "cpu", "lr": 0.01, "amp": False}
    params["train"].update({**defaults, **train})
    return parse_config(params)


def session(cfg, split_dir: Path, out: Path) -> TrainingSession:
    return TrainingSession(
        cfg,
        split_dir=split_dir,
        pretrained_dir=out / "pretrained",
        best_path=out / "best.pt",
        last_path=out / "last.pt",
        history_path=out / "history.csv",
    )


def test_fit_logs_every_epoch_and_keeps_the_best_val_loss_checkpoint(params, split_dir, tmp_path):
    tracker = ListTracker(run_id="abc123", experiment_id="4")
    result = session(tiny_config(params), split_dir, tmp_path).fit(tracker)
    assert [row["epoch"] for row in tracker.rows] == [1, 2, 3]
    assert (tmp_path / "history.csv").read_text().splitlines()[1:] == [
        ",".join(str(row[key]) for key in tracker.rows[0]) for row in tracker.rows
    ]
    assert set(tracker.rows[0]) == {"epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds"}
    best = min(tracker.rows, key=lambda row: row["val_loss"])
    # What the stage writes: metrics/train.json, and models/run.json from the tracker's run.
    assert result.metrics == {
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "val_dice_at_best": best["val_dice"],
    }
    assert (result.best_epoch, result.run_id, result.experiment_id) == (best["epoch"], "abc123", "4")
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == best["epoch"]
    model, meta = load_model(tmp_path / "best.pt")
    assert model(torch.zeros(2, 3, 64, 96)).shape == (2, 1, 64, 96)
    assert meta["image_size"] == 32 and meta["model_config"]["encoder_weights"] is None
    # Evaluating the saved best checkpoint on val reproduces the val loss it was chosen by.
    scores = evaluate_checkpoint(tmp_path / "best.pt", split_dir, "val", 0.5)
    assert scores["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert scores["val_dice"] == pytest.approx(best["val_dice"], rel=1e-4)


def test_validation_after_a_few_steps_scores_with_the_statistics_of_the_trained_weights(params, split_dir, tmp_path):
    # One epoch of two steps: BatchNorm's running averages would still be mostly their initial
    # 0 and 1, and score the model hundreds of times worse than it trains.
    run = session(tiny_config(params, epochs=1), split_dir, tmp_path)
    run.fit(ListTracker())
    (row,) = run.history
    assert row["val_loss"] < 1.5 * row["train_loss"]


def test_batchnorm_statistics_are_the_mean_over_the_images_and_leave_the_rest_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 1, 1))
    batches = [torch.randn(4, 3, 5, 5) * 2 + 1, torch.randn(2, 3, 5, 5) - 3]  # a smaller last batch
    loader = [(images, torch.zeros(len(images), 1, 5, 5)) for images in batches]
    weights = [value.clone() for value in model.parameters()]
    rng = torch.get_rng_state()
    recompute_batchnorm_statistics(model, loader, torch.device("cpu"), desc="test")
    layer = model[1]
    # Over all six images, each batch weighted by its image count; dropout stayed off.
    assert torch.allclose(layer.running_mean, torch.cat(batches).mean(dim=(0, 2, 3)), atol=1e-6)
    expected_var = sum(len(images) * images.var(dim=(0, 2, 3)) for images in batches) / 6
    assert torch.allclose(layer.running_var, expected_var, atol=1e-5)
    assert layer.momentum == 0.1 and not model.training and not layer.training
    assert all(torch.equal(before, after) for before, after in zip(weights, model.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_scheduler_warms_up_then_decays_and_amp_uses_bf16_where_the_cpu_has_it(params, split_dir, tmp_path):
    run = session(tiny_config(params, amp=True, scheduler="cosine", warmup_epochs=1), split_dir, tmp_path)
    expected = "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"
    assert run.precision.name == expected
    run.fit(ListTracker())
    lrs = [row["lr"] for row in run.history]
    # 8 training pairs in batches of 4: 2 steps per epoch; warm-up reaches the peak after epoch 1.
    assert lrs[0] == pytest.approx(0.01) and lrs[1] == pytest.approx(0.005) and lrs[2] == pytest.approx(0.0, abs=1e-9)
    assert all(math.isfinite(row["train_loss"]) for row in run.history)


@pytest.mark.parametrize(("scheduler", "expected"), [("none", [0.005, 0.01, 0.01]), ("onecycle", None)])
def test_other_schedules(params, split_dir, tmp_path, scheduler, expected):
    cfg = tiny_config(params, scheduler=scheduler, warmup_epochs=1)
    run = session(cfg, split_dir, tmp_path)
    seen = []
    for _ in range(6):
        seen.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()
        run.scheduler.step()
    if expected is not None:
        assert seen[::2] == pytest.approx(expected)
    else:  # one-cycle: rises to train.lr by the end of warm-up, then anneals far below it
        assert max(seen) == pytest.approx(0.01, rel=1e-3) and seen[-1] < 0.01 * 0.2 and seen[0] < 0.01 * 0.1


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(params, split_dir, tmp_path):
    cfg = tiny_config(params)
    reference = session(cfg, split_dir, tmp_path / "a")
    reference.fit(ListTracker())

    first = session(cfg, split_dir, tmp_path / "b")
    assert first.run_id is None
    note = r"^interrupted; .*last.pt holds epoch 2 of 3\. .*MLflow run run-123\.$"  # what Ctrl-C prints
    with pytest.raises(KeyboardInterrupt, match=note):
        first.fit(ListTracker(stop_after=2, run_id="run-123"))
    resumed = session(cfg, split_dir, tmp_path / "b")
    assert resumed.resume_note == "resuming after epoch 2 of 3 (run run-123)"
    assert resumed.run_id == "run-123" and [row["epoch"] for row in resumed.history] == [1, 2]
    tracker = ListTracker(run_id="run-123")
    result = resumed.fit(tracker)
    assert [row["epoch"] for row in tracker.rows] == [3] and result.run_id == "run-123"
    assert [row["val_loss"] for row in resumed.history] == [row["val_loss"] for row in reference.history]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_finished_or_foreign_resume_checkpoints_start_fresh(params, split_dir, tmp_path):
    cfg = tiny_config(params, epochs=1)
    session(cfg, split_dir, tmp_path).fit(ListTracker())
    assert "records a finished run" in session(cfg, split_dir, tmp_path).resume_note
    other = tiny_config(params, epochs=1, lr=0.02)
    assert "belongs to other params" in session(other, split_dir, tmp_path).resume_note
    (tmp_path / "last.pt").write_bytes(b"torn")
    assert "is unreadable" in session(cfg, split_dir, tmp_path).resume_note
    assert read_resume_checkpoint(tmp_path / "none.pt", tmp_path / "best.pt", "f", 1) == (None, "starting a new run")
    no_resume = tiny_config(params, epochs=1, resume=False)
    assert session(no_resume, split_dir, tmp_path).resume_note == "starting a new run"


def test_builders_make_the_configured_optimiser_scaler_and_network(params):
    cfg = tiny_config(params, lr=0.003)
    model = torch.nn.Conv2d(3, 1, 1)
    optimiser = build_optimiser(model, cfg.train)
    assert isinstance(optimiser, torch.optim.Adam) and optimiser.param_groups[0]["lr"] == 0.003
    assert optimiser.param_groups[0]["params"] == list(model.parameters())
    # Loss scaling only for fp16; fp32 and bf16 train without it.
    cpu = torch.device("cpu")
    assert build_scaler(Precision("cpu"), cpu) is None and build_scaler(Precision("cpu", torch.bfloat16), cpu) is None
    assert isinstance(build_scaler(Precision("cpu", torch.float16), cpu), torch.amp.GradScaler)
    # One process, no compile: the loop calls the plain model.
    assert wrap_model(model, cfg.train, distributed.Topology(), cpu) is model


def test_non_finite_loss_stops_naming_epoch_and_step(params, split_dir, tmp_path):
    run = session(tiny_config(params), split_dir, tmp_path)
    run.loss_fn = lambda logits, masks: (logits * float("nan")).mean()
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, step 1"):
        run.fit(ListTracker())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"\x80\x02 garbage")
    with pytest.raises(ModelError, match="best.pt: not a readable checkpoint"):
        load_model(tmp_path / "best.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="foreign.pt: not a checkpoint written by this pipeline"):
        load_model(tmp_path / "foreign.pt")


def test_loader_workers_auto_is_none_on_cpu_and_some_on_gpu():
    from pipeline.train.session import loader_workers

    assert loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= 8
    assert loader_workers(3, torch.device("cpu")) == 3


def test_the_same_checkpoint_saved_twice_is_the_same_bytes(tmp_path):
    # torch names a saved archive's inner folder after the file it writes to; an atomic write's
    # random temporary name must not end up inside the checkpoint.
    first = tiny_checkpoint(tmp_path / "a" / "best.pt")
    second = tiny_checkpoint(tmp_path / "b" / "best.pt")
    assert first.read_bytes() == second.read_bytes()
    assert read_checkpoint(first)["image_size"] == 32


def test_fetched_encoder_weights_load_into_the_network_and_are_reproducible(tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    from pipeline.core.classes import PERSON
    from pipeline.core.config import ModelConfig
    from pipeline.fetch.encoder_weights import fetch_pretrained_encoder
    from pipeline.model.network import build_model, load_pretrained_encoder

    get_encoder = smp.encoders.get_encoder

    def seeded_encoder(name, in_channels, weights):  # stands in for the hub download
        torch.manual_seed(7)
        return get_encoder(name, in_channels=in_channels, weights=None)

    monkeypatch.setattr(smp.encoders, "get_encoder", seeded_encoder)
    cfg = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenet")
    fetch_pretrained_encoder(cfg, tmp_path / "a")
    fetch_pretrained_encoder(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "encoder.pt").read_bytes() == (tmp_path / "b" / "encoder.pt").read_bytes()
    model = build_model(cfg, PERSON)
    load_pretrained_encoder(model, cfg, tmp_path / "a")
    expected = seeded_encoder("resnet18", 3, None).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.encoder.state_dict().items())
