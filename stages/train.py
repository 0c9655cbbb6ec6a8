"""Stage train: data/split/ -> models/best.pt, models/run.json, metrics/; one MLflow run, registered model."""

import mlflow

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.io import read_json, write_csv, write_json
from pipeline.model import load_model
from pipeline.tracking import RunInfo, git_commit, training_run
from pipeline.training import HISTORY_FIELDS, TrainingSession, summary
from pipeline.report import report_headline


def main() -> None:
    cfg = load_config()
    session = TrainingSession(
        cfg, split_dir=paths.SPLIT_DIR, pretrained_dir=paths.PRETRAINED_DIR,
        best_path=paths.BEST_CHECKPOINT, last_path=paths.LAST_CHECKPOINT,
    )
    print(f"train: {session.resume_note}; device {session.device}")
    tags = {"git_commit": git_commit(), "data_hash": session.split_info["data_hash"]}
    with training_run(cfg, run_id=session.state.run_id, tags=tags) as tracker:
        session.state.run_id = tracker.run_id
        state = session.fit(tracker)
        write_csv(paths.TRAIN_HISTORY, state.history, HISTORY_FIELDS)
        write_json(paths.TRAIN_METRICS, summary(state))
        mlflow.log_metrics(report_headline(read_json(paths.DATA_REPORT)))
        tracker.log_checkpoint(paths.BEST_CHECKPOINT)
        best_model, _ = load_model(paths.BEST_CHECKPOINT)
        version = tracker.register_model(best_model, cfg.mlflow.registered_model)
    run = RunInfo(tracker.run_id, tracker.experiment_id, cfg.mlflow.registered_model, version)
    run.save(paths.RUN_INFO)
    print(f"train: best epoch {state.best_epoch}; registered {cfg.mlflow.registered_model} version {version} (run {run.run_id})")


if __name__ == "__main__":
    run_stage("train", main)
