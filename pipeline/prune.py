"""Retire old registered versions with everything stored for them: ``python -m pipeline prune --keep N``.

Each registered version holds a checkpoint and an ONNX export (its logged model, ``model/``),
and the training run behind it another checkpoint (``checkpoint/best.pt``); nothing else ever
removes them. Pruning keeps every version an alias points at (``champion``, ``challenger``),
the newest ``keep`` others, and those from the runs this checkout's ``models/run.json`` and
``models/evaluation_run.json`` name (which evaluate and register add to), each with its
evaluation and training runs. Of each other version it deletes the version, its logged model
and its evaluation run, and, where no kept version came from the same training run, that run
with all its evaluation runs.

MLflow's deletions are soft: runs and logged models move to the ``deleted`` stage (a run comes
back with ``mlflow runs restore``) and their files stay until ``mlflow gc`` removes them; the
deleted versions are gone at once. The README ("Pruning old models and runs") says how.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow.entities import LifecycleStage
from mlflow.entities.model_registry import ModelVersion

from .core import paths
from .core.errors import TrackingError
from .tracking import PARENT_RUN_TAG, RunInfo

LOGGED_MODEL_URI = "models:/m-"  # what MLflow 3's logged model ids start with


@dataclass
class PrunePlan:
    kept: list[str] = field(default_factory=list)  # versions, newest first
    versions: list[str] = field(default_factory=list)
    logged_models: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def _active_run(client: mlflow.MlflowClient, run_id: str) -> mlflow.entities.Run | None:
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:  # collected by mlflow gc already
        return None
    return run if run.info.lifecycle_stage == LifecycleStage.ACTIVE else None


def _training_run(client: mlflow.MlflowClient, evaluation_run: str) -> str | None:
    run = _active_run(client, evaluation_run)
    return run.data.tags.get(PARENT_RUN_TAG) if run is not None else None


def workspace_runs() -> set[str]:
    """The training and evaluation runs this checkout's next evaluate or register adds to."""
    return {RunInfo.load(path).run_id for path in (paths.RUN_INFO, paths.EVALUATION_RUN) if path.exists()}


def plan_prune(name: str, keep: int, protected: set[str]) -> PrunePlan:
    """What ``prune`` deletes from registered model ``name``, keeping the aliased versions, the
    newest ``keep`` others and those whose evaluation or training run is in ``protected``."""
    client = mlflow.MlflowClient()
    try:
        aliased = {str(version) for version in client.get_registered_model(name).aliases.values()}
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"mlflow.registered_model: no registered model {name!r} in this store") from None
    found: list[ModelVersion] = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda version: int(version.version), reverse=True
    )
    newest = [str(version.version) for version in found if str(version.version) not in aliased][:keep]
    kept = [
        version
        for version in found
        if str(version.version) in aliased | set(newest)
        or {version.run_id, _training_run(client, version.run_id)} & protected
    ]
    plan = PrunePlan(kept=[str(version.version) for version in kept])
    kept_runs = {version.run_id for version in kept}
    kept_training = {_training_run(client, run_id) for run_id in kept_runs} - {None}
    for version in found:
        if str(version.version) in plan.kept:
            continue
        plan.versions.append(str(version.version))
        # MLflow 3 registers a logged model by its URI, models:/<model id>, and leaves model_id unset.
        if version.source.startswith(LOGGED_MODEL_URI):
            plan.logged_models.append(version.source.removeprefix("models:/"))
        doomed = [version.run_id]
        training = _training_run(client, version.run_id)
        if training is not None and training not in kept_training:
            evaluations = client.search_runs(
                [client.get_run(training).info.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{training}'"
            )
            doomed += [training, *(run.info.run_id for run in evaluations)]
        for run_id in doomed:
            if run_id not in kept_runs and run_id not in plan.runs and _active_run(client, run_id) is not None:
                plan.runs.append(run_id)
    return plan


def apply_prune(name: str, plan: PrunePlan) -> None:
    """Delete what ``plan`` names: the versions first, so that none is left pointing at a deleted model."""
    client = mlflow.MlflowClient()
    for version in plan.versions:
        client.delete_model_version(name, version)
    for model_id in plan.logged_models:
        client.delete_logged_model(model_id)
    for run_id in plan.runs:
        client.delete_run(run_id)
