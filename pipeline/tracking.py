"""MLflow: where runs go, one run per training, per-epoch metrics, the registered model."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import requests

from .core.config import Config
from .core.errors import TrackingError
from .core.files import read_json, write_json

TRACKING_DB = "mlflow.db"
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
HEALTH_TIMEOUT_S = 5
ARTIFACT_DIR = "mlartifacts"
EVALUATION_ARTIFACTS = "evaluation"
# Run tag: SHA-256 of the local file model.encoder_weights named, when it names one.
ENCODER_WEIGHTS_TAG = "encoder_weights_sha256"


def project_root(start: Path | None = None) -> Path:
    """The project folder, also when a stage runs in a DVC experiment's temporary copy.

    ``dvc exp run --temp`` and ``dvc queue`` run stages in ``<project>/.dvc/tmp/exps/<tmp>/``,
    a throw-away clone: a tracking store there would vanish with it.
    """
    here = (start or Path.cwd()).resolve()
    for index in range(len(here.parts) - 2):
        if here.parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*here.parts[:index])
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's embedded SQLite store (absolute path)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root() / TRACKING_DB}"


def _check_server(uri: str) -> None:
    # MLflow's own client retries a dead server for minutes; ask once, quickly, up front.
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: {type(exc).__name__}. "
            "Start the server, or unset MLFLOW_TRACKING_URI to use the project's local store "
            f"({TRACKING_DB}). Nothing was trained."
        ) from None
    # A server with logins (`make tracking-server`) answers /health to anyone: ask as this client.
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    login = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    try:
        status = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=login,
            timeout=HEALTH_TIMEOUT_S,
        ).status_code
    except requests.RequestException:
        return  # answered /health a moment ago; MLflow's own client reports anything further
    if status in (401, 403):
        who = f"the account {user!r}" if user else "a client without an account"
        raise TrackingError(
            f"MLflow tracking server {uri} refused {who} (HTTP {status}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it (README, Working as a team). Nothing was trained."
        )


def connect(experiment: str) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; returns its id.

    Called before any training, so a dead tracking server costs seconds, not a run.
    """
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        # With the embedded store, keep artifacts beside the database rather than under
        # whatever directory the stage happens to run in.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR).as_uri()
        return mlflow.create_experiment(experiment, artifact_location=location)
    except Exception as exc:
        raise TrackingError(f"MLflow tracking store {uri} is not usable: {type(exc).__name__}: {exc}") from None


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


@dataclass(frozen=True)
class RunInfo:
    """What evaluate (and people) need to find the training run again; written to models/run.json."""

    run_id: str
    experiment_id: str

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> RunInfo:
        return cls(**read_json(path))


class MlflowTracker:
    def __init__(self, run_id: str, experiment_id: str):
        self.run_id, self.experiment_id = run_id, experiment_id

    def log_epoch(self, row: dict[str, float]) -> None:
        mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=int(row["epoch"]))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics of the run as a whole, not of an epoch (the data report's headline numbers)."""
        mlflow.log_metrics(metrics)

    def catch_up(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of a resumed run that a crash kept from reaching MLflow.

        ``last.pt`` is saved before an epoch is logged, so after a hard kill the run can
        lack the last saved epoch, never hold one twice.
        """
        logged = {metric.step for metric in mlflow.MlflowClient().get_metric_history(self.run_id, "val_loss")}
        for row in history:
            if int(row["epoch"]) not in logged:
                self.log_epoch(row)

    def log_checkpoint(self, path: Path) -> None:
        """The best epoch's checkpoint stays with the run, also if evaluation (which registers the model) never runs."""
        mlflow.log_artifact(str(path), artifact_path=Path(CHECKPOINT_ARTIFACT).parent.as_posix())


@contextmanager
def training_run(
    cfg: Config, experiment_id: str, *, run_id: str | None, tags: dict[str, str]
) -> Iterator[MlflowTracker]:
    """Start (or continue) the training run; an interrupt marks it KILLED, an error FAILED."""
    if run_id is not None and not _run_exists(run_id):
        print(f"MLflow run {run_id} from the resume checkpoint is not in this store; starting a new run")
        run_id = None
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id)
    if run_id is None:
        mlflow.log_params(cfg.flat())
        mlflow.set_tags(tags)
    try:
        yield MlflowTracker(run.info.run_id, run.info.experiment_id)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def require_run(run: RunInfo, experiment: str) -> None:
    """Fail before evaluating when the training run is not in this store (another MLFLOW_TRACKING_URI)."""
    connect(experiment)
    if not _run_exists(run.run_id):
        raise TrackingError(
            f"models/run.json names MLflow run {run.run_id}, which is not in the tracking store {tracking_uri()}. "
            "Evaluate adds to the run that trained the model: use the MLFLOW_TRACKING_URI the train stage used, "
            "or retrain into this store with `dvc repro -f train`."
        )


def log_to_run(run: RunInfo, metrics: dict[str, float], experiment: str, artifacts: list[Path] = ()) -> None:
    """Add evaluation results (metrics, and files under ``evaluation/``) to the training run."""
    connect(experiment)
    with mlflow.start_run(run_id=run.run_id):
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path=EVALUATION_ARTIFACTS)
