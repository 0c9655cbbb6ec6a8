"""The benchmark must keep running as the library changes (its numbers are not checked here)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers.datasets import make_dataset
from tests.helpers.project import PROJECT_ROOT

pytestmark = pytest.mark.process


def run_bench(name: str, *args: str) -> list[str]:
    """Run ``bench/<name>.py`` as a user would and return its output lines."""
    result = subprocess.run(
        [sys.executable, f"bench/{name}.py", *args],
        cwd=PROJECT_ROOT,
        # This checkout's package, not whichever checkout it was installed from.
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def test_train_speed_bench_runs_both_loops_and_prints_the_speedup_line(tmp_path):
    # An archive, as `make bench` is pointed at by hand: exercises the fetch path too.
    source = shutil.make_archive(str(tmp_path / "data"), "zip", make_dataset(tmp_path / "data", count=24, size=48))
    lines = run_bench(
        "train_speed",
        *("--source", source, "--image-size", "32", "--epochs", "1"),
        *("--set", "train.batch_size=4", "--set", "train.num_workers=0"),
    )
    assert re.fullmatch(r"speedup_vs_notebook_loop: \d+\.\d\d", lines[-1])
    assert re.fullmatch(r"time_to_dice_vs_notebook: \d+\.\d\d", lines[-2])
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("notebook_loop ", "pipeline "))}
    assert set(rows) == {"notebook_loop", "pipeline"}
    assert all(float(row[1]) > 0 for row in rows.values())  # images/s


def test_batchnorm_bench_scores_every_epoch_with_both_statistics_and_summarises_the_seeds():
    lines = run_bench("batchnorm", "--seeds", "1", "2", "--epochs", "2", "--source", "synthetic:24")
    epochs = [line.split(":")[0] for line in lines if line.startswith("seed ")]
    assert epochs == ["seed 1 epoch  1", "seed 1 epoch  2", "seed 2 epoch  1", "seed 2 epoch  2"]
    summary = {line.split()[0]: line for line in lines[-3:-1]}
    assert set(summary) == {"running", "recomputed"}
    assert all(
        re.search(r"best val_loss \d+\.\d{4} ± \d+\.\d{4} val_dice .* \(epochs [12], [12]\)$", line)
        for line in summary.values()
    )
    assert re.fullmatch(r"statistics_pass_vs_training: \d+\.\d\d", lines[-1])


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", PROJECT_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quality_bench_reads_configurations_and_summarises_seeds_in_the_order_run():
    quality = load_bench("quality")
    assert quality.parse_config("lite0: model.encoder=tu-x, model.encoder_weights=null, train.lr=1e-3") == (
        "lite0",
        {"model.encoder": "tu-x", "model.encoder_weights": None, "train.lr": 0.001},
    )
    assert quality.parse_config("default") == ("default", {})
    runs = [
        quality.Run("b", 1, 0.80, 0.78, 20, 600),
        quality.Run("a", 1, 0.90, 0.88, 10, 900),
        quality.Run("b", 2, 0.84, 0.80, 22, 660),
        quality.Run("a", 2, None, None, None, 30, "ERROR: out of memory"),
        quality.Run("c", 1, 0.85, 0.80, 20, 600),
        quality.Run("c", 2, 0.86, 0.80, 20, 600),
    ]
    text = quality.table(runs, "header")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[1] for row in rows[1:5]] == ["b", "a", "b", "a (failed: ERROR: out of memory)"]
    assert "| b | 2 | 0.8200 ± 0.0283 | 0.7900 | 10.5 |" in text  # sample standard deviation
    assert "| a | 1 | 0.9000 (one seed) | 0.8800 | 15.0 |" in text
    # Paired with the first configuration run, over the seeds both finished.
    assert "| a | b | 1 | +0.1000 (one seed) | +0.1000 to +0.1000 |" in text
    assert "| c | b | 2 | +0.0350 ± 0.0212 | +0.0200 to +0.0500 |" in text


def test_batchnorm_bench_summary_takes_each_kinds_best_epoch_and_the_pass_share(monkeypatch):
    batchnorm = load_bench("batchnorm")

    def row(epoch, running, recomputed, dice=0.5):
        return {
            "epoch": epoch,
            "running_val_loss": running,
            "running_val_dice": dice,
            "recomputed_val_loss": recomputed,
            "recomputed_val_dice": dice + epoch / 10,
            "train_seconds": 10.0,
            "statistics_seconds": 4.0,
        }

    runs = [[row(1, 100.0, 1.0), row(2, 0.5, 0.6)], [row(1, 300.0, 1.2), row(2, 0.7, 0.8)]]
    running, recomputed, share = batchnorm.summary(runs)
    assert running.split()[0] == "running" and "epoch 1 val_loss 200.0000 ± 141.4214" in running
    assert "best val_loss 0.6000 ± 0.1414 val_dice 0.5000 ± 0.0000 (epochs 2, 2)" in running
    assert "last val_loss 0.7000 ± 0.1414" in recomputed and "val_dice 0.7000 ± 0.0000 (epochs 2, 2)" in recomputed
    assert share == "statistics_pass_vs_training: 0.40"


def test_inference_speed_bench_runs_every_variant_and_prints_the_onnxruntime_ratio():
    lines = run_bench(
        "inference_speed", "--image-size", "64", "--images", "4", "--batch-size", "2", "--encoder", "resnet18"
    )
    assert re.fullmatch(r"onnxruntime_vs_torch_fp32: \d+\.\d\d", lines[-1])
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("torch_", "onnxruntime "))}
    assert set(rows) == {"torch_fp32", "torch_channels_last", "torch_bf16", "torch_bf16_channels_last", "onnxruntime"}
    assert rows["torch_fp32"][2] == "1.00" and all(float(row[1]) > 0 for row in rows.values())
    # The onnxruntime variant runs predict without ever importing PyTorch.
    assert not any("imported torch" in line for line in lines)


def test_quality_bench_resumes_from_its_record_and_reruns_only_what_is_missing_or_changed(tmp_path, monkeypatch):
    quality = load_bench("quality")
    measured = []

    def fake_run(name, seed, params, keep):
        measured.append((name, seed))
        return quality.Run(name, seed, 0.5 + seed / 1000, 0.5, 3, 60, commit="new", params=params)

    monkeypatch.setattr(quality, "run_pipeline", fake_run)
    output = tmp_path / "quality.md"

    def bench(*args):
        monkeypatch.setattr(sys, "argv", ["quality.py", "--output", str(output), *args])
        quality.main()

    bench("--seeds", "1", "2", "--config", "a: train.lr=0.01")
    assert measured == [("a", 1), ("a", 2)]
    measured.clear()
    # Seed 3 is new, and configuration "a" now means other params: only what was not measured runs.
    bench("--resume", "--seeds", "1", "2", "3", "--config", "a: train.lr=0.01", "--config", "b: train.lr=0.02")
    assert measured == [("b", 1), ("b", 2), ("a", 3), ("b", 3)]
    text = output.read_text()
    assert "| a | 3 | 0.5020 ± 0.0010 |" in text and "| b | 3 | 0.5020 ± 0.0010 |" in text
    measured.clear()
    bench("--resume", "--seeds", "1", "--config", "a: train.lr=0.03")
    assert measured == [("a", 1)]
    # The record keeps the runs this plan did not ask for.
    assert len(quality.recorded_runs(output.with_suffix(".json"))) == 7
    (output.with_suffix(".json")).write_text('[{"config": "a"}]')
    with pytest.raises(SystemExit, match="quality.json is not a record"):
        bench("--resume", "--seeds", "1")


def test_split_memory_bench_splits_each_size_in_a_process_of_its_own_and_prints_the_ratio():
    lines = run_bench("split_memory", "--pairs", "40", "20", "--photo-size", "64", "--image-size", "32")
    assert re.fullmatch(r"imports and config alone: peak RSS \d+ MiB", lines[1])
    rows = [line.split() for line in lines[3:-1]]
    assert [row[0] for row in rows] == ["20", "40"] and rows[0][-1] == "1.00"
    assert all(float(row[2]) > 0 and int(row[3]) > 0 and row[4] == "MiB" for row in rows)  # pairs/s, peak RSS
    assert re.fullmatch(r"peak_rss_largest_vs_smallest: \d+\.\d\d", lines[-1])


def test_evaluate_memory_bench_runs_evaluate_for_both_sizes_and_prints_the_growth_per_image():
    lines = run_bench("evaluate_memory", "--image-size", "32", "--images", "2", "4", "--encoder", "resnet18")
    rows = [line.split() for line in lines if re.match(r"\s+\d+ ", line)]
    assert [row[0] for row in rows] == ["2", "4"] and all(float(row[2]) > 0 for row in rows)  # peak MiB
    assert re.fullmatch(r"peak_growth_per_image_mib: -?\d+\.\d{3}", lines[-2])
    assert lines[-1] == "logits_per_image_mib: 0.004"
