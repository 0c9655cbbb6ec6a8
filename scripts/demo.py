"""`make demo`: the whole pipeline on the generated dataset, offline, in a couple of minutes on a laptop CPU.

It runs in ``demo/``, a fresh copy of the project with its own git repository, DVC cache,
``params.yaml`` and MLflow store, so the project's own params, data, models and
``mlflow.db`` stay exactly as they were. ``demo/`` is git- and DVC-ignored and is
replaced on every run. Shown along the way: the five stages and the data report, an
experiment that reruns only train, evaluate and register, metrics and plots, MLflow runs and the
registered model versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from project_copy import copy_tracked_files
from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]
DEMO = PROJECT / "demo"

# Two short trainings, enough to see the shapes learnt; the whole demo's time is in docs/performance.md.
DEMO_PARAMS = {
    # The generated shapes get a class name of their own, so the confusion matrix and the model
    # card do not call them people.
    "data": {"source": "synthetic:96", "manifest": None, "image_size": 64, "classes": ["background", "shape"]},
    "model": {"encoder": "resnet18", "encoder_weights": None},
    "train": {"epochs": 12, "batch_size": 16, "num_workers": 0},
    "mlflow": {"experiment": "synthetic-demo", "registered_model": "synthetic-shapes-unet"},
}


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*command: str, env: dict[str, str]) -> None:
    print(f"$ {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=DEMO, env=env, check=True)


def write_demo_params() -> None:
    yaml = YAML()
    params = yaml.load((DEMO / "params.yaml").read_text())
    for section, values in DEMO_PARAMS.items():
        params[section].update(values)
    with (DEMO / "params.yaml").open("w") as handle:
        yaml.dump(params, handle)


def stage_env() -> dict[str, str]:
    # The demo's own store, never a team server named in the environment; stages import the
    # copied code with this interpreter.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(DEMO)
    return env


def show_mlflow(store: Path, experiment_name: str, registered_model: str) -> None:
    """Each training run with the scores of its latest evaluation (a run nested under it) and the
    data report's pair count (a run tag); then the registered versions and their aliases."""
    import mlflow

    from pipeline.core.paths import VAL_DICE_DEPLOYED
    from pipeline.tracking import PARENT_RUN_TAG

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    runs = {
        found.info.run_id: found
        for found in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    }
    parent_of = {
        run_id: found.data.tags[PARENT_RUN_TAG] for run_id, found in runs.items() if PARENT_RUN_TAG in found.data.tags
    }
    # Oldest first: a later evaluation of the same training run replaces an earlier one.
    latest_evaluation = {training_id: evaluation_id for evaluation_id, training_id in parent_of.items()}
    for run_id, training in runs.items():
        if run_id in parent_of:
            continue
        scores = runs[latest_evaluation[run_id]].data.metrics if run_id in latest_evaluation else {}
        print(
            f"run {training.info.run_name:<24} {training.info.status:<8}  lr {training.data.params['train.lr']:<6}  "
            f"{VAL_DICE_DEPLOYED} {scores.get(VAL_DICE_DEPLOYED, float('nan')):.3f}  "
            f"test_dice {scores.get('test_dice', float('nan')):.3f}  "
            f"pairs used {training.data.tags.get('data_pairs_used', '-')}"
        )
    for version in sorted(client.search_model_versions(f"name='{registered_model}'"), key=lambda v: int(v.version)):
        trained = runs.get(parent_of.get(version.run_id, ""))
        print(
            f"registered {registered_model} version {version.version} from the evaluation of run "
            f"{trained.info.run_name if trained else version.run_id[:8]}: "
            f"{version.tags.get('alias_decision')} ({version.tags.get('alias_reason')})"
        )


def main() -> None:
    started = time.monotonic()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    step(
        f"copying the project into {DEMO.relative_to(PROJECT)}/ (your params.yaml, data and mlflow.db are not touched)"
    )
    copy_tracked_files(PROJECT, DEMO)
    write_demo_params()
    git = ["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost"]
    env = stage_env()
    run("git", "init", "-q", env=env)
    run(*git, "add", "-A", env=env)
    run(*git, "commit", "-qm", "demo: synthetic data, small model", env=env)

    step("dvc repro: fetch (generates the data) -> split (writes data/report.json) -> train -> evaluate -> register")
    run("dvc", "repro", env=env)
    run(*git, "add", "-A", env=env)
    run(*git, "commit", "-qm", "demo: first run", env=env)

    step("an experiment with another learning rate: only train, evaluate and register run again")
    run("dvc", "exp", "run", "-n", "lower-lr", "-S", "train.lr=0.001", env=env)
    # The README's commands: the params that changed and the selection score, then every metric
    # of the experiment against the first run, one a line (both fit an 80-column terminal).
    run(
        "dvc",
        "exp",
        "show",
        "--no-pager",
        "--only-changed",
        "--drop",
        "Created|.*/|[a-z_]+$",
        "--keep",
        "val_dice_deployed",
        env=env,
    )
    run("dvc", "metrics", "diff", "--all", "--no-path", env=env)

    step("plots and MLflow")
    run("dvc", "plots", "show", "--out", "dvc_plots", env=env)
    show_mlflow(DEMO / "mlflow.db", DEMO_PARAMS["mlflow"]["experiment"], DEMO_PARAMS["mlflow"]["registered_model"])

    print(f"\nDemo finished in {time.monotonic() - started:.0f} s. Look around:")
    print("  cd demo && source ../.venv/bin/activate")
    print("  open dvc_plots/index.html                            # per-epoch curves, threshold sweep, gallery")
    print("  cat data/report.json                                 # what split found, repaired and skipped")
    print("  mlflow ui --backend-store-uri sqlite:///mlflow.db     # training runs, their evaluations, the versions")


if __name__ == "__main__":
    main()
