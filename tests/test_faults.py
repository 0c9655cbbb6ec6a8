"""Fault injection against real processes: kills, signals, NaN, dead tracking server, torn files, parallel runs.

Download, manifest and archive faults are in test_fetch.py; resume determinism in test_training.py.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.httpserver import closed_port_url
from tests.helpers.modelstore import PAIRED, project_client
from tests.helpers.project import (
    GIT,
    copy_trained,
    environment,
    load_params,
    ran_stages,
    run,
    run_queued_experiments,
    set_param,
)

pytestmark = pytest.mark.e2e
EPOCHS = 2  # the trained project's (tiny_params)


def start_train(project: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "stages/train.py"],
        cwd=project,
        env=environment(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epoch(project: Path, process: subprocess.Popen, epoch: int, timeout: float = 300) -> None:
    """Block until models/last.pt records ``epoch`` finished epochs."""
    deadline = time.monotonic() + timeout
    last = project / "models" / "last.pt"
    seen = None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        # Read the checkpoint only when it was rewritten: loading it every 50 ms would take the
        # CPU the training needs.
        stat = last.stat() if last.exists() else None
        changed = stat is not None and (stat.st_mtime_ns, stat.st_size) != seen
        if changed:
            seen = (stat.st_mtime_ns, stat.st_size)
            if torch.load(last, weights_only=True)["state"]["epoch"] >= epoch:
                return
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epoch} within {timeout}s")


def run_id_in_last(project: Path) -> str:
    return torch.load(project / "models" / "last.pt", weights_only=True)["state"]["run_id"]


@pytest.fixture(scope="module")
def project(module_folder, trained_project):
    """A copy of the session's trained project, its state committed (the queued sweep's baseline)."""
    root = copy_trained(trained_project, module_folder("faults"))
    assert load_params(root / "params.yaml")["train"]["epochs"] == EPOCHS
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "baseline"], cwd=root, check=True)
    return root


def fresh_start(project: Path) -> None:
    (project / "models" / "last.pt").unlink(missing_ok=True)


def test_kill_9_mid_epoch_then_resume_loses_nothing(project):
    """Killed after epoch 2 of 4: the history file already holds both epochs, and resuming adds the rest."""
    fresh_start(project)
    set_param(project, "train", "epochs", 4)
    try:
        process = start_train(project)
        wait_for_epoch(project, process, 2)
        process.send_signal(signal.SIGKILL)
        process.wait()
        history = project / "metrics" / "history.csv"
        assert [row["epoch"] for row in csv.DictReader(history.open())] == ["1", "2"]
        run_id = run_id_in_last(project)

        resumed = run(project, sys.executable, "stages/train.py")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming after epoch 2 of 4 (run {run_id})" in resumed.stdout
        assert json.loads((project / "models" / "run.json").read_text())["run_id"] == run_id
        assert [row["epoch"] for row in csv.DictReader(history.open())] == ["1", "2", "3", "4"]
        history = project_client(project).get_metric_history(run_id, "val_dice")
        assert sorted(metric.step for metric in history) == [1, 2, 3, 4]
        assert project_client(project).get_run(run_id).info.status == "FINISHED"
        assert torch.load(project / "models" / "best.pt", weights_only=True)["epoch"] in range(1, 5)
    finally:
        set_param(project, "train", "epochs", EPOCHS)


def test_sigterm_saves_marks_the_run_killed_and_says_how_to_resume(project):
    fresh_start(project)
    process = start_train(project)
    wait_for_epoch(project, process, 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "train: interrupted; models/last.pt holds epoch" in stderr and "Run `dvc repro` to resume" in stderr
    run_id = run_id_in_last(project)
    assert project_client(project).get_run(run_id).info.status == "KILLED"
    resumed = run(project, sys.executable, "stages/train.py")
    assert resumed.returncode == 0 and "resuming after epoch" in resumed.stdout
    assert project_client(project).get_run(run_id).info.status == "FINISHED"
    assert len(project_client(project).get_metric_history(run_id, "val_loss")) == EPOCHS


def test_nan_loss_stops_at_once_keeps_the_best_model_and_fails_the_run(project):
    fresh_start(project)
    (project / "models" / "best.pt").unlink()
    # 203 training pairs in batches of 16 (last partial batch dropped) + 58 val pairs in 4 batches.
    result = run(project, sys.executable, "stages/train.py", INJECT_NAN_AFTER_CALLS="16")
    assert result.returncode == 2
    assert "train: error: loss became nan at epoch 2, step 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert torch.load(project / "models" / "best.pt", weights_only=True)["epoch"] == 1
    assert project_client(project).get_run(run_id_in_last(project)).info.status == "FAILED"


def test_unreachable_tracking_server_fails_before_training(project):
    started = time.monotonic()
    result = run(project, sys.executable, "stages/train.py", MLFLOW_TRACKING_URI=closed_port_url().rsplit("/", 1)[0])
    assert result.returncode == 2
    assert "is unreachable" in result.stderr and "Nothing was trained" in result.stderr
    assert "epoch 1" not in result.stdout
    assert time.monotonic() - started < 60


def test_evaluate_against_a_store_without_the_training_run_says_which_store(project, tmp_path):
    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    result = run(project, sys.executable, "stages/evaluate.py", MLFLOW_TRACKING_URI=other_store)
    assert result.returncode == 2
    assert f"which is not in the tracking store {other_store}" in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_checkpoint_gives_a_clear_error(project):
    best = project / "models" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    result = run(project, sys.executable, "stages/evaluate.py")
    assert result.returncode == 2
    assert "evaluate: error: models/best.pt: not a readable checkpoint" in result.stderr


def test_a_queued_sweep_is_one_named_mlflow_run_per_experiment_and_only_validation_picks_champion(project):
    """`dvc exp run --queue -S train.lr=a,b`: each experiment's run carries its name, a full
    history and its data; register compares per-image validation Dice with the champion's, and a
    change of evaluate.* alone cannot move the champion by a test score."""
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=project, check=True)
    run(project, "dvc", "checkout", "--force")
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    # Sample system metrics every second, so that even a short training run logs some.
    run_queued_experiments(project, ["0.002", "0.004"], MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    names = set(run(project, "dvc", "exp", "ls", "--name-only", check=True).stdout.split())
    shown = run(project, "dvc", "exp", "show", "--csv", check=True).stdout  # the table would cut names
    assert len(names) == 2 and {line.split(",")[0] for line in shown.splitlines()} >= names, shown

    mlflow_client = project_client(project)
    experiment = mlflow_client.get_experiment_by_name("human-segmentation").experiment_id
    every_run = mlflow_client.search_runs([experiment])
    runs = [r for r in every_run if r.data.params.get("train.lr") in ("0.002", "0.004")]
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.002", "0.004"]
    assert {r.info.run_name for r in runs} == names
    data_hash = json.loads((project / "data" / "split" / "split.json").read_text())["data_hash"]
    for found in runs:
        assert found.data.tags["dvc.exp_name"] == found.info.run_name
        assert found.data.tags["dvc.baseline_rev"] == baseline
        assert found.info.status == "FINISHED"
        assert len(mlflow_client.get_metric_history(found.info.run_id, "val_dice")) == EPOCHS
        assert "data_pairs_used" in found.data.tags
        (evaluation,) = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == found.info.run_id]
        assert (
            "test_dice" in evaluation.data.metrics and evaluation.info.run_name == f"{found.info.run_name} evaluation"
        )
        assert any(name.startswith("system/cpu_utilization") for name in found.data.metrics), found.data.metrics
        assert [d.dataset.digest for d in found.inputs.dataset_inputs] == [data_hash[:16]]
    versions = mlflow_client.search_model_versions("name='human-segmentation-unet'")
    for version in versions:
        parent = mlflow_client.get_run(version.run_id).data.tags.get("mlflow.parentRunId")
        if parent in {r.info.run_id for r in runs}:
            assert version.tags["alias_metric"] == "val_dice_deployed"
            assert re.fullmatch(rf"(not )?better than v\d+: {PAIRED}", version.tags["alias_reason"])

    # Make the champion's test score as beatable as can be: a new version that differs only in
    # evaluate.* (a threshold the validation sweep did not choose) must stay challenger.
    champion = mlflow_client.get_model_version_by_alias("human-segmentation-unet", "champion")
    mlflow_client.set_model_version_tag("human-segmentation-unet", champion.version, "test_dice", "0.0")
    set_param(project, "evaluate", "threshold", 0.35)
    assert ran_stages(run(project, "dvc", "repro", check=True)) == {"evaluate", "register"}
    decision = json.loads((project / "models" / "registry.json").read_text())
    assert (decision["metric"], decision["alias"]) == ("val_dice_deployed", "challenger")
    assert decision["champion_version"] == str(champion.version) and decision["paired_images"] == 58
    assert re.fullmatch(rf"not better than v{champion.version}: {PAIRED}", decision["reason"])
    assert mlflow_client.get_model_version_by_alias("human-segmentation-unet", "champion").version == champion.version
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=project, check=True)


def test_torchrun_two_processes_train_and_log_once(project):
    """DDP on CPU with the gloo backend: both ranks train, rank 0 alone logs and writes."""
    fresh_start(project)
    mlflow_client = project_client(project)
    experiment = mlflow_client.get_experiment_by_name("human-segmentation").experiment_id
    before = {r.info.run_id for r in mlflow_client.search_runs([experiment])}
    result = run(
        project,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "stages/train.py",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("2 process(es)") == 1
    assert result.stdout.count(f"epoch {EPOCHS}/{EPOCHS}:") == 1
    new_runs = [r for r in mlflow_client.search_runs([experiment]) if r.info.run_id not in before]
    assert len(new_runs) == 1
    assert len(mlflow_client.get_metric_history(new_runs[0].info.run_id, "val_dice")) == EPOCHS
    assert json.loads((project / "models" / "run.json").read_text())["run_id"] == new_runs[0].info.run_id
